//! Loop devices for tests: attached with autoclear (the kernel detaches them
//! when the test's last fd closes, even if it panics), waited for, and
//! detached only by identity.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use diskseq::{
    detach_verified, open_verified, Access, DiskId, Error, FileId, LoopDevice, LoopOptions,
};

/// Options for a test's device: autoclear, nothing else.
pub fn autoclear() -> LoopOptions {
    LoopOptions {
        autoclear: true,
        ..LoopOptions::default()
    }
}

/// Binds `image` to a free loop device with autoclear: dropping the
/// returned device (and every other fd on it) detaches it.
pub fn attach_loop(image: &Path, read_only: bool) -> LoopDevice {
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(image)
        .expect("open image");
    let opts = LoopOptions {
        read_only,
        ..autoclear()
    };
    attach_retrying(&file, &opts, image)
}

/// [`LoopDevice::attach`], retried for a while: under churn (parallel
/// tests detaching by autoclear) every free minor can be briefly claimed by
/// another attach.
fn attach_retrying(file: &File, opts: &LoopOptions, image: &Path) -> LoopDevice {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match LoopDevice::attach(file.as_fd(), opts) {
            Ok(dev) => return dev,
            Err(Error::NoFreeLoop { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("attach {} to a loop device: {e}", image.display()),
        }
    }
}

/// Detaches a persistent loop device by identity when dropped, so a failing
/// test leaves nothing attached. Never touches another instance.
pub struct DetachOnDrop(pub DiskId);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        let _ = detach_verified(&self.0, None);
    }
}

/// Waits (up to 10 s) until `done` holds. A loop device detaches at the
/// *last* close: any process holding it open for a moment (`losetup -a`,
/// another test listing loop devices) defers the detach by that moment, so
/// "gone right after our close" cannot be asserted, only "gone soon after".
#[track_caller]
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until instance `id` no longer exists: its number opens as another
/// instance, or not at all.
#[track_caller]
pub fn wait_gone(id: DiskId) {
    eventually(&format!("{id} is gone"), || {
        matches!(
            open_verified(id, Access::ReadOnly),
            Err(Error::Stale { .. } | Error::NoSuchDevice { .. })
        )
    });
}

/// True while some loop device is bound to the file `image` (by its inode).
pub fn image_attached(image: &Path) -> bool {
    let file = File::open(image).expect("open image");
    let id = FileId::of(&file).expect("image id");
    diskseq::list_loops()
        .expect("list loops")
        .iter()
        .any(|info| info.backing == id)
}

/// Waits until no loop device is bound to `image`.
#[track_caller]
pub fn wait_detached(image: &Path) {
    eventually(
        &format!("{} is attached to no loop device", image.display()),
        || !image_attached(image),
    );
}

/// Binds `image` (read-write, autoclear, partitions allowed) and adds a
/// partition per `(start, length)` in bytes, numbered from 1 — a disk with
/// a partition table, made with `BLKPG` (the kernel may lack table parsers).
pub fn attach_partitioned(image: &Path, partitions: &[(u64, u64)]) -> LoopDevice {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .expect("open image");
    let opts = LoopOptions {
        partscan: true,
        ..autoclear()
    };
    let disk = attach_retrying(&file, &opts, image);
    for (number, &(start, length)) in (1..).zip(partitions) {
        diskseq::ioctl::add_partition(disk.as_fd(), number, start, length)
            .expect("add a partition");
    }
    disk
}
