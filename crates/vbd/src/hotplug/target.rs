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

use diskseq::{BlockDevice, DevNum, DiskId, FileId, LoopDevice, LoopLabel, LoopOptions};
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
/// `/dev/mapper/NAME`, that the opened device is that dm device.
pub fn open(
    params: &Path,
    mode: Mode,
    sysfs_root: &Path,
    proc_root: &Path,
) -> Result<Opened, HotplugError> {
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
            // `/proc/self/fd/N` reopened the inode `stat` describes: its
            // identity needs no second `fstat`.
            let id = FileId {
                dev: stat.st_dev,
                ino: stat.st_ino,
            };
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

/// For `/dev/mapper/NAME`, the opened device's dm name must be NAME: a dm
/// device can be removed and another created under the same path.
fn check_dm_name(params: &Path, dev: DevNum, sysfs_root: &Path) -> Result<(), HotplugError> {
    let Ok(rest) = params.strip_prefix("/dev/mapper") else {
        return Ok(());
    };
    let Some(expected) = rest.to_str().filter(|n| !n.is_empty() && !n.contains('/')) else {
        return Ok(());
    };
    if expected == "control" {
        return Ok(());
    }
    let name_file = sysfs_root.join(format!("dev/block/{}:{}/dm/name", dev.major, dev.minor));
    let actual = std::fs::read_to_string(&name_file).map_err(|e| HotplugError::BadTarget {
        path: params.to_owned(),
        reason: format!(
            "is not a device-mapper device ({}: {e})",
            name_file.display()
        ),
    })?;
    if actual.trim_end_matches('\n') != expected {
        return Err(HotplugError::BadTarget {
            path: params.to_owned(),
            reason: format!(
                "opened device {dev} is dm device {:?}, not {expected:?}",
                actual.trim_end()
            ),
        });
    }
    Ok(())
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
    // Clock and jitter only once a retry is needed: the common attach
    // succeeds at once, and on real Xen each system call counts.
    let mut retry: Option<(Instant, Duration)> = None;
    loop {
        match LoopDevice::attach(fd.as_fd(), options) {
            Err(e @ diskseq::Error::NoFreeLoop { .. }) => {
                let (deadline, nap) = retry.get_or_insert_with(|| {
                    // Different processes must not retry in lockstep.
                    let jitter = u64::from(std::process::id() % 97);
                    (
                        Instant::now() + ATTACH_PATIENCE,
                        Duration::from_micros(50 + jitter),
                    )
                });
                if Instant::now() >= *deadline {
                    return Err(e);
                }
                std::thread::sleep(*nap);
                *nap = (*nap * 2).min(Duration::from_millis(5));
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
            Opened::Block(device) => Ok(Target::Block { device }),
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
            Target::Block { device } => device.id(),
            Target::Loop { device, .. } => device.id(),
        }
    }

    /// The record to publish.
    pub fn record(&self) -> PublishedDevice {
        let id = self.id();
        match self {
            Target::Block { device } => PublishedDevice {
                physical_device: id.dev(),
                physical_device_path: device.path().to_owned(),
                diskseq: Some(id.seq),
                node: None,
                backing: None,
            },
            Target::Loop {
                device, backing, ..
            } => PublishedDevice {
                physical_device: id.dev(),
                physical_device_path: device.path().to_owned(),
                diskseq: Some(id.seq),
                node: Some(device.path().to_owned()),
                backing: Some(*backing),
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
