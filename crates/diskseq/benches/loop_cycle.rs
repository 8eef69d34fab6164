//! Cost of identity: a verified loop attach + detach cycle and a verified
//! open, each beside the bare kernel ioctl sequence (the floor, measured in
//! the same run) and beside util-linux `losetup`. Needs root.
//!
//! `cargo bench -p diskseq --bench loop_cycle`

use std::fs::File;
use std::hint::black_box;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion};
use diskseq::{
    detach_verified, ioctl, open_verified, Access, DiskId, FileId, LoopDevice, LoopOptions,
};
use rustix::fs::{Mode, OFlags};

fn backing_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("backing file");
    file.as_file().set_len(1 << 20).expect("size backing file");
    file
}

/// The bare kernel sequence a careful tool needs at minimum: find a free
/// minor, claim it, bind, learn the diskseq, unbind, close. No checks.
fn raw_cycle(control: &File, backing: &File) -> u64 {
    let minor = ioctl::loop_ctl_get_free(control.as_fd()).expect("GET_FREE");
    let path = format!("/dev/loop{minor}");
    let fd = rustix::fs::open(
        path.as_str(),
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::EXCL,
        Mode::empty(),
    )
    .expect("open loop device");
    let mut info = ioctl::empty_loop_info();
    info.lo_flags = 0;
    let config = ioctl::loop_config {
        fd: std::os::fd::AsRawFd::as_raw_fd(backing) as u32,
        block_size: 0,
        info,
        __reserved: [0; 8],
    };
    ioctl::loop_configure(fd.as_fd(), &config).expect("LOOP_CONFIGURE");
    let seq = ioctl::disk_seq(fd.as_fd())
        .expect("BLKGETDISKSEQ")
        .expect("diskseq");
    ioctl::loop_clr_fd(fd.as_fd()).expect("LOOP_CLR_FD");
    drop(fd);
    seq
}

/// What this crate does: attach (claim, bind, verify the binding, reopen
/// non-exclusively, read the device's properties) and a detach that opens
/// by number and proves number, diskseq, loop-ness and backing file first.
fn verified_cycle(backing: &File, backing_id: FileId) -> DiskId {
    let device = LoopDevice::attach(backing.as_fd(), &LoopOptions::default()).expect("attach");
    let id = device.id();
    drop(device);
    detach_verified(&id, Some(backing_id)).expect("detach");
    id
}

fn losetup_cycle(backing: &Path) {
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

fn bench(c: &mut Criterion) {
    if !rustix::process::geteuid().is_root() {
        eprintln!("loop_cycle: skipped, needs root for loop devices");
        return;
    }
    let file = backing_file();
    let backing = file.as_file();
    let backing_id = FileId::of(backing).unwrap();
    let control = File::options()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .expect("open /dev/loop-control");

    let mut cycle = c.benchmark_group("attach_detach");
    cycle.bench_function("raw_ioctls", |b| {
        b.iter(|| black_box(raw_cycle(&control, backing)))
    });
    cycle.bench_function("diskseq_verified", |b| {
        b.iter(|| black_box(verified_cycle(backing, backing_id)))
    });
    cycle.finish();

    let mut losetup = c.benchmark_group("attach_detach_losetup");
    losetup.sample_size(20);
    losetup.bench_function("losetup_f_show_d", |b| {
        b.iter(|| losetup_cycle(file.path()))
    });
    losetup.finish();

    // One bound device to open over and over.
    let opts = LoopOptions {
        autoclear: true,
        ..LoopOptions::default()
    };
    let held = LoopDevice::attach(backing.as_fd(), &opts).expect("attach");
    let id = held.id();
    let path = held.path().to_owned();
    let mut open = c.benchmark_group("open");
    open.bench_function("raw_open_fstat_diskseq", |b| {
        b.iter(|| {
            let fd = rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .expect("open");
            let stat = rustix::fs::fstat(&fd).expect("fstat");
            let seq = ioctl::disk_seq(fd.as_fd()).expect("BLKGETDISKSEQ");
            black_box((stat.st_rdev, seq))
        })
    });
    open.bench_function("open_verified", |b| {
        b.iter(|| black_box(open_verified(id, Access::ReadOnly).expect("open_verified")))
    });
    open.finish();
    drop(held);
}

criterion_group!(benches, bench);
criterion_main!(benches);
