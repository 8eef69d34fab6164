//! What sysfs says about block devices. Sysfs is read for *names*, for
//! listing, and for the attributes a backend publishes (queue limits); it is
//! never the proof of identity (it can change between the read and the
//! open). Proof comes from the open fd, in [`BlockDevice`](crate::BlockDevice).
//!
//! Read an attribute of a device only while holding it open: the number
//! cannot be reused under an open fd, so sysfs then describes the instance
//! the fd is.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::id::{DevNum, DiskSeq, LOOP_MAJOR};

const SYS_DEV_BLOCK: &str = "/sys/dev/block";
const SYS_CLASS_BLOCK: &str = "/sys/class/block";
const SYS_BLOCK: &str = "/sys/block";

/// What kind of block device an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A whole disk other than a loop device.
    Disk,
    /// A partition of a disk.
    Partition,
    /// A loop device (whole disk), bound or not.
    Loop,
}

impl DeviceKind {
    /// `disk`, `part` or `loop`, as the CLI and JSON print it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Disk => "disk",
            DeviceKind::Partition => "part",
            DeviceKind::Loop => "loop",
        }
    }
}

/// One block device as sysfs describes it at the moment of listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    /// Kernel name (`loop0`, `vda1`).
    pub name: String,
    /// Device number.
    pub dev: DevNum,
    /// Diskseq (a partition shows its disk's); `None` on kernels without it.
    pub seq: Option<DiskSeq>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Read-only.
    pub read_only: bool,
    /// Disk, partition or loop device.
    pub kind: DeviceKind,
    /// For a partition, the kernel name of its disk.
    pub parent: Option<String>,
    /// For a partition, its number on that disk.
    pub partition: Option<u32>,
    /// For a bound loop device, the backing file's path (as the kernel
    /// reports it; may end in " (deleted)").
    pub loop_backing: Option<PathBuf>,
}

/// `/sys/dev/block/MAJ:MIN`: the sysfs directory of a device by number.
pub(crate) fn dev_dir(dev: DevNum) -> PathBuf {
    PathBuf::from(format!("{SYS_DEV_BLOCK}/{dev}"))
}

fn read_trimmed(path: &Path) -> io::Result<String> {
    let mut text = fs::read_to_string(path)?;
    let len = text.trim_end().len();
    text.truncate(len);
    Ok(text)
}

fn read_number<T: std::str::FromStr>(path: &Path) -> Option<T> {
    read_trimmed(path).ok()?.parse().ok()
}

/// The value of `key` in a sysfs `uevent` file.
fn uevent_value(dir: &Path, key: &str) -> io::Result<Option<String>> {
    let text = fs::read_to_string(dir.join("uevent"))?;
    Ok(text.lines().find_map(|line| {
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_owned)
    }))
}

/// The kernel's name for device `dev` (`DEVNAME` in its uevent, relative to
/// `/dev`): without udev, `/dev/<name>` is where the device node is. A hint
/// for where to open it, nothing more. [`Error::NoSuchDevice`] when the
/// kernel has no device `dev`.
pub fn devname(dev: DevNum) -> Result<String> {
    let dir = dev_dir(dev);
    match uevent_value(&dir, "DEVNAME") {
        Ok(Some(name)) => Ok(name),
        Ok(None) => Err(Error::io(
            "finding DEVNAME in",
            dir.join("uevent"),
            io::Error::from(io::ErrorKind::NotFound),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NoSuchDevice { dev }),
        Err(e) => Err(Error::io("reading", dir.join("uevent"), e)),
    }
}

/// The kernel's name for `dev` from the `/sys/dev/block/M:m` symlink
/// (`.../block/loop0` → `loop0`; a `!` in a kernel name stands for `/`).
/// `None` when there is no such device.
pub(crate) fn link_name(dev: DevNum) -> Option<String> {
    let target = fs::read_link(dev_dir(dev)).ok()?;
    Some(target.file_name()?.to_str()?.replace('!', "/"))
}

/// The partition number of `dev`, `None` for a whole disk (or no device).
pub fn partition_number(dev: DevNum) -> Option<u32> {
    read_number(&dev_dir(dev).join("partition"))
}

/// The first sector of partition `dev` on its disk (`start`), `None` for a
/// whole disk or no device.
pub(crate) fn partition_start(dev: DevNum) -> Option<u64> {
    read_number(&dev_dir(dev).join("start"))
}

/// The sysfs directory of the whole disk `dev` is on: a partition's queue
/// and media attributes live with its disk, one directory up.
fn disk_dir(dev: DevNum) -> PathBuf {
    let dir = dev_dir(dev);
    if partition_number(dev).is_some() {
        dir.join("..")
    } else {
        dir
    }
}

/// Queue and media attributes of a disk, as blkback's `connect()` reads
/// them from the `block_device` to publish them to the frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// `removable` = 1.
    pub removable: bool,
    /// `queue/write_cache` = "write back": the disk has a volatile cache,
    /// so the frontend is offered flushes.
    pub write_back_cache: bool,
    /// `queue/discard_granularity` in bytes.
    pub discard_granularity: u64,
    /// The device's own `discard_alignment` in bytes (a partition's differs
    /// from its disk's).
    pub discard_alignment: u64,
}

