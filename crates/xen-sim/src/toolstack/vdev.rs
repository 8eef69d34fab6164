//! Virtual device names (`xvda`, `xvdb3`, `sdc`, `hda`) and their device
//! ids, as libxl numbers them (`libxl__device_disk_dev_number`): the id is
//! the name of the backend and frontend directories.

use std::fmt;
use std::str::FromStr;

/// A guest disk: the name the toolstack writes in `dev` and its devid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Vdev {
    /// As given (`xvda`), or the number itself when given as a number.
    pub name: String,
    /// The device id (`xvda` = 51712).
    pub devid: u32,
}

/// A vdev that is neither a known disk name nor a device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid vdev {vdev:?}: {reason}")]
pub struct VdevError {
    /// The text given.
    pub vdev: String,
    /// Why it is refused.
    pub reason: &'static str,
}

const XEN_MAJOR: u32 = 202;
const SCSI_MAJOR: u32 = 8;
/// `xvd` disks past the 16th use the extended scheme (bit 28 set).
const EXTENDED: u32 = 1 << 28;

impl Vdev {
    /// The vdev for a device id (its name is the number).
    pub fn from_devid(devid: u32) -> Self {
        Vdev {
            name: devid.to_string(),
            devid,
        }
    }
}

impl FromStr for Vdev {
    type Err = VdevError;

    fn from_str(s: &str) -> Result<Self, VdevError> {
        let bad = |reason| VdevError {
            vdev: s.to_owned(),
            reason,
        };
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            if s.len() > 1 && s.starts_with('0') {
                return Err(bad("a device id has no leading zeros"));
            }
            let devid: u32 = s.parse().map_err(|_| bad("device id out of range"))?;
            if devid == 0 {
                return Err(bad("device id 0 is not a disk"));
            }
            return Ok(Vdev::from_devid(devid));
        }
        let (prefix, rest) = ["xvd", "sd", "hd"]
            .iter()
            .find_map(|p| s.strip_prefix(p).map(|rest| (*p, rest)))
            .ok_or_else(|| bad("expected xvdX, sdX, hdX or a device id"))?;
        let letters_end = rest
            .find(|c: char| !c.is_ascii_lowercase())
            .unwrap_or(rest.len());
        let (letters, digits) = rest.split_at(letters_end);
        if letters.is_empty() || letters.len() > 3 {
            return Err(bad("expected one to three disk letters"));
        }
        // Bijective base 26: a = 0, z = 25, aa = 26.
        let disk = letters
            .bytes()
            .fold(0u32, |acc, b| acc * 26 + u32::from(b - b'a') + 1)
            - 1;
        let partition: u32 = if digits.is_empty() {
            0
        } else if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("partition must be a number without leading zeros"));
        } else {
            digits.parse().map_err(|_| bad("partition out of range"))?
        };
        let devid = match prefix {
            "xvd" if disk < 16 && partition < 16 => (XEN_MAJOR << 8) | (disk << 4) | partition,
            "xvd" if disk < (1 << 20) && partition < 256 => EXTENDED | (disk << 8) | partition,
            "sd" if disk < 16 && partition < 16 => (SCSI_MAJOR << 8) | (disk << 4) | partition,
            "hd" if disk < 4 && partition < 64 => {
                let major = if disk < 2 { 3 } else { 22 };
                (major << 8) | ((disk % 2) << 6) | partition
            }
            _ => return Err(bad("disk or partition number out of range for this name")),
        };
        Ok(Vdev {
            name: s.to_owned(),
            devid,
        })
    }
}

impl fmt::Display for Vdev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_number_like_libxl() {
        for (name, devid) in [
            ("xvda", 51712),
            ("xvdb", 51728),
            ("xvda1", 51713),
            ("xvdp", 51952),
            ("xvdq", EXTENDED | (16 << 8)),
            ("xvdaa", EXTENDED | (26 << 8)),
            ("xvdz", EXTENDED | (25 << 8)),
            ("sda", 2048),
            ("sdb2", 2066),
            ("hda", 768),
            ("hdb", 832),
            ("hdc", 5632),
            ("hdd1", 5697),
            ("51712", 51712),
            ("768", 768),
        ] {
            let vdev: Vdev = name.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(vdev.devid, devid, "{name}");
            assert_eq!(vdev.to_string(), name);
        }
    }

    #[test]
    fn bad_names_are_refused_by_name() {
        for bad in [
            "",
            "xvd",
            "xvdA",
            "vda",
            "xvda01",
            "hde",
            "0",
            "051712",
            "4294967296",
            "xvda-1",
            "sdq",
        ] {
            let err = bad.parse::<Vdev>().unwrap_err();
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }
}
