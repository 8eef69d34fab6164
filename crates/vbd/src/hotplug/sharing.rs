//! The sharing rule: a device may be used read-only by many, read-write by
//! one VM only, and not while the host itself may write it.
//!
//! This module decides over plain data; gathering the holders (mountinfo,
//! loop devices, other vbds in xenstore) is the caller's job, so the rule can
//! be tested exhaustively without a machine.
//!
//! Differences from Xen's stock `block` script, on purpose:
//! - the holder of a `w!` vbd counts as a writer (the stock script forgets
//!   it, so a read-only user could join a device someone writes);
//! - a loop device bound to the same file is found by `st_dev`/`st_ino` from
//!   the kernel, not by matching `losetup` text (the stock match is broken:
//!   hex against decimal);
//! - a missing `vm` node does not make two domains "the same VM" (the stock
//!   script's fallback, which made the exemption match everything).

use std::fmt;
use std::path::{Path, PathBuf};

use diskseq::DevNum;

use crate::schema::Mode;

/// Someone else who uses the device (or a partition of it, or its file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// The host has it mounted.
    HostMount {
        /// The mounted device.
        dev: DevNum,
        /// Where.
        mount_point: PathBuf,
        /// The superblock is read-write.
        writable: bool,
    },
    /// A loop device bound to the same file, not published by any vbd.
    HostLoop {
        /// `/dev/loopN`.
        path: PathBuf,
        /// Its device number.
        dev: DevNum,
        /// Not read-only.
        writable: bool,
    },
    /// A device the host stacked on it (device-mapper, md: the device's
    /// sysfs `holders/`), e.g. an LVM physical volume's logical volumes.
    /// The host may write through it, so it counts as a writer.
    HostStack {
        /// The device (ours, or a partition or parent of it) held.
        dev: DevNum,
        /// The holder's kernel name (`dm-3`, `md0`).
        holder: String,
    },
    /// Another vbd that publishes the device.
    Vbd {
        /// Its backend directory.
        backend: String,
        /// Its frontend domain.
        frontend_domid: u32,
        /// Its mode is writable (or unreadable: counted as writable).
        writable: bool,
        /// It serves the same VM as the request (the stock exemption).
        same_vm: bool,
    },
}

impl Holder {
    fn writable(&self) -> bool {
        match self {
            Holder::HostMount { writable, .. }
            | Holder::HostLoop { writable, .. }
            | Holder::Vbd { writable, .. } => *writable,
            Holder::HostStack { .. } => true,
        }
    }

    fn exempt(&self) -> bool {
        matches!(self, Holder::Vbd { same_vm: true, .. })
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = |w: bool| if w { "read-write" } else { "read-only" };
        match self {
            Holder::HostMount {
                dev,
                mount_point,
                writable,
            } => write!(
                f,
                "device {dev} is mounted {} in the host at {}",
                how(*writable),
                mount_point.display()
            ),
            Holder::HostLoop {
                path,
                dev,
                writable,
            } => write!(
                f,
                "the file is attached {} in the host as {} ({dev})",
                how(*writable),
                path.display()
            ),
            Holder::HostStack { dev, holder } => write!(
                f,
                "device {dev} is held in the host by {holder} (device-mapper or md stacked on it)"
            ),
            Holder::Vbd {
                backend,
                frontend_domid,
                writable,
                ..
            } => write!(
                f,
                "the device is used {} by domain {frontend_domid} ({backend})",
                how(*writable)
            ),
        }
    }
}

/// A sharing conflict: the request and the first holder that forbids it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot use {target} {}: {holder}", if self.requested.is_writable() { "read-write" } else { "read-only" })]
pub struct Conflict {
    /// What was asked for.
    pub target: String,
    /// The mode asked for.
    pub requested: Mode,
    /// Who is in the way.
    pub holder: Holder,
}

/// Applies the rule: `!` waives it; otherwise a holder is in the way when
/// either side writes, unless it is a vbd of the same VM.
pub fn check(target: &Path, requested: Mode, holders: &[Holder]) -> Result<(), Conflict> {
    if requested.sharing_waived() {
        return Ok(());
    }
    match holders
        .iter()
        .find(|h| !h.exempt() && (requested.is_writable() || h.writable()))
    {
        Some(holder) => Err(Conflict {
            target: target.display().to_string(),
            requested,
            holder: holder.clone(),
        }),
        None => Ok(()),
    }
}

