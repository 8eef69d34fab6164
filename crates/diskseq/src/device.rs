//! An open block device and the proof of which disk instance it is.
//!
//! Identity always comes from the open file descriptor: `fstat` gives the
//! device number, `BLKGETDISKSEQ` the disk instance. Paths (from sysfs, from
//! udev links, from the caller) only say where to look; a path can name a
//! different device by the time it is opened.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::id::{DevNum, DiskId, DiskSeq};
use crate::{ioctl, sysfs};

/// How to open a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `O_RDONLY`.
    ReadOnly,
    /// `O_RDWR`.
    ReadWrite,
}

impl Access {
    fn flags(self) -> OFlags {
        match self {
            Access::ReadOnly => OFlags::RDONLY,
            Access::ReadWrite => OFlags::RDWR,
        }
    }
}

/// Where a partition lies on its disk: its number and its extent in
/// 512-byte sectors (the kernel's `bd_partno`, `bd_start_sect`,
/// `bdev_nr_sectors()`; sysfs `partition`, `start`, `size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionExtent {
    /// The partition number (1 and up). As wide as the record's field (16
    /// hex digits, as the kernel patch reads it), so that a well-formed
    /// record naming a number no partition has is a mismatch, not an error.
    pub number: u64,
    /// The first sector on the disk.
    pub start: u64,
    /// The length in sectors.
    pub sectors: u64,
}

impl std::fmt::Display for PartitionExtent {
    /// `partition 1 (sectors 2048+204800)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {} (sectors {}+{})",
            self.number, self.start, self.sectors
        )
    }
}

/// An open block device together with the identity the kernel reported for
/// it on that fd. The identity is read at open; other properties on first
/// use, then kept; [`current_seq`] re-asks the kernel.
///
/// [`current_seq`]: BlockDevice::current_seq
#[derive(Debug)]
pub struct BlockDevice {
    fd: OwnedFd,
    path: PathBuf,
    id: DiskId,
    // Everything below is asked on first use: proving identity (the hot
    // path of a backend) needs only fstat and BLKGETDISKSEQ.
    size_bytes: OnceLock<u64>,
    logical_block_size: OnceLock<u32>,
    physical_block_size: OnceLock<u32>,
    read_only: OnceLock<bool>,
    partition: OnceLock<Option<u32>>,
    discard: OnceLock<bool>,
}

impl BlockDevice {
    /// Opens `path` and refuses it unless it is a block device whose
    /// diskseq the kernel reports. The error names the path and what it is.
    /// A read-write open of a read-only device is refused too: the kernel
    /// would allow the open and fail every write later.
    pub fn open(path: &Path, access: Access) -> Result<Self> {
        let (fd, stat) = open_block_fd(path, access)?;
        let device = Self::from_stat(fd, path.to_owned(), &stat)?;
        if access == Access::ReadWrite && device.read_only() {
            return Err(Error::ReadOnly {
                path: device.path,
                dev: device.id.dev(),
            });
        }
        Ok(device)
    }

    /// Takes an fd someone else opened; `path` is only used in messages and
    /// [`path`](Self::path).
    pub fn from_fd(fd: OwnedFd, path: PathBuf) -> Result<Self> {
        let stat = rustix::fs::fstat(&fd).map_err(|e| Error::io("stat", &path, e))?;
        Self::from_stat(fd, path, &stat)
    }

    fn from_stat(fd: OwnedFd, path: PathBuf, stat: &Stat) -> Result<Self> {
        let file_type = FileType::from_raw_mode(stat.st_mode);
        if file_type != FileType::BlockDevice {
            return Err(Error::NotBlockDevice {
                path,
                what: describe(file_type),
            });
        }
        let dev = DevNum::from_rdev(stat.st_rdev);
        let seq = match ioctl::disk_seq(fd.as_fd()) {
            Ok(seq) => seq.and_then(DiskSeq::new),
            Err(e) => return Err(Error::io("BLKGETDISKSEQ on", path, e)),
        };
        let Some(seq) = seq else {
            return Err(Error::NoDiskSeq { path, dev });
        };
        Ok(BlockDevice {
            fd,
            path,
            id: DiskId::new(dev, seq),
            size_bytes: OnceLock::new(),
            logical_block_size: OnceLock::new(),
            physical_block_size: OnceLock::new(),
            read_only: OnceLock::new(),
            partition: OnceLock::new(),
            discard: OnceLock::new(),
        })
    }

