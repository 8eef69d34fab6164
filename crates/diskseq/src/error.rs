//! The crate's error type. Every variant names the path or device involved,
//! because the reader of the message is usually an operator looking at a log
//! of a hotplug script that ran minutes ago.

use std::io;
use std::path::PathBuf;

use crate::id::{DevNum, DiskId, DiskSeq, FileId};
use crate::loop_label::LoopLabel;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and with which device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device open under that number is not the instance that was named:
    /// its number or its diskseq differ. The caller's record is out of date.
    #[error("stale device: expected {expected}, found {found}")]
    Stale {
        /// The instance that was asked for.
        expected: DiskId,
        /// What the open file descriptor actually is.
        found: DiskId,
    },

    /// No disk currently has this diskseq: the instance is gone.
    #[error("no disk has diskseq {seq} (gone, or never existed in this boot)")]
    NoSuchDiskSeq {
        /// The sequence number looked for.
        seq: DiskSeq,
    },

    /// A loop device is bound to a different file than the one recorded.
    #[error("{path} ({id}) is bound to {found}, expected {expected}")]
    WrongBacking {
        /// The loop device.
        path: PathBuf,
        /// Its identity.
        id: DiskId,
        /// The backing file that was recorded.
        expected: FileId,
        /// The backing file the kernel reports.
        found: FileId,
    },

    /// A loop device does not carry the label it was attached with: another
    /// binding under the same number and diskseq (kernels before 6.5 keep a
    /// loop device's diskseq across attaches).
    #[error("{path} ({id}) carries label {}, expected {expected}", found.as_ref().map_or("none", |l| l.as_str()))]
    WrongLabel {
        /// The loop device.
        path: PathBuf,
        /// Its identity.
        id: DiskId,
        /// The label asked for.
        expected: LoopLabel,
        /// The label the kernel reports.
        found: Option<LoopLabel>,
    },

    /// The path exists but is something else than a block device.
    #[error("{path}: is {what}, not a block device")]
    NotBlockDevice {
        /// The path given.
        path: PathBuf,
        /// What it is ("a directory", "a regular file", ...).
        what: &'static str,
    },

    /// Read-write access was asked for a read-only device.
    #[error("{path} ({dev}): device is read-only, cannot open it for writing")]
    ReadOnly {
        /// The device path.
        path: PathBuf,
        /// Its number.
        dev: DevNum,
    },

    /// The kernel has no block device with this number.
    #[error("no block device {dev} (no /sys/dev/block/{dev})")]
    NoSuchDevice {
        /// The number asked for.
        dev: DevNum,
    },

    /// The device node found for a number is another device (a stale name
    /// in `/dev`, or a renamed device): the fd disproves the name.
    #[error("{path} is device {found}, not {expected}")]
    WrongNumber {
        /// The device node opened.
        path: PathBuf,
        /// The number asked for.
        expected: DevNum,
        /// The number the fd has.
        found: DevNum,
    },

    /// The disk exists but has no partition with that number.
    #[error("disk {disk} (diskseq {seq}) has no partition {partition}")]
    NoSuchPartition {
        /// Kernel name of the disk.
        disk: String,
        /// Its diskseq.
        seq: DiskSeq,
        /// The partition number asked for.
        partition: u32,
    },

    /// The kernel reports no diskseq for this device (pre-5.15 kernel, or a
    /// driver that does not support it), so its identity cannot be proven.
    #[error("{path} ({dev}): the kernel reports no diskseq for this device")]
    NoDiskSeq {
        /// The device path.
        path: PathBuf,
        /// Its number.
        dev: DevNum,
    },

    /// The device is a block device but not a loop device.
    #[error("{path} ({dev}): not a loop device")]
    NotLoop {
        /// The device path.
        path: PathBuf,
        /// Its number.
        dev: DevNum,
    },

    /// The loop device has no backing file.
    #[error("{path} ({dev}): loop device is not bound to a file")]
    NotBound {
        /// The device path.
        path: PathBuf,
        /// Its number.
        dev: DevNum,
    },

    /// After `LOOP_CONFIGURE`, the kernel's view of the device differs from
    /// what was asked (another file, missing flags). The device was detached.
    #[error("{path}: loop device configured differently than asked: {detail}")]
    LoopMismatch {
        /// The loop device.
        path: PathBuf,
        /// What differs.
        detail: String,
    },

    /// Every free loop device found was taken by another process first.
    #[error("no loop device could be claimed in {attempts} attempts (other processes took each free one first)")]
    NoFreeLoop {
        /// How many free minors were tried.
        attempts: u32,
    },

    /// A read-write loop device was asked for a backing fd opened read-only;
    /// the kernel would silently make the device read-only.
    #[error(
        "backing file {backing} is open read-only; a writable loop device needs a writable fd"
    )]
    BackingNotWritable {
        /// The backing file.
        backing: FileId,
    },

    /// An option the kernel cannot apply.
    #[error("invalid loop option: {0}")]
    InvalidOption(&'static str),

    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("opening", "BLKGETDISKSEQ on", ...).
        op: &'static str,
        /// The file or device involved.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True when the named device instance no longer exists or is not the
    /// one open: the caller's `(dev, diskseq)` record is out of date. A
    /// caller must then touch nothing (the CLI exits 3).
    pub fn is_stale(&self) -> bool {
        matches!(
            self,
            Error::Stale { .. }
                | Error::NoSuchDiskSeq { .. }
                | Error::WrongBacking { .. }
                | Error::WrongLabel { .. }
        )
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}
