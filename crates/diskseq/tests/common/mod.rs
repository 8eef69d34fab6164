//! Shared test support: the root gate, backing files, and a guard that
//! detaches a persistent loop device by identity when a test ends.

#![allow(dead_code)] // each test binary uses its own subset

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use std::time::{Duration, Instant};

use diskseq::{detach_verified, open_verified, Access, DiskId, Error, FileId};
use tempfile::NamedTempFile;

/// True when the test may use loop devices. Without root it skips, saying
/// why — unless `DISKSEQ_REQUIRE_ALL=1`, where skipping is a failure.
pub fn have_root(test: &str) -> bool {
    let require_all = std::env::var_os("DISKSEQ_REQUIRE_ALL").is_some_and(|v| v == "1");
    if !rustix::process::geteuid().is_root() {
        assert!(
            !require_all,
            "{test}: needs root for loop devices, and DISKSEQ_REQUIRE_ALL=1 forbids skipping"
        );
        eprintln!("skipping {test}: needs root for loop devices");
        return false;
    }
    assert!(
        Path::new("/dev/loop-control").exists(),
        "{test}: running as root but /dev/loop-control is missing"
    );
    true
}

/// A temporary file to back a loop device, filled with a pattern that
/// differs per file so that reads prove which file a device shows.
pub struct Backing {
    pub file: NamedTempFile,
    pub tag: u8,
}

impl Backing {
    pub fn new(size: u64, tag: u8) -> Backing {
        let mut file = NamedTempFile::new().expect("create backing file");
        let block = vec![tag; 4096];
        let mut written = 0;
        while written < size {
            let n = (size - written).min(block.len() as u64) as usize;
            file.write_all(&block[..n]).expect("fill backing file");
            written += n as u64;
        }
        file.flush().unwrap();
        Backing { file, tag }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_file().as_fd()
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn id(&self) -> FileId {
        FileId::of(self.file.as_file()).unwrap()
    }

    /// The same file opened read-only.
    pub fn open_read_only(&self) -> File {
        OpenOptions::new().read(true).open(self.path()).unwrap()
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

/// Reads `len` bytes at `offset` from a device or file.
pub fn read_at(fd: impl AsFd, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = rustix::io::pread(fd, &mut buf, offset).expect("pread");
    buf.truncate(n);
    buf
}

/// Waits (up to 10 s) until `done` holds. A loop device detaches at the
/// *last* close: any process holding it open for a moment (`losetup -a`,
/// `lsblk`, another test listing loop devices) defers the detach by that
/// moment, so "gone right after our close" cannot be asserted, only "gone
/// soon after".
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