    /// The instance open on this fd, as the kernel reported it at open.
    pub fn id(&self) -> DiskId {
        self.id
    }

    /// The device number.
    pub fn dev(&self) -> DevNum {
        self.id.dev()
    }

    /// The path this device was opened by (a name, not an identity).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes (`BLKGETSIZE64`, asked on first use).
    pub fn size_bytes(&self) -> u64 {
        self.ask(&self.size_bytes, ioctl::size_bytes)
    }

    /// Logical block size in bytes, the smallest addressable unit
    /// (`BLKSSZGET`, asked on first use).
    pub fn logical_block_size(&self) -> u32 {
        self.ask(&self.logical_block_size, ioctl::logical_block_size)
    }

    /// Physical block size in bytes (`BLKPBSZGET`, asked on first use).
    pub fn physical_block_size(&self) -> u32 {
        self.ask(&self.physical_block_size, ioctl::physical_block_size)
    }

    /// Whether the kernel marks the device read-only (`BLKROGET`, asked on
    /// first use).
    pub fn read_only(&self) -> bool {
        self.ask(&self.read_only, ioctl::read_only)
    }

    /// A property from an ioctl on our own block-device fd, cached. These
    /// ioctls cannot fail on a block device fd we hold open (no argument to
    /// get wrong, no state they depend on), so a failure reads as zero/false
    /// rather than burdening every accessor with a `Result`.
    fn ask<T: Copy + Default>(
        &self,
        cell: &OnceLock<T>,
        get: fn(BorrowedFd<'_>) -> std::io::Result<T>,
    ) -> T {
        *cell.get_or_init(|| get(self.fd.as_fd()).unwrap_or_default())
    }

    /// Whether the device accepts discard (from sysfs, read on first use).
    pub fn discard(&self) -> bool {
        *self
            .discard
            .get_or_init(|| sysfs::discard_supported(self.dev()))
    }

    /// `Some(n)` for partition `n` of a disk, `None` for a whole disk (from
    /// sysfs by the fd's device number, read on first use).
    pub fn partition(&self) -> Option<u32> {
        *self
            .partition
            .get_or_init(|| sysfs::partition_number(self.dev()))
    }

    /// Where this partition lies on its disk, `None` for a whole disk. A
    /// partition reports its disk's diskseq, so `(number, diskseq)` does not
    /// tell a partition from the one a rewritten table put under the same
    /// number; number, start and size do. The size is asked on this fd
    /// (BLKGETSIZE64), the start read from sysfs now. While a partition is
    /// open the kernel refuses to delete it (`BLKPG_DEL_PARTITION` and
    /// `BLKRRPART`: EBUSY) or move it (`BLKPG_RESIZE_PARTITION` keeps the
    /// start: EINVAL), measured on 6.18 and pinned by this crate's tests; so
    /// while the caller holds this fd, sysfs `start` is the fd's partition's.
    pub fn partition_extent(&self) -> Result<Option<PartitionExtent>> {
        let Some(number) = self.partition() else {
            return Ok(None);
        };
        let start = sysfs::partition_start(self.dev()).ok_or_else(|| {
            Error::io(
                "reading the start of",
                sysfs::dev_dir(self.dev()),
                io::Error::from(io::ErrorKind::NotFound),
            )
        })?;
        let bytes = ioctl::size_bytes(self.fd.as_fd())
            .map_err(|e| Error::io("BLKGETSIZE64 on", &self.path, e))?;
        Ok(Some(PartitionExtent {
            number: u64::from(number),
            start,
            sectors: bytes / 512,
        }))
    }

    /// The diskseq now, asked again on this fd. It differs from
    /// [`id`](Self::id) when the medium changed since the open (for example
    /// a loop device that was unbound at open and bound since).
    pub fn current_seq(&self) -> Result<DiskSeq> {
        match ioctl::disk_seq(self.fd.as_fd()) {
            Ok(Some(seq)) => DiskSeq::new(seq).ok_or_else(|| self.no_disk_seq()),
            Ok(None) => Err(self.no_disk_seq()),
            Err(e) => Err(Error::io("BLKGETDISKSEQ on", &self.path, e)),
        }
    }

    /// Proves that this fd is the instance `expected`: same device number,
    /// and the kernel's diskseq on the fd, asked now, is the expected one.
    pub fn verify(&self, expected: &DiskId) -> Result<()> {
        let seq = if self.dev() == expected.dev() {
            self.current_seq()?
        } else {
            self.id.seq
        };
        check(expected, DiskId::new(self.dev(), seq))
    }

    /// Gives up the device, keeping the fd open.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    fn no_disk_seq(&self) -> Error {
        Error::NoDiskSeq {
            path: self.path.clone(),
            dev: self.dev(),
        }
    }
}

