//! Turning `params` into a device, from one open of the path.
//!
//! The path is resolved exactly once, with `O_PATH` (which opens nothing:
//! no FIFO blocks, no character device sees an `open`). What the fd is
//! decides everything after; the real open goes through
//! `/proc/self/fd/<n>`, which reopens that same inode whatever happens to
//! the path meanwhile. A block device is used as is; a regular file becomes
//! a loop device attached from that fd — with autoclear, or persistent and
//! labelled with its backend (see `handoff`), so that a killed script's
//! device is found again by `remove`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diskseq::{
    Access, BlockDevice, DevNum, DiskId, FileId, LoopDevice, LoopLabel, LoopOptions,
    PartitionExtent, PinnedPath,
};
use rustix::fs::{FileType, Mode as FsMode, OFlags};
use rustix::io::Errno;

use super::error::HotplugError;
use super::handoff::Handoff;
use crate::schema::{Mode, PublishedDevice};

/// The device the script will hand to the backend.
#[derive(Debug)]
pub enum Target {
    /// A block device named by `params`; never detached by this script.
    Block {
        /// The open device.
        device: BlockDevice,
        /// Where it lies on its disk, when it is a partition (read while
        /// `device` holds it: see [`BlockDevice::partition_extent`]).
        partition: Option<PartitionExtent>,
    },
    /// A loop device this run attached to the file named by `params`.
    Loop {
        /// The attached device.
        device: LoopDevice,
        /// The backing file's identity.
        backing: FileId,
        /// Attached without autoclear and not yet handed over: dropping the
        /// target detaches it (see [`Target::hand_over`]).
        detach_on_drop: bool,
    },
}

/// What `params` turned out to be, before anything was attached.
#[derive(Debug)]
pub enum Opened {
    /// A block device, open read-only (the backend opens it itself).
    Block(BlockDevice),
    /// A regular file, open with the access the mode asks for.
    File {
        /// The open file.
        fd: OwnedFd,
        /// Its identity.
        id: FileId,
    },
}

/// Opens `params` once and classifies it; checks the read-only rule and, for
/// `/dev/mapper/NAME`, that the opened device is that dm device. A pinned
/// name (`/dev/disk/by-diskseq/<N>[-part<P>]`) is resolved by its sequence
/// number, whether or not udev made the link.
pub fn open(
    params: &Path,
    mode: Mode,
    sysfs_root: &Path,
    proc_root: &Path,
) -> Result<Opened, HotplugError> {
    if let Some(pinned) = PinnedPath::parse(params) {
        return open_pinned(params, pinned, mode);
    }
    let io = |op, source: Errno| HotplugError::Io {
        path: params.to_owned(),
        op,
        source: source.into(),
    };
    let bad = |reason: &str| HotplugError::BadTarget {
        path: params.to_owned(),
        reason: reason.to_owned(),
    };
    let handle = rustix::fs::open(params, OFlags::PATH | OFlags::CLOEXEC, FsMode::empty())
        .map_err(|e| match e {
            Errno::NOENT => bad("does not exist"),
            Errno::NOTDIR => bad("a component of the path is not a directory"),
            Errno::LOOP => bad("too many levels of symbolic links"),
            e => io("resolving", e),
        })?;
    let stat = rustix::fs::fstat(&handle).map_err(|e| io("fstat", e))?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    let reopen_path = proc_root
        .join("self/fd")
        .join(rustix::fd::AsRawFd::as_raw_fd(&handle).to_string());
    let reopen = |flags: OFlags| {
        rustix::fs::open(
            &reopen_path,
            flags | OFlags::CLOEXEC | OFlags::NOCTTY,
            FsMode::empty(),
        )
    };
    match file_type {
        FileType::BlockDevice => {
            let fd = reopen(OFlags::RDONLY).map_err(|e| io("opening", e))?;
            let device = BlockDevice::from_fd(fd, params.to_owned())?;
            if mode.is_writable() && device.read_only() {
                return Err(HotplugError::ReadOnly {
                    path: params.to_owned(),
                });
            }
            check_dm_name(params, device.dev(), sysfs_root)?;
            Ok(Opened::Block(device))
        }
        FileType::RegularFile => {
            if mode.is_writable() && stat.st_mode & 0o222 == 0 {
                // Root ignores permission bits: refuse like the stock script does.
                return Err(HotplugError::ReadOnly {
                    path: params.to_owned(),
                });
            }
            let access = if mode.is_writable() {
                OFlags::RDWR
            } else {
                OFlags::RDONLY
            };
            let fd = reopen(access).map_err(|e| match e {
                Errno::ROFS | Errno::ACCESS | Errno::PERM if mode.is_writable() => {
                    HotplugError::ReadOnly {
                        path: params.to_owned(),
                    }
                }
                e => io("opening", e),
            })?;
            let id = FileId::of(&fd).map_err(|e| HotplugError::Io {
                path: params.to_owned(),
                op: "fstat",
                source: e,
            })?;
            Ok(Opened::File { fd, id })
        }
        FileType::Directory => Err(bad("is a directory, not a block device or regular file")),
        FileType::CharacterDevice => Err(bad(
            "is a character device, not a block device or regular file",
        )),
        FileType::Fifo => Err(bad("is a FIFO, not a block device or regular file")),
        FileType::Socket => Err(bad("is a socket, not a block device or regular file")),
        _ => Err(bad("is not a block device or regular file")),
    }
}

