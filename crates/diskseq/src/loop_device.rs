//! Loop devices created atomically, verified, and detached only by identity.
//!
//! Attach: `LOOP_CTL_GET_FREE` names a device that is free *now*; opening
//! `/dev/loopN` with `O_EXCL` claims it (another process's configure then
//! fails with EBUSY); `LOOP_CONFIGURE` binds file and flags in one step;
//! `LOOP_GET_STATUS64` proves the kernel bound *our* file (by st_dev/st_ino,
//! never by name) with the flags asked; `BLKGETDISKSEQ` names the instance.
//! Losing the race for a device is normal: the next unbound one is tried, a
//! bounded number of times, and one is created only past the last.
//!
//! Kernel behaviour this depends on, by version: `LOOP_CONFIGURE` exists
//! since 5.8 (before it, `LOOP_SET_FD` + `LOOP_SET_STATUS64`, not atomic);
//! `BLKGETDISKSEQ` since 5.15; a loop device's diskseq is bumped on every
//! attach and detach only since 6.5 (before, it keeps the value it got when
//! the device was created, so `(number, diskseq)` names the device, not the
//! binding — callers that must tell bindings apart also compare the backing
//! inode and a [`LoopLabel`]); since 6.12 `LOOP_CONFIGURE` also syncs the
//! backing file before binding it, which is most of an attach's cost there.
//!
//! Kill safety: a persistent device is configured with autoclear, so the
//! kernel detaches it when the last fd closes — including when the process is
//! killed. Autoclear is cleared only after the caller has recorded the
//! device, so there is no moment where a device exists that nobody knows
//! about and nobody will release.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::device::{Access, BlockDevice};
use crate::error::{Error, Result};
use crate::id::{DevNum, DiskId, DiskSeq, FileId, LOOP_MAJOR};
use crate::ioctl::{
    self, LO_FLAGS_AUTOCLEAR, LO_FLAGS_DIRECT_IO, LO_FLAGS_PARTSCAN, LO_FLAGS_READ_ONLY,
};
use crate::loop_label::LoopLabel;
use crate::loop_status::is_errno;
use crate::sysfs;

const LOOP_CONTROL: &str = "/dev/loop-control";
/// How many devices to try before giving up: each failure means another
/// process took the device first, so this bounds a livelock, not a normal path.
const ATTACH_ATTEMPTS: u32 = 64;
/// How to attach a file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoopOptions {
    /// The device refuses writes (`LO_FLAGS_READ_ONLY`).
    pub read_only: bool,
    /// Detach at the last close (`LO_FLAGS_AUTOCLEAR`).
    pub autoclear: bool,
    /// Bypass the page cache for the backing file (`LO_FLAGS_DIRECT_IO`).
    pub direct_io: bool,
    /// Allow partitions on the device (`LO_FLAGS_PARTSCAN`).
    pub partscan: bool,
    /// Logical block size in bytes (a power of two, 512 up to what the kernel
    /// allows: the page size, more on recent kernels);
    /// `None` keeps the kernel's default.
    pub block_size: Option<u32>,
    /// Byte offset into the backing file where the device starts.
    pub offset: u64,
    /// Device size in bytes; 0 means up to the end of the file.
    pub size_limit: u64,
    /// A label stored in the device itself (its `lo_file_name`), so that
    /// the device can be recognised later by [`LoopInfo::label`](crate::LoopInfo::label) and
    /// detached only if it still carries it ([`detach_labeled`](crate::detach_labeled)).
    pub label: Option<LoopLabel>,
}

impl LoopOptions {
    fn flags(&self) -> u32 {
        let mut flags = 0;
        for (on, flag) in [
            (self.read_only, LO_FLAGS_READ_ONLY),
            (self.autoclear, LO_FLAGS_AUTOCLEAR),
            (self.direct_io, LO_FLAGS_DIRECT_IO),
            (self.partscan, LO_FLAGS_PARTSCAN),
        ] {
            if on {
                flags |= flag;
            }
        }
        flags
    }
}

/// A loop device this process attached and verified. Holds an open fd on it
/// (not exclusive, so `mkfs`, `mount` or a backend can open it too); with
/// autoclear, dropping the last fd anywhere detaches it.
#[derive(Debug)]
pub struct LoopDevice {
    device: BlockDevice,
    backing: FileId,
}