impl AsFd for BlockDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `found` (read from an fd) must be the `expected` instance.
pub(crate) fn check(expected: &DiskId, found: DiskId) -> Result<()> {
    if found == *expected {
        Ok(())
    } else {
        Err(Error::Stale {
            expected: *expected,
            found,
        })
    }
}

/// Opens a path that should be a block device without hanging on a FIFO
/// (`O_NONBLOCK`, cleared again once the fd is known to be a block device)
/// and without acquiring a controlling terminal.
fn open_block_fd(path: &Path, access: Access) -> Result<(OwnedFd, Stat)> {
    let flags = access.flags() | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ISDIR) => {
            return Err(Error::NotBlockDevice {
                path: path.to_owned(),
                what: "a directory",
            })
        }
        Err(e) => return Err(Error::io("opening", path, e)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| Error::io("stat", path, e))?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type != FileType::BlockDevice {
        return Err(Error::NotBlockDevice {
            path: path.to_owned(),
            what: describe(file_type),
        });
    }
    // F_SETFL changes only the status flags (O_NONBLOCK among them); the
    // access mode and O_CLOEXEC stay.
    rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(|e| Error::io("fcntl on", path, e))?;
    Ok((fd, stat))
}

fn describe(file_type: FileType) -> &'static str {
    match file_type {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "an unknown kind of file",
    }
}