/// Reads [`QueueLimits`] for `dev`, with the kernel's defaults (0, false)
/// where an attribute is absent. Call it while holding `dev` open.
pub fn queue_limits(dev: DevNum) -> QueueLimits {
    let disk = disk_dir(dev);
    QueueLimits {
        removable: read_number::<u8>(&disk.join("removable")) == Some(1),
        write_back_cache: read_trimmed(&disk.join("queue/write_cache"))
            .is_ok_and(|s| s == "write back"),
        discard_granularity: read_number(&disk.join("queue/discard_granularity")).unwrap_or(0),
        discard_alignment: read_number(&dev_dir(dev).join("discard_alignment")).unwrap_or(0),
    }
}

/// Whether the device's queue accepts discards. A partition shares its
/// disk's queue, one directory up.
pub(crate) fn discard_supported(dev: DevNum) -> bool {
    let dir = dev_dir(dev);
    let max: Option<u64> = read_number(&dir.join("queue/discard_max_bytes"))
        .or_else(|| read_number(&dir.join("../queue/discard_max_bytes")));
    max.is_some_and(|bytes| bytes > 0)
}

/// Whether the disk named `name` is a bound loop device (`loop/` exists).
pub(crate) fn is_bound_loop(name: &str) -> bool {
    Path::new(SYS_BLOCK).join(name).join("loop").exists()
}

/// The first loop device after `loop<index>` that exists and is unbound,
/// by index; `None` past the last existing one. A hint: it may be taken by
/// the time it is claimed.
pub(crate) fn next_unbound_loop(index: u32) -> Option<u32> {
    (index.checked_add(1)?..).find_map(|next| {
        let name = format!("loop{next}");
        if !Path::new(SYS_BLOCK).join(&name).exists() {
            return Some(None); // past the last device: stop
        }
        (!is_bound_loop(&name)).then_some(Some(next))
    })?
}

/// The backing file of bound loop device `dev`, as sysfs reports it.
pub(crate) fn loop_backing_file(dev: DevNum) -> Option<PathBuf> {
    read_trimmed(&dev_dir(dev).join("loop/backing_file"))
        .ok()
        .map(PathBuf::from)
}

/// Names of the whole disks (`/sys/block`), in directory order.
pub(crate) fn disk_names() -> Result<Vec<String>> {
    let entries = fs::read_dir(SYS_BLOCK).map_err(|e| Error::io("listing", SYS_BLOCK, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", SYS_BLOCK, e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// The whole disk whose diskseq is `seq`, by kernel name and number.
pub(crate) fn find_disk_by_seq(seq: DiskSeq) -> Result<Option<(String, DevNum)>> {
    for name in disk_names()? {
        let dir = Path::new(SYS_BLOCK).join(&name);
        if read_number::<u64>(&dir.join("diskseq")) != Some(seq.get()) {
            continue;
        }
        if let Some(dev) = read_dev(&dir) {
            return Ok(Some((name, dev)));
        }
    }
    Ok(None)
}

/// Partition `number` of disk `disk` (kernel name), by number.
pub(crate) fn find_partition(disk: &str, number: u32) -> Result<Option<DevNum>> {
    let dir = Path::new(SYS_BLOCK).join(disk);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    for entry in entries.flatten() {
        let sub = entry.path();
        if read_number::<u32>(&sub.join("partition")) == Some(number) {
            return Ok(read_dev(&sub));
        }
    }
    Ok(None)
}

fn read_dev(dir: &Path) -> Option<DevNum> {
    read_trimmed(&dir.join("dev")).ok()?.parse().ok()
}

/// Every block device the kernel knows (disks, partitions, loop devices,
/// bound or not), sorted by device number.
pub fn list_devices() -> Result<Vec<DeviceEntry>> {
    let entries =
        fs::read_dir(SYS_CLASS_BLOCK).map_err(|e| Error::io("listing", SYS_CLASS_BLOCK, e))?;
    let mut devices = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", SYS_CLASS_BLOCK, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // A device removed while we list simply drops out of the list.
        if let Some(device) = read_entry(name, &entry.path()) {
            devices.push(device);
        }
    }
    devices.sort_by_key(|d| d.dev);
    Ok(devices)
}

fn read_entry(name: String, dir: &Path) -> Option<DeviceEntry> {
    let dev = read_dev(dir)?;
    let sectors: u64 = read_number(&dir.join("size"))?;
    let read_only = read_number::<u8>(&dir.join("ro")).is_some_and(|ro| ro != 0);
    let is_partition = dir.join("partition").exists();
    let (kind, parent, seq) = if is_partition {
        let parent = fs::canonicalize(dir)
            .ok()
            .and_then(|real| real.parent()?.file_name()?.to_str().map(str::to_owned));
        let seq = uevent_value(dir, "DISKSEQ").ok().flatten();
        (DeviceKind::Partition, parent, seq)
    } else {
        let kind = if dev.major == LOOP_MAJOR {
            DeviceKind::Loop
        } else {
            DeviceKind::Disk
        };
        (kind, None, read_trimmed(&dir.join("diskseq")).ok())
    };
    let loop_backing = if kind == DeviceKind::Loop {
        read_trimmed(&dir.join("loop/backing_file"))
            .ok()
            .map(PathBuf::from)
    } else {
        None
    };
    Some(DeviceEntry {
        name,
        dev,
        seq: seq
            .and_then(|s| s.parse::<u64>().ok())
            .and_then(DiskSeq::new),
        size_bytes: sectors.saturating_mul(512),
        read_only,
        kind,
        parent,
        partition: read_number(&dir.join("partition")),
        loop_backing,
    })
}