/// Opens the disk instance (or partition) a pinned name stands for, proven
/// on the fd. One that is gone is refused, never replaced: that a disk
/// with this sequence number existed when the name was learned is the
/// whole point of passing it.
fn open_pinned(params: &Path, pinned: PinnedPath, mode: Mode) -> Result<Opened, HotplugError> {
    let device = pinned.open(Access::ReadOnly).map_err(|e| match e {
        diskseq::Error::NoSuchDiskSeq { .. } => HotplugError::BadTarget {
            path: params.to_owned(),
            reason: format!(
                "no disk has diskseq {} any more (gone, or never existed in this boot)",
                pinned.seq
            ),
        },
        diskseq::Error::NoSuchPartition { .. } => HotplugError::BadTarget {
            path: params.to_owned(),
            reason: format!("{e}"),
        },
        e => HotplugError::Device(e),
    })?;
    if mode.is_writable() && device.read_only() {
        return Err(HotplugError::ReadOnly {
            path: params.to_owned(),
        });
    }
    Ok(Opened::Block(device))
}

/// For `/dev/mapper/NAME`, the opened device's dm name must be NAME; for an
/// LVM path `/dev/VG/LV` that opened a logical volume (dm uuid `LVM-…`), it
/// must be LVM's name for VG/LV. A dm device can be removed and another
/// created under the same path: the name, read from sysfs by the opened
/// fd's number (held open, so it cannot change), proves which one we got.
fn check_dm_name(params: &Path, dev: DevNum, sysfs_root: &Path) -> Result<(), HotplugError> {
    let dm_dir = sysfs_root.join(format!("dev/block/{}:{}/dm", dev.major, dev.minor));
    let read = |attr: &str| {
        std::fs::read_to_string(dm_dir.join(attr)).map(|text| text.trim_end().to_owned())
    };
    let expected = match mapper_name(params) {
        Some(name) => name,
        None => match lvm_name(params) {
            // Not an LV (another kind of dm device, or not dm at all: a
            // `/dev/foo/bar` link to a disk): nothing to compare.
            Some(name) if read("uuid").is_ok_and(|uuid| uuid.starts_with("LVM-")) => name,
            _ => return Ok(()),
        },
    };
    let actual = read("name").map_err(|e| HotplugError::BadTarget {
        path: params.to_owned(),
        reason: format!(
            "is not a device-mapper device ({}: {e})",
            dm_dir.join("name").display()
        ),
    })?;
    if actual != expected {
        return Err(HotplugError::BadTarget {
            path: params.to_owned(),
            reason: format!("opened device {dev} is dm device {actual:?}, not {expected:?}"),
        });
    }
    Ok(())
}

