//! The few sysfs attributes blkback gets from the `block_device` and this
//! crate's identity library does not expose: the kernel name of a device
//! number, and the queue limits published at connect.
//!
//! Every read here happens while the caller holds the device open, so the
//! number cannot be reused under it: sysfs then describes the same instance
//! the fd does.

use std::fs;
use std::io;
use std::path::PathBuf;

use diskseq::DevNum;

fn dev_dir(dev: DevNum) -> PathBuf {
    PathBuf::from(format!("/sys/dev/block/{}:{}", dev.major, dev.minor))
}

fn read_trimmed(path: PathBuf) -> io::Result<String> {
    fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The kernel's name for `dev` (`DEVNAME=` in its uevent), e.g. `loop3`:
/// without udev, `/dev/<name>` is the only way to open a device by number.
pub fn devname(dev: DevNum) -> io::Result<String> {
    let uevent = read_trimmed(dev_dir(dev).join("uevent"))?;
    uevent
        .lines()
        .find_map(|line| line.strip_prefix("DEVNAME="))
        .map(str::to_owned)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no DEVNAME in uevent", dev_dir(dev).display()),
            )
        })
}

/// The partition number of `dev`, `None` for a whole disk.
pub fn partition_number(dev: DevNum) -> Option<u32> {
    read_trimmed(dev_dir(dev).join("partition"))
        .ok()?
        .parse()
        .ok()
}

/// The directory of the whole disk (a partition's queue lives there).
fn disk_dir(dev: DevNum) -> PathBuf {
    let dir = dev_dir(dev);
    if partition_number(dev).is_some() {
        dir.join("..")
    } else {
        dir
    }
}

/// Queue and media attributes of an open disk, with the kernel's defaults
/// where an attribute is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// `removable` = 1.
    pub removable: bool,
    /// `queue/write_cache` = "write back".
    pub write_back_cache: bool,
    /// `queue/discard_granularity`.
    pub discard_granularity: u64,
    /// The device's `discard_alignment`.
    pub discard_alignment: u64,
}

/// Reads [`QueueLimits`] for `dev`.
pub fn queue_limits(dev: DevNum) -> QueueLimits {
    let disk = disk_dir(dev);
    let number = |path: PathBuf| read_trimmed(path).ok().and_then(|s| s.parse::<u64>().ok());
    QueueLimits {
        removable: number(disk.join("removable")) == Some(1),
        write_back_cache: read_trimmed(disk.join("queue/write_cache"))
            .is_ok_and(|s| s == "write back"),
        discard_granularity: number(disk.join("queue/discard_granularity")).unwrap_or(0),
        discard_alignment: number(dev_dir(dev).join("discard_alignment")).unwrap_or(0),
    }
}