/// Which VM a domain belongs to, as the stock script's `same_vm` sees it:
/// its `/local/domain/<id>/vm` path and, for a device model stub domain,
/// the `vm` of the domain it serves (`target`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmIdentity {
    /// The domain.
    pub domid: u32,
    /// `/local/domain/<domid>/vm`, if present and non-empty.
    pub vm: Option<String>,
    /// `/local/domain/<target>/vm` for `/local/domain/<domid>/target`.
    pub target_vm: Option<String>,
}

impl VmIdentity {
    fn names(&self) -> impl Iterator<Item = &str> {
        [self.vm.as_deref(), self.target_vm.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
    }
}

/// True when two domains serve the same VM: the same domain, or any of
/// their `vm`/target `vm` paths coincide. Absent paths never match.
pub fn same_vm(a: &VmIdentity, b: &VmIdentity) -> bool {
    a.domid == b.domid || a.names().any(|x| b.names().any(|y| x == y))
}

/// The device and its relatives whose use conflicts with it: for a whole
/// disk its partitions, for a partition its disk. Read from
/// `<sysfs>/dev/block/M:m`; a device sysfs does not know yields just itself.
pub fn device_family(sysfs_root: &Path, dev: DevNum) -> Vec<DevNum> {
    let mut family = vec![dev];
    let link = sysfs_root
        .join("dev/block")
        .join(format!("{}:{}", dev.major, dev.minor));
    let Ok(dir) = std::fs::canonicalize(&link) else {
        return family;
    };
    let read_dev = |d: &Path| -> Option<DevNum> {
        let text = std::fs::read_to_string(d.join("dev")).ok()?;
        let (major, minor) = text.trim().split_once(':')?;
        Some(DevNum {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    };
    if dir.join("partition").exists() {
        if let Some(parent) = dir.parent().and_then(read_dev) {
            family.push(parent);
        }
    } else if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.join("partition").exists() {
                family.extend(read_dev(&path));
            }
        }
    }
    family
}

/// The devices the host stacked on `dev` (its sysfs `holders/`: dm, md,
/// bcache), by kernel name; none when sysfs does not know `dev`.
pub fn stacked_on(sysfs_root: &Path, dev: DevNum) -> Vec<String> {
    let dir = sysfs_root
        .join("dev/block")
        .join(format!("{}:{}", dev.major, dev.minor))
        .join("holders");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: &str = "/srv/img";

    fn vbd(writable: bool, same_vm: bool) -> Holder {
        Holder::Vbd {
            backend: "backend/vbd/7/768".into(),
            frontend_domid: 7,
            writable,
            same_vm,
        }
    }
    fn mount(writable: bool) -> Holder {
        Holder::HostMount {
            dev: DevNum { major: 7, minor: 1 },
            mount_point: "/mnt".into(),
            writable,
        }
    }
    fn host_loop(writable: bool) -> Holder {
        Holder::HostLoop {
            path: "/dev/loop1".into(),
            dev: DevNum { major: 7, minor: 1 },
            writable,
        }
    }

    fn stacked() -> Holder {
        Holder::HostStack {
            dev: DevNum {
                major: 252,
                minor: 0,
            },
            holder: "dm-3".into(),
        }
    }

    #[test]
    fn the_full_matrix() {
        use Mode::*;
        // (requested, holder, allowed)
        let cases = [
            (ReadOnly, vbd(false, false), true),       // ro + ro
            (ReadOnly, vbd(true, false), false),       // ro joins a writer
            (ReadWrite, vbd(false, false), false),     // rw joins a reader
            (ReadWrite, vbd(true, false), false),      // rw + rw
            (ReadWrite, vbd(true, true), true),        // same VM exemption
            (ReadOnly, vbd(true, true), true),         // same VM exemption
            (ReadWriteShared, vbd(true, false), true), // `!` waives
            (ReadOnly, mount(false), true),            // host reads, guest reads
            (ReadOnly, mount(true), false),            // host writes
            (ReadWrite, mount(false), false),          // guest would write under a host mount
            (ReadWriteShared, mount(true), true),
            (ReadOnly, host_loop(false), true),
            (ReadOnly, host_loop(true), false),
            (ReadWrite, host_loop(false), false),
            (ReadOnly, stacked(), false), // an LV on the disk may be written
            (ReadWrite, stacked(), false),
            (ReadWriteShared, stacked(), true),
        ];
        for (requested, holder, allowed) in cases {
            let result = check(Path::new(IMG), requested, std::slice::from_ref(&holder));
            assert_eq!(
                result.is_ok(),
                allowed,
                "{requested:?} vs {holder:?}: {result:?}"
            );
        }
        assert!(check(Path::new(IMG), Mode::ReadWrite, &[]).is_ok());
    }

    #[test]
    fn conflict_names_the_other_user() {
        let err = check(
            Path::new(IMG),
            Mode::ReadWrite,
            &[vbd(false, true), vbd(false, false)],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "cannot use /srv/img read-write: the device is used read-only by domain 7 (backend/vbd/7/768)"
        );
        let err = check(Path::new(IMG), Mode::ReadOnly, &[mount(true)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mounted read-write in the host at /mnt"),
            "{err}"
        );
    }

    #[test]
    fn same_vm_never_matches_on_missing_names() {
        let id = |domid, vm: Option<&str>, target_vm: Option<&str>| VmIdentity {
            domid,
            vm: vm.map(Into::into),
            target_vm: target_vm.map(Into::into),
        };
        assert!(same_vm(&id(3, None, None), &id(3, None, None)));
        assert!(!same_vm(&id(3, None, None), &id(4, None, None)));
        assert!(!same_vm(&id(3, Some(""), None), &id(4, Some(""), None)));
        assert!(same_vm(
            &id(3, Some("/vm/a"), None),
            &id(4, Some("/vm/a"), None)
        ));
        assert!(!same_vm(
            &id(3, Some("/vm/a"), None),
            &id(4, Some("/vm/b"), None)
        ));
        // A stub domain serving VM a is the same VM as a.
        assert!(same_vm(
            &id(3, Some("/vm/a"), None),
            &id(9, Some("/vm/stub"), Some("/vm/a"))
        ));
        assert!(same_vm(
            &id(9, Some("/vm/stub"), Some("/vm/a")),
            &id(3, Some("/vm/a"), None)
        ));
    }

    #[test]
    fn device_family_reads_sysfs_layout() {
        let sys = tempfile::tempdir().unwrap();
        let disk = sys.path().join("devices/virtual/block/vdz");
        std::fs::create_dir_all(disk.join("vdz1")).unwrap();
        std::fs::write(disk.join("dev"), "252:0\n").unwrap();
        std::fs::write(disk.join("vdz1/dev"), "252:1\n").unwrap();
        std::fs::write(disk.join("vdz1/partition"), "1\n").unwrap();
        std::fs::create_dir_all(sys.path().join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.path().join("dev/block/252:0")).unwrap();
        std::os::unix::fs::symlink(disk.join("vdz1"), sys.path().join("dev/block/252:1")).unwrap();
        let d = |minor| DevNum { major: 252, minor };
        assert_eq!(device_family(sys.path(), d(0)), vec![d(0), d(1)]);
        assert_eq!(device_family(sys.path(), d(1)), vec![d(1), d(0)]);
        assert_eq!(device_family(sys.path(), d(9)), vec![d(9)]);

        // An LVM volume group on the partition: its LVs are its holders.
        assert!(stacked_on(sys.path(), d(1)).is_empty());
        std::fs::create_dir_all(disk.join("vdz1/holders")).unwrap();
        std::os::unix::fs::symlink("../../dm-4", disk.join("vdz1/holders/dm-4")).unwrap();
        std::os::unix::fs::symlink("../../dm-3", disk.join("vdz1/holders/dm-3")).unwrap();
        assert_eq!(stacked_on(sys.path(), d(1)), ["dm-3", "dm-4"]);
        assert!(stacked_on(sys.path(), d(9)).is_empty());
    }
}