impl LoopDevice {
    /// Attaches the file open on `backing` to a free loop device, atomically
    /// and verified (see the module docs). The fd must be writable unless
    /// `opts.read_only`.
    pub fn attach(backing: BorrowedFd<'_>, opts: &LoopOptions) -> Result<Self> {
        let backing_id = check_backing(backing, opts)?;
        let control = rustix::fs::open(LOOP_CONTROL, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::io("opening", LOOP_CONTROL, e))?;
        // GET_FREE names the lowest unbound device, also while another
        // process has claimed it and is about to bind it; asking again would
        // name the same one. So after losing a device, walk up to the next
        // one sysfs shows unbound, and create one only past the last.
        let mut index = ioctl::loop_ctl_get_free(control.as_fd())
            .map_err(|e| Error::io("LOOP_CTL_GET_FREE on", LOOP_CONTROL, e))?;
        for _ in 0..ATTACH_ATTEMPTS {
            if let Some(device) = try_attach_at(index, backing, backing_id, opts)? {
                return Ok(device);
            }
            index = match sysfs::next_unbound_loop(index) {
                Some(next) => next,
                None => ioctl::loop_ctl_add_any(control.as_fd())
                    .map_err(|e| Error::io("LOOP_CTL_ADD on", LOOP_CONTROL, e))?,
            };
        }
        Err(Error::NoFreeLoop {
            attempts: ATTACH_ATTEMPTS,
        })
    }

    /// Attaches to the specific device `/dev/loop<index>` (the index is the
    /// minor unless the loop module reserves minors for partitions with
    /// `max_part`). Fails with an EBUSY [`Error::Io`] when that device is
    /// bound or claimed by someone else. Mostly for tests that need a
    /// particular device reused.
    pub fn attach_at(index: u32, backing: BorrowedFd<'_>, opts: &LoopOptions) -> Result<Self> {
        let backing_id = check_backing(backing, opts)?;
        try_attach_at(index, backing, backing_id, opts)?
            .ok_or_else(|| Error::io("claiming", loop_path(index), Errno::BUSY))
    }

    /// Attaches like [`attach`](Self::attach) but kill-safe for a device that
    /// must outlive this process: the device is configured with autoclear,
    /// `record` is called (write the identity where it will be found again),
    /// and only then is autoclear cleared — unless `opts.autoclear` asks to
    /// keep it. If the process dies before that, or `record` fails, the
    /// kernel detaches the device when its fd closes: nothing leaks.
    pub fn attach_persistent<E>(
        backing: BorrowedFd<'_>,
        opts: &LoopOptions,
        record: impl FnOnce(&LoopDevice) -> Result<(), E>,
    ) -> Result<Self, PersistError<E>> {
        let configure = LoopOptions {
            autoclear: true,
            ..opts.clone()
        };
        let device = Self::attach(backing, &configure).map_err(PersistError::Attach)?;
        // On failure `device` drops here, its fd closes, and autoclear detaches it.
        record(&device).map_err(PersistError::Record)?;
        if !opts.autoclear {
            device.set_autoclear(false).map_err(PersistError::Persist)?;
        }
        Ok(device)
    }

    /// Turns autoclear on or off (`LOOP_SET_STATUS64`), then checks that the
    /// kernel applied it.
    pub fn set_autoclear(&self, on: bool) -> Result<()> {
        let path = self.path();
        let fd = self.device.as_fd();
        let mut info =
            ioctl::loop_get_status(fd).map_err(|e| Error::io("LOOP_GET_STATUS64 on", path, e))?;
        if (info.lo_flags & LO_FLAGS_AUTOCLEAR != 0) == on {
            return Ok(());
        }
        if on {
            info.lo_flags |= LO_FLAGS_AUTOCLEAR;
        } else {
            info.lo_flags &= !LO_FLAGS_AUTOCLEAR;
        }
        ioctl::loop_set_status(fd, &info)
            .map_err(|e| Error::io("LOOP_SET_STATUS64 on", path, e))?;
        let after =
            ioctl::loop_get_status(fd).map_err(|e| Error::io("LOOP_GET_STATUS64 on", path, e))?;
        if (after.lo_flags & LO_FLAGS_AUTOCLEAR != 0) != on {
            return Err(Error::LoopMismatch {
                path: path.to_owned(),
                detail: format!("autoclear still {}", if on { "off" } else { "on" }),
            });
        }
        Ok(())
    }

