//! The cycles both benches time (`loop_cycle` with criterion,
//! `cycle_medians` interleaved): the same code, so their figures compare.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use diskseq::{detach_verified, ioctl, DiskId, FileId, LoopDevice, LoopOptions};
use rustix::fs::{Mode, OFlags};

/// The bare kernel sequence a careful tool needs at minimum: find a free
/// minor, claim it, bind, learn the diskseq, unbind, close. No checks; it
/// only tries again when another process took the minor first (as it may on
/// a shared machine).
pub fn raw_cycle(control: &File, backing: &File) -> u64 {
    loop {
        let minor = ioctl::loop_ctl_get_free(control.as_fd()).expect("GET_FREE");
        let path = format!("/dev/loop{minor}");
        let fd = match rustix::fs::open(
            path.as_str(),
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::EXCL,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::BUSY) => continue,
            Err(e) => panic!("open {path}: {e}"),
        };
        let config = ioctl::loop_config {
            fd: std::os::fd::AsRawFd::as_raw_fd(backing) as u32,
            block_size: 0,
            info: ioctl::empty_loop_info(),
            __reserved: [0; 8],
        };
        match ioctl::loop_configure(fd.as_fd(), &config) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => continue,
            Err(e) => panic!("LOOP_CONFIGURE {path}: {e}"),
        }
        let seq = ioctl::disk_seq(fd.as_fd())
            .expect("BLKGETDISKSEQ")
            .expect("diskseq");
        ioctl::loop_clr_fd(fd.as_fd()).expect("LOOP_CLR_FD");
        return seq;
    }
}

/// What this crate does: attach (claim, bind, verify the binding, reopen
/// non-exclusively, read the device's properties) and a detach that opens
/// by number and proves number, diskseq, loop-ness and backing file first.
pub fn verified_cycle(backing: &File, backing_id: FileId) -> DiskId {
    let device = LoopDevice::attach(backing.as_fd(), &LoopOptions::default()).expect("attach");
    let id = device.id();
    drop(device);
    detach_verified(&id, Some(backing_id)).expect("detach");
    id
}

/// Open a device by a known path and read its identity, without checks.
pub fn raw_open(path: &Path) -> (u64, Option<u64>) {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).expect("open");
    let stat = rustix::fs::fstat(&fd).expect("fstat");
    let seq = ioctl::disk_seq(fd.as_fd()).expect("BLKGETDISKSEQ");
    (stat.st_rdev, seq)
}

/// util-linux's pair: `losetup -f --show FILE`, then `losetup -d DEV`.
pub fn losetup_cycle(backing: &Path) {
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(backing)
        .output()
        .expect("run losetup");
    assert!(out.status.success(), "losetup -f failed");
    let device = String::from_utf8(out.stdout).expect("utf-8");
    let status = Command::new("losetup")
        .args(["-d", device.trim()])
        .status()
        .expect("run losetup -d");
    assert!(status.success(), "losetup -d failed");
}