/// NAME of `/dev/mapper/NAME` (not `control`, dm's own device).
fn mapper_name(params: &Path) -> Option<String> {
    let name = params.strip_prefix("/dev/mapper").ok()?.to_str()?;
    (!name.is_empty() && !name.contains('/') && name != "control").then(|| name.to_owned())
}

/// The dm name LVM gives `/dev/VG/LV`: each name with its `-` doubled,
/// joined by `-` (`vg-1/lv` → `vg--1-lv`). `None` for a path that cannot be
/// an LVM one: not two components under `/dev`, or a directory the kernel
/// or udev own.
fn lvm_name(params: &Path) -> Option<String> {
    const NOT_VOLUME_GROUPS: [&str; 6] = ["block", "char", "disk", "mapper", "bus", "xen"];
    let rest = params.strip_prefix("/dev").ok()?.to_str()?;
    let (vg, lv) = rest.split_once('/')?;
    if vg.is_empty() || lv.is_empty() || lv.contains('/') || NOT_VOLUME_GROUPS.contains(&vg) {
        return None;
    }
    Some(format!(
        "{}-{}",
        vg.replace('-', "--"),
        lv.replace('-', "--")
    ))
}

/// How long to keep trying when every free loop device is being claimed by
/// concurrent attaches (many guests starting at once).
const ATTACH_PATIENCE: Duration = Duration::from_secs(5);