    /// The instance: device number and the diskseq it got at attach.
    pub fn id(&self) -> DiskId {
        self.device.id()
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        self.device.path()
    }

    /// The backing file the kernel confirmed it bound.
    pub fn backing(&self) -> FileId {
        self.backing
    }

    /// The open device.
    pub fn block_device(&self) -> &BlockDevice {
        &self.device
    }

    /// The open device, giving up the loop-specific view.
    pub fn into_block_device(self) -> BlockDevice {
        self.device
    }

    /// Detaches the device now (`LOOP_CLR_FD` on our own fd), for a caller
    /// that attached it persistent and then could not use it. If others
    /// hold it open, the kernel detaches it when the last of them closes.
    pub fn detach(&self) -> Result<()> {
        match ioctl::loop_clr_fd(self.device.as_fd()) {
            Ok(()) => Ok(()),
            // Already detached (by someone holding the number): nothing left.
            Err(e) if is_errno(&e, Errno::NXIO) => Ok(()),
            Err(e) => Err(Error::io("LOOP_CLR_FD on", self.device.path(), e)),
        }
    }
}

impl AsFd for LoopDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }
}

/// Failure of [`LoopDevice::attach_persistent`]. In every case no device
/// remains attached by this call.
#[derive(Debug)]
pub enum PersistError<E> {
    /// Attaching failed.
    Attach(Error),
    /// The caller's `record` failed; the device was detached.
    Record(E),
    /// Clearing autoclear failed after `record`; the device was detached,
    /// so what `record` wrote is now stale (and will be refused as such).
    Persist(Error),
}

impl<E: fmt::Display> fmt::Display for PersistError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistError::Attach(e) => write!(f, "{e}"),
            PersistError::Record(e) => {
                write!(
                    f,
                    "recording the loop device failed, so it was detached: {e}"
                )
            }
            PersistError::Persist(e) => {
                write!(
                    f,
                    "making the loop device persistent failed, so it was detached: {e}"
                )
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for PersistError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PersistError::Attach(e) | PersistError::Persist(e) => Some(e),
            PersistError::Record(e) => Some(e),
        }
    }
}

fn loop_path(index: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{index}"))
}

/// The backing file's identity, after refusing combinations the kernel would
/// silently "fix".
fn check_backing(backing: BorrowedFd<'_>, opts: &LoopOptions) -> Result<FileId> {
    let id = FileId::of(backing).map_err(|e| Error::io("stat", fd_name(backing), e))?;
    if let Some(size) = opts.block_size {
        if !(512..=65536).contains(&size) || !size.is_power_of_two() {
            return Err(Error::InvalidOption(
                "block size must be a power of two from 512 to 65536",
            ));
        }
    }
    if !opts.read_only {
        let flags = rustix::fs::fcntl_getfl(backing)
            .map_err(|e| Error::io("fcntl on", fd_name(backing), e))?;
        if flags & OFlags::RWMODE != OFlags::RDWR {
            // The kernel would quietly make the device read-only.
            return Err(Error::BackingNotWritable { backing: id });
        }
    }
    Ok(id)
}

/// A name for an fd in error messages: its path from `/proc/self/fd`.
fn fd_name(fd: BorrowedFd<'_>) -> PathBuf {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::read_link(&link).unwrap_or_else(|_| PathBuf::from(link))
}

