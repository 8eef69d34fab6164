//! Which block devices the host itself has mounted, from
//! `/proc/self/mountinfo`.
//!
//! mountinfo (rather than `/proc/mounts`) gives the mounted superblock's
//! device number directly, so no source path has to be resolved (and the
//! stock script's `stat` of each source is avoided), and it separates
//! per-mount from superblock options: what decides whether the host may
//! write to a device is the superblock's `rw`, whatever a bind mount says.

use std::path::PathBuf;

use diskseq::DevNum;

/// One line of mountinfo, reduced to what the sharing check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The superblock's device (field 3, decimal `major:minor`).
    pub dev: DevNum,
    /// Where it is mounted (octal escapes decoded).
    pub mount_point: PathBuf,
    /// The mount source as the kernel shows it.
    pub source: String,
    /// The superblock is mounted read-write.
    pub writable: bool,
}

/// A mountinfo line that does not have the documented shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mountinfo line {line}: {reason}: {text:?}")]
pub struct MountInfoError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
    /// The line.
    pub text: String,
}

/// Parses the whole of a mountinfo file.
pub fn parse(text: &str) -> Result<Vec<Mount>, MountInfoError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            parse_line(l).map_err(|reason| MountInfoError {
                line: i + 1,
                reason,
                text: l.to_owned(),
            })
        })
        .collect()
}

/// `36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_line(line: &str) -> Result<Mount, &'static str> {
    let (before, after) = line.split_once(" - ").ok_or("no \" - \" separator")?;
    let mut fields = before.split(' ');
    let _mount_id = fields.next();
    let _parent_id = fields.next();
    let dev = fields.next().ok_or("no device field")?;
    let _root = fields.next();
    let mount_point = fields.next().ok_or("no mount point")?;
    let (major, minor) = dev.split_once(':').ok_or("device is not major:minor")?;
    let dev = DevNum {
        major: major.parse().map_err(|_| "bad major")?,
        minor: minor.parse().map_err(|_| "bad minor")?,
    };
    let mut tail = after.split(' ');
    let _fstype = tail.next();
    let source = tail.next().ok_or("no mount source")?;
    let super_options = tail.next().ok_or("no superblock options")?;
    Ok(Mount {
        dev,
        mount_point: PathBuf::from(unescape(mount_point)),
        source: unescape(source),
        writable: super_options.split(',').any(|o| o == "rw"),
    })
}

/// Decodes the kernel's `\ooo` escapes (space, tab, newline, backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_devices_points_and_superblock_mode() {
        let text = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
36 22 7:3 / /mnt/my\\040disk ro,relatime shared:9 - ext4 /dev/loop3 rw
37 22 7:4 /sub /srv rw master:2 - ext4 /dev/loop4 ro
38 22 0:25 / /proc rw,nosuid - proc proc rw
";
        let mounts = parse(text).unwrap();
        assert_eq!(mounts.len(), 4);
        assert_eq!(
            mounts[0].dev,
            DevNum {
                major: 259,
                minor: 2
            }
        );
        assert!(mounts[0].writable);
        // A read-only bind of a read-write superblock: the host still writes.
        assert_eq!(mounts[1].mount_point, PathBuf::from("/mnt/my disk"));
        assert!(mounts[1].writable);
        assert!(!mounts[2].writable);
        assert_eq!(mounts[2].source, "/dev/loop4");
    }

    #[test]
    fn malformed_lines_are_errors_with_their_number() {
        let err = parse("22 1 259:2 / / rw - ext4 /dev/x rw\nnonsense\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(parse("1 2 x:y / / rw - ext4 s rw").is_err());
        assert!(parse("1 2 7:0 / / rw - ext4").is_err());
    }

    #[test]
    fn the_running_system_parses() {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounts = parse(&text).unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