/// [`LoopDevice::attach`], retried with jittered backoff while it reports
/// that other processes took every free minor first.
///
/// `LOOP_CTL_GET_FREE` keeps returning the lowest unbound minor, including
/// one another process holds `O_EXCL` for a few microseconds while it
/// configures it; a burst of concurrent attaches can therefore exhaust
/// `attach`'s own quick retries. Backing off lets the claimant finish.
fn attach_patiently(fd: &OwnedFd, options: &LoopOptions) -> Result<LoopDevice, diskseq::Error> {
    let deadline = Instant::now() + ATTACH_PATIENCE;
    // Different processes must not retry in lockstep.
    let mut nap = Duration::from_micros(50 + u64::from(std::process::id() % 97));
    loop {
        match LoopDevice::attach(fd.as_fd(), options) {
            Err(diskseq::Error::NoFreeLoop { .. }) if Instant::now() < deadline => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

impl Target {
    /// Makes the opened target a device: a block device as is, a file
    /// attached to a new loop device carrying `label` (autoclear as the
    /// handoff asks; direct I/O when the backend said it is safe).
    pub fn attach(
        opened: Opened,
        mode: Mode,
        direct_io: bool,
        handoff: Handoff,
        label: &LoopLabel,
    ) -> Result<Target, HotplugError> {
        match opened {
            Opened::Block(device) => {
                let partition = device.partition_extent()?;
                Ok(Target::Block { device, partition })
            }
            Opened::File { fd, id } => {
                let options = LoopOptions {
                    read_only: !mode.is_writable(),
                    autoclear: handoff.autoclear(),
                    direct_io,
                    label: Some(label.clone()),
                    ..LoopOptions::default()
                };
                let device = attach_patiently(&fd, &options)?;
                Ok(Target::Loop {
                    device,
                    backing: id,
                    detach_on_drop: !handoff.autoclear(),
                })
            }
        }
    }

    /// The record naming this device is published: from now on a
    /// persistent loop device outlives this run (`remove` detaches it).
    pub fn hand_over(mut self) {
        if let Target::Loop { detach_on_drop, .. } = &mut self {
            *detach_on_drop = false;
        }
    }

    /// The device instance.
    pub fn id(&self) -> DiskId {
        match self {
            Target::Block { device, .. } => device.id(),
            Target::Loop { device, .. } => device.id(),
        }
    }

    /// The record to publish.
    pub fn record(&self) -> PublishedDevice {
        let id = self.id();
        match self {
            Target::Block { device, partition } => PublishedDevice {
                physical_device: id.dev(),
                physical_device_path: device.path().to_owned(),
                diskseq: Some(id.seq),
                node: None,
                backing: None,
                partition: *partition,
            },
            Target::Loop {
                device, backing, ..
            } => PublishedDevice {
                physical_device: id.dev(),
                physical_device_path: device.path().to_owned(),
                diskseq: Some(id.seq),
                node: Some(device.path().to_owned()),
                backing: Some(*backing),
                partition: None,
            },
        }
    }

    /// The loop device's path, when this run created one.
    pub fn loop_path(&self) -> Option<PathBuf> {
        match self {
            Target::Loop { device, .. } => Some(device.path().to_owned()),
            Target::Block { .. } => None,
        }
    }
}

/// An add that fails before it hands a persistent loop device over takes it
/// back: only a killed run leaves one (labelled, for `remove` to find).
/// Callers drop a target only after withdrawing any record naming it, so no
/// record ever names a number this detach frees.
impl Drop for Target {
    fn drop(&mut self) {
        if let Target::Loop {
            device,
            detach_on_drop: true,
            ..
        } = self
        {
            // Nothing to report to: a failure leaves the labelled device
            // for `remove` or `diskseq loop gc`.
            let _ = device.detach();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_names_a_path_promises() {
        let name = |p: &str| mapper_name(Path::new(p));
        assert_eq!(name("/dev/mapper/vg0-guest").as_deref(), Some("vg0-guest"));
        assert_eq!(name("/dev/mapper/control"), None);
        assert_eq!(name("/dev/mapper/"), None);
        assert_eq!(name("/dev/mapper/a/b"), None);

        let lvm = |p: &str| lvm_name(Path::new(p));
        assert_eq!(lvm("/dev/vg0/guest").as_deref(), Some("vg0-guest"));
        // LVM doubles the dashes inside each name.
        assert_eq!(lvm("/dev/vg-1/my-lv").as_deref(), Some("vg--1-my--lv"));
        for not_lvm in [
            "/dev/loop0",
            "/dev/disk/by-id/x",
            "/dev/block/254:0",
            "/dev/mapper/vg0-guest",
            "/dev/vg0/",
            "/dev/vg0/a/b",
            "/srv/vg0/guest",
        ] {
            assert_eq!(lvm(not_lvm), None, "{not_lvm}");
        }
    }

    /// A stand-in sysfs: the dm attributes of device 254:3.
    fn dm_sysfs(name: &str, uuid: &str) -> tempfile::TempDir {
        let sys = tempfile::tempdir().unwrap();
        let dm = sys.path().join("dev/block/254:3/dm");
        std::fs::create_dir_all(&dm).unwrap();
        std::fs::write(dm.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(dm.join("uuid"), format!("{uuid}\n")).unwrap();
        sys
    }

    #[test]
    fn an_lv_path_must_open_that_lv() {
        let dev = DevNum {
            major: 254,
            minor: 3,
        };
        let lv = dm_sysfs("vg0-guest", "LVM-abcdef");
        let check = |params: &str, sys: &tempfile::TempDir| {
            check_dm_name(Path::new(params), dev, sys.path())
        };
        assert!(check("/dev/vg0/guest", &lv).is_ok());
        assert!(check("/dev/mapper/vg0-guest", &lv).is_ok());
        let err = check("/dev/vg0/other", &lv).unwrap_err().to_string();
        assert!(err.contains("\"vg0-guest\", not \"vg0-other\""), "{err}");
        let err = check("/dev/mapper/vg0-other", &lv).unwrap_err().to_string();
        assert!(err.contains("not \"vg0-other\""), "{err}");
        // A dm device that is not an LV (crypt, multipath) under a
        // two-level path: no LVM name to compare.
        let crypt = dm_sysfs("secret", "CRYPT-LUKS2-x");
        assert!(check("/dev/vg0/guest", &crypt).is_ok());
        // Not dm at all: /dev/mapper promises dm, /dev/VG/LV only for LVs.
        let plain = tempfile::tempdir().unwrap();
        assert!(check("/dev/vg0/guest", &plain).is_ok());
        let err = check("/dev/mapper/vg0-guest", &plain)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a device-mapper device"), "{err}");
    }
}