/// Opens device instance `id` by number and proves on the fd that it is that
/// instance. [`Error::Stale`] when the number now names another instance.
///
/// Where to look, in order: `/dev/block/M:m` (udev's link, when this host
/// has `/dev/block`); where this process last found `M:m`; `/dev/` + the
/// kernel name from the `/sys/dev/block/M:m` link (the name the kernel gives
/// the device node unless a driver renames it); `/dev/` + `DEVNAME` from
/// `/sys/dev/block/M:m/uevent`. A hint that does not lead to device `M:m`
/// is passed over. Whatever the name, the fd is the proof.
pub fn open_verified(id: DiskId, access: Access) -> Result<BlockDevice> {
    let dev = id.dev();
    let device = if udev_links() {
        let by_number = PathBuf::from(format!("/dev/block/{dev}"));
        match BlockDevice::open(&by_number, access) {
            Ok(device) => device,
            Err(Error::Io { ref source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                open_by_kernel_name(dev, access)?
            }
            Err(e) => return Err(e),
        }
    } else {
        open_by_kernel_name(dev, access)?
    };
    // `device.id` was read from this fd just now: no need to ask again.
    check(&id, device.id)?;
    Ok(device)
}

/// Whether `/dev/block` exists (udev runs here), looked up once per process:
/// a failed lookup costs as much as the rest of a verified open, and the
/// answer only chooses which hint to try first.
fn udev_links() -> bool {
    static HAS_DEV_BLOCK: OnceLock<bool> = OnceLock::new();
    *HAS_DEV_BLOCK.get_or_init(|| Path::new("/dev/block").is_dir())
}

/// Opens device number `dev`, whatever instance it is now, and proves on
/// the fd that it has that number ([`Error::WrongNumber`] when every name
/// found leads elsewhere; [`Error::NoSuchDevice`] when the kernel has no
/// device `dev`). This is blkback's open by number: a record without a
/// diskseq can promise nothing more. With a diskseq, use [`open_verified`].
pub fn open_by_number(dev: DevNum, access: Access) -> Result<BlockDevice> {
    let device = open_by_kernel_name(dev, access)?;
    if device.dev() != dev {
        return Err(Error::WrongNumber {
            path: device.path,
            expected: dev,
            found: device.id.dev(),
        });
    }
    Ok(device)
}

/// Opens `/dev/<kernel name of dev>`: where this process last found `dev`,
/// else the sysfs link's name, else the uevent's `DEVNAME`. Each is only a
/// hint; the caller proves the result on the fd.
fn open_by_kernel_name(dev: DevNum, access: Access) -> Result<BlockDevice> {
    if let Some(path) = known_paths::get(dev) {
        match BlockDevice::open(&path, access) {
            Ok(device) if device.dev() == dev => return Ok(device),
            // Renamed, gone, or now another device: look it up afresh, and
            // let that lookup report any genuine error.
            _ => known_paths::forget(dev),
        }
    }
    if let Some(name) = sysfs::link_name(dev) {
        let path = Path::new("/dev").join(&name);
        match BlockDevice::open(&path, access) {
            Ok(device) if device.dev() == dev => {
                known_paths::remember(dev, path);
                return Ok(device);
            }
            Ok(_) => {}
            Err(Error::Io { ref source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let path = Path::new("/dev").join(sysfs::devname(dev)?);
    let device = BlockDevice::open(&path, access)?;
    if device.dev() == dev {
        known_paths::remember(dev, path);
    }
    Ok(device)
}

/// Where this process last found each device number. Only a hint, like
/// the sysfs name it saves looking up (a readlink in sysfs costs as much as
/// the open itself): every open through it is proven on the fd, and a hint
/// that no longer leads to its number is dropped.
mod known_paths {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::{Mutex, MutexGuard, OnceLock};

    use crate::id::DevNum;

    fn paths() -> MutexGuard<'static, HashMap<DevNum, PathBuf>> {
        static PATHS: OnceLock<Mutex<HashMap<DevNum, PathBuf>>> = OnceLock::new();
        let paths = PATHS.get_or_init(Mutex::default);
        // The map holds hints only: a panic elsewhere cannot make it unsafe.
        paths
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn get(dev: DevNum) -> Option<PathBuf> {
        paths().get(&dev).cloned()
    }

    pub(super) fn remember(dev: DevNum, path: PathBuf) {
        paths().insert(dev, path);
    }

    pub(super) fn forget(dev: DevNum) {
        paths().remove(&dev);
    }
}

/// Opens the disk whose diskseq is `seq` (or its partition `partition`) and
/// proves it on the fd: the "open by diskseq" the kernel does not offer.
/// Uses `/dev/disk/by-diskseq/` links as a hint where udev made them and
/// falls back to a sysfs scan (the links can lag behind the kernel).
pub fn open_by_diskseq(
    seq: DiskSeq,
    partition: Option<u32>,
    access: Access,
) -> Result<BlockDevice> {
    if let Some(device) = open_udev_hint(seq, partition, access) {
        return Ok(device);
    }
    let (disk, disk_dev) = sysfs::find_disk_by_seq(seq)?.ok_or(Error::NoSuchDiskSeq { seq })?;
    let target = match partition {
        None => disk_dev,
        Some(number) => sysfs::find_partition(&disk, number)?.ok_or(Error::NoSuchPartition {
            disk: disk.clone(),
            seq,
            partition: number,
        })?,
    };
    let device = open_verified(DiskId::new(target, seq), access)?;
    if device.partition() != partition {
        // The partition table changed between the scan and the open.
        return Err(Error::NoSuchPartition {
            disk,
            seq,
            partition: partition.unwrap_or(0),
        });
    }
    Ok(device)
}

/// The udev link for `seq`, if it exists and leads to the right instance.
fn open_udev_hint(seq: DiskSeq, partition: Option<u32>, access: Access) -> Option<BlockDevice> {
    let link = match partition {
        None => format!("/dev/disk/by-diskseq/{seq}"),
        Some(n) => format!("/dev/disk/by-diskseq/{seq}-part{n}"),
    };
    let link = PathBuf::from(link);
    fs::symlink_metadata(&link).ok()?;
    let device = BlockDevice::open(&link, access).ok()?;
    (device.id.seq == seq && device.partition() == partition).then_some(device)
}
