//! Bound loop devices as the kernel describes them, and their detach: read
//! with `LOOP_GET_STATUS64` on an fd that proved the device's identity, and
//! cleared with `LOOP_CLR_FD` on that same fd, never on a name.
//!
//! Kernel behaviour this depends on: `LOOP_GET_STATUS64` answers ENXIO for an
//! unbound device (all versions); `LOOP_CLR_FD` on a device others hold open
//! only marks it for autoclear and the detach happens at the last close
//! (since 2.6); `lo_file_name` keeps whatever the binder stored, up to 64
//! bytes (losetup stores the path there; we store a [`LoopLabel`]).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::device::{open_verified, Access, BlockDevice};
use crate::error::{Error, Result};
use crate::id::{DiskId, FileId, LOOP_MAJOR};
use crate::ioctl::{
    self, LO_FLAGS_AUTOCLEAR, LO_FLAGS_DIRECT_IO, LO_FLAGS_PARTSCAN, LO_FLAGS_READ_ONLY,
};
use crate::loop_label::LoopLabel;
use crate::sysfs;

/// A bound loop device as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopInfo {
    /// The instance.
    pub id: DiskId,
    /// The device path it was opened by.
    pub path: PathBuf,
    /// The backing file's path as the kernel reports it (a name only).
    pub backing_file: Option<PathBuf>,
    /// The backing file's identity (the proof).
    pub backing: FileId,
    /// Byte offset into the backing file.
    pub offset: u64,
    /// Size limit in bytes (0: to the end of the file).
    pub size_limit: u64,
    /// Read-only.
    pub read_only: bool,
    /// Detaches at last close.
    pub autoclear: bool,
    /// Partitions allowed.
    pub partscan: bool,
    /// Direct I/O to the backing file.
    pub direct_io: bool,
    /// The label it was attached with ([`LoopOptions::label`]), if any.
    pub label: Option<LoopLabel>,
}

/// Whether `dev` is a whole loop device (a partition of a loop device
/// answers loop ioctls with its disk's state, so it must be excluded).
pub(crate) fn is_loop_disk(dev: &BlockDevice) -> bool {
    dev.dev().major == LOOP_MAJOR && dev.partition().is_none()
}

/// The binding of loop device `dev`. `None` when `dev` is not a loop device
/// or is not bound.
pub fn loop_info(dev: &BlockDevice) -> Result<Option<LoopInfo>> {
    if !is_loop_disk(dev) {
        return Ok(None);
    }
    let info = match ioctl::loop_get_status(dev.as_fd()) {
        Ok(info) => info,
        Err(e) if is_errno(&e, Errno::NXIO) => return Ok(None),
        Err(e) => return Err(Error::io("LOOP_GET_STATUS64 on", dev.path(), e)),
    };
    let name_len = info
        .lo_file_name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(info.lo_file_name.len());
    // losetup stores the backing path in the same field; a label is not one.
    let kernel_name = (name_len > 0 && info.lo_file_name[0] == b'/').then(|| {
        PathBuf::from(String::from_utf8_lossy(&info.lo_file_name[..name_len]).into_owned())
    });
    Ok(Some(LoopInfo {
        id: dev.id(),
        path: dev.path().to_owned(),
        // sysfs has the full path; lo_file_name is cut at 64 bytes.
        backing_file: sysfs::loop_backing_file(dev.dev()).or(kernel_name),
        backing: FileId {
            dev: info.lo_device,
            ino: info.lo_inode,
        },
        offset: info.lo_offset,
        size_limit: info.lo_sizelimit,
        read_only: info.lo_flags & LO_FLAGS_READ_ONLY != 0,
        autoclear: info.lo_flags & LO_FLAGS_AUTOCLEAR != 0,
        partscan: info.lo_flags & LO_FLAGS_PARTSCAN != 0,
        direct_io: info.lo_flags & LO_FLAGS_DIRECT_IO != 0,
        label: LoopLabel::from_field(&info.lo_file_name),
    }))
}

