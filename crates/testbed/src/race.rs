//! The race injector: put another file under a device number the moment it
//! is free — what a concurrent tenant does on a real host, and the reason
//! the diskseq check exists.
//!
//! The minor cannot be held across a swap: `LOOP_CLR_FD` only marks the
//! device and the detach happens at the last close, after which any process
//! may claim the free minor (other tests here do). So every bind retries for
//! a while and reports failure otherwise; tests that need the swap retry the
//! whole scenario.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use diskseq::{DiskId, LoopDevice};

use crate::loops::autoclear;

/// Binds `file` on loop minor `minor` (autoclear), retrying for up to
/// `patience` while the minor is still detaching or briefly claimed.
pub fn bind_on_minor(
    minor: u32,
    file: BorrowedFd<'_>,
    patience: Duration,
) -> Result<LoopDevice, diskseq::Error> {
    let deadline = Instant::now() + patience;
    loop {
        match LoopDevice::attach_at(minor, file, &autoclear()) {
            Ok(dev) => return Ok(dev),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(e),
        }
    }
}

/// Lets `victim` go (its fd must be the last one: autoclear detaches it at
/// the close) and binds `image` on the same minor.
pub fn rebind_same_minor(victim: LoopDevice, image: &Path) -> Result<LoopDevice, String> {
    let minor = victim.id().minor;
    drop(victim);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| format!("{}: {e}", image.display()))?;
    bind_on_minor(minor, file.as_fd(), Duration::from_secs(5))
        .map_err(|e| format!("binding {} to /dev/loop{minor}: {e}", image.display()))
}

/// Attaches `first`, lets it go, and attaches `second` on the same minor:
/// the old instance and the new device. Retries from scratch (up to 20
/// times) when another process takes the minor in between.
pub fn reuse_minor(first: BorrowedFd<'_>, second: BorrowedFd<'_>) -> (DiskId, LoopDevice) {
    for _ in 0..20 {
        let old = LoopDevice::attach(first, &autoclear()).expect("attach the first file");
        let old_id = old.id();
        drop(old);
        if let Ok(new) = bind_on_minor(old_id.minor, second, Duration::from_millis(50)) {
            return (old_id, new);
        }
    }
    panic!("could not reuse a loop minor in 20 tries");
}