/// Claims `/dev/loop<index>`, configures and verifies it. `Ok(None)` when
/// another process got there first (the caller may try another device).
fn try_attach_at(
    index: u32,
    backing: BorrowedFd<'_>,
    backing_id: FileId,
    opts: &LoopOptions,
) -> Result<Option<LoopDevice>> {
    let path = loop_path(index);
    let access = if opts.read_only {
        OFlags::RDONLY
    } else {
        // The kernel makes the device read-only when configured via a
        // read-only fd.
        OFlags::RDWR
    };
    let claim = match rustix::fs::open(
        &path,
        access | OFlags::CLOEXEC | OFlags::EXCL,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // Claimed by someone else, or removed since we picked it.
        Err(Errno::BUSY | Errno::NOENT | Errno::NXIO) => return Ok(None),
        Err(e) => return Err(Error::io("opening", path, e)),
    };
    let stat = rustix::fs::fstat(&claim).map_err(|e| Error::io("stat", &path, e))?;
    let dev = DevNum::from_rdev(stat.st_rdev);
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::BlockDevice
        || dev.major != LOOP_MAJOR
    {
        return Err(Error::NotLoop { path, dev });
    }

    let mut info = ioctl::empty_loop_info();
    info.lo_offset = opts.offset;
    info.lo_sizelimit = opts.size_limit;
    info.lo_flags = opts.flags();
    if let Some(label) = &opts.label {
        info.lo_file_name = label.to_field();
    }
    let config = ioctl::loop_config {
        fd: backing.as_raw_fd() as u32,
        block_size: opts.block_size.unwrap_or(0),
        info,
        __reserved: [0; 8],
    };
    match ioctl::loop_configure(claim.as_fd(), &config) {
        Ok(()) => {}
        // Bound by another process between GET_FREE and our O_EXCL open.
        Err(e) if is_errno(&e, Errno::BUSY) => return Ok(None),
        Err(e) => return Err(Error::io("LOOP_CONFIGURE on", path, e)),
    }

    match verify_and_share(&claim, backing_id, opts, &path, dev) {
        Ok(device) => Ok(Some(LoopDevice {
            device,
            backing: backing_id,
        })),
        Err(e) => {
            // We hold the only claim: whatever got bound is ours to undo.
            let _ = ioctl::loop_clr_fd(claim.as_fd());
            Err(e)
        }
    }
    // `claim` closes here; the shared fd in `device` keeps the binding.
}

/// Checks the binding on the exclusive `claim`, then trades the claim for a
/// plain fd so that others (mkfs, mount, a backend opening the device
/// exclusively) can use the device while we hold it. The binding is pinned
/// by `claim` while we reopen, and the new fd is proven the same instance.
fn verify_and_share(
    claim: &OwnedFd,
    backing_id: FileId,
    opts: &LoopOptions,
    path: &Path,
    dev: DevNum,
) -> Result<BlockDevice> {
    check_binding(claim.as_fd(), backing_id, opts, path)?;
    let seq = ioctl::disk_seq(claim.as_fd())
        .map_err(|e| Error::io("BLKGETDISKSEQ on", path, e))?
        .and_then(DiskSeq::new)
        .ok_or_else(|| Error::NoDiskSeq {
            path: path.to_owned(),
            dev,
        })?;
    let access = if opts.read_only {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    let device = BlockDevice::open(path, access)?;
    // The open read the instance from the new fd just now: no need to ask
    // again (BlockDevice::verify would).
    crate::device::check(&DiskId::new(dev, seq), device.id())?;
    Ok(device)
}

/// Compares what the kernel bound with what was asked.
fn check_binding(
    fd: BorrowedFd<'_>,
    backing: FileId,
    opts: &LoopOptions,
    path: &Path,
) -> Result<()> {
    let info =
        ioctl::loop_get_status(fd).map_err(|e| Error::io("LOOP_GET_STATUS64 on", path, e))?;
    let mismatch = |detail: String| {
        Err(Error::LoopMismatch {
            path: path.to_owned(),
            detail,
        })
    };
    let bound = FileId {
        dev: info.lo_device,
        ino: info.lo_inode,
    };
    if bound != backing {
        return mismatch(format!("bound {bound}, expected {backing}"));
    }
    let wanted = opts.flags();
    // Read-only and autoclear must be exactly as asked; the kernel may add
    // direct I/O (backing fd opened O_DIRECT) or partscan (max_part) itself.
    let exact = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
    if info.lo_flags & exact != wanted & exact || info.lo_flags & wanted != wanted {
        return mismatch(format!("flags {:#x}, asked {:#x}", info.lo_flags, wanted));
    }
    if info.lo_offset != opts.offset || info.lo_sizelimit != opts.size_limit {
        return mismatch(format!(
            "offset {} size limit {}, asked {} and {}",
            info.lo_offset, info.lo_sizelimit, opts.offset, opts.size_limit
        ));
    }
    if let Some(label) = &opts.label {
        let kept = LoopLabel::from_field(&info.lo_file_name);
        if kept.as_ref() != Some(label) {
            return mismatch(format!(
                "label {}, asked {label}",
                kept.map_or_else(|| "missing".to_owned(), |l| l.to_string())
            ));
        }
    }
    if let Some(size) = opts.block_size {
        let got = ioctl::logical_block_size(fd).map_err(|e| Error::io("BLKSSZGET on", path, e))?;
        if got != size {
            return mismatch(format!("block size {got}, asked {size}"));
        }
    }
    Ok(())
}