/// Detaches loop device instance `id` — and nothing else. Opens it by
/// number, proves number and diskseq on the fd (and the backing file, when
/// given), requires a bound loop device, then `LOOP_CLR_FD`. On any
/// mismatch nothing is touched. If others still hold the device open, the
/// kernel detaches it when the last of them closes it.
pub fn detach_verified(id: &DiskId, backing: Option<FileId>) -> Result<()> {
    detach_checked(id, backing, None)
}

/// [`detach_verified`], and the device must also still carry `label`
/// (checked on the same fd, with number, diskseq and backing file): the
/// proof that it is the device whoever labelled it attached. This matters
/// where the kernel does not bump a loop device's diskseq on attach
/// (before 6.5): there `(number, diskseq)` names the device, not the
/// binding, and the label is what tells our binding from a later one.
pub fn detach_labeled(id: &DiskId, backing: Option<FileId>, label: &LoopLabel) -> Result<()> {
    detach_checked(id, backing, Some(label))
}

fn detach_checked(id: &DiskId, backing: Option<FileId>, label: Option<&LoopLabel>) -> Result<()> {
    let device = open_verified(*id, Access::ReadOnly)?;
    let path = device.path();
    if !is_loop_disk(&device) {
        return Err(Error::NotLoop {
            path: path.to_owned(),
            dev: device.dev(),
        });
    }
    let not_bound = || Error::NotBound {
        path: path.to_owned(),
        dev: device.dev(),
    };
    let status = match ioctl::loop_get_status(device.as_fd()) {
        Ok(status) => status,
        Err(e) if is_errno(&e, Errno::NXIO) => return Err(not_bound()),
        Err(e) => return Err(Error::io("LOOP_GET_STATUS64 on", path, e)),
    };
    let found = FileId {
        dev: status.lo_device,
        ino: status.lo_inode,
    };
    if let Some(expected) = backing.filter(|expected| *expected != found) {
        return Err(Error::WrongBacking {
            path: path.to_owned(),
            id: *id,
            expected,
            found,
        });
    }
    if let Some(expected) = label {
        let found = LoopLabel::from_field(&status.lo_file_name);
        if found.as_ref() != Some(expected) {
            return Err(Error::WrongLabel {
                path: path.to_owned(),
                id: *id,
                expected: expected.clone(),
                found,
            });
        }
    }
    match ioctl::loop_clr_fd(device.as_fd()) {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, Errno::NXIO) => Err(not_bound()),
        Err(e) => Err(Error::io("LOOP_CLR_FD on", path, e)),
    }
    // `device` closes here; if ours is the last fd, the kernel detaches now.
}

/// Every bound loop device, sorted by minor. Each is opened for a moment to
/// ask the kernel its binding (sysfs has no backing inode), as `losetup -a`
/// does; a detach requested meanwhile by someone else completes at our close.
pub fn list_loops() -> Result<Vec<LoopInfo>> {
    let mut loops = Vec::new();
    for name in sysfs::disk_names()? {
        if !name.starts_with("loop") || !sysfs::is_bound_loop(&name) {
            continue; // not a loop device, or unbound: skip without opening
        }
        let device = match BlockDevice::open(&Path::new("/dev").join(&name), Access::ReadOnly) {
            Ok(device) => device,
            // Detached (ENXIO while tearing down) or removed while listing.
            Err(Error::Io { ref source, .. })
                if is_errno(source, Errno::NXIO) || is_errno(source, Errno::NOENT) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        if let Some(info) = loop_info(&device)? {
            loops.push(info);
        }
    }
    loops.sort_by_key(|info| info.id.minor);
    Ok(loops)
}

pub(crate) fn is_errno(err: &std::io::Error, errno: Errno) -> bool {
    err.raw_os_error() == Some(errno.raw_os_error())
}
