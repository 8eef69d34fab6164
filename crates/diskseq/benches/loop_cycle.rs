//! Cost of identity: a verified loop attach + detach cycle and a verified
//! open, each beside the bare kernel ioctl sequence (the floor, measured in
//! the same run) and beside util-linux `losetup`. Needs root.
//!
//! `cargo bench -p diskseq --bench loop_cycle`

mod common;

use std::fs::File;
use std::hint::black_box;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{losetup_cycle, raw_cycle, raw_open, verified_cycle};
use criterion::{criterion_group, criterion_main, Bencher, Criterion};
use diskseq::{open_verified, Access, FileId, LoopDevice, LoopOptions};

fn backing_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("backing file");
    file.as_file().set_len(1 << 20).expect("size backing file");
    file
}

/// Times `timed` only, running `companion` untimed before each iteration.
fn paired(b: &mut Bencher<'_>, mut timed: impl FnMut(), mut companion: impl FnMut()) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            companion();
            let start = Instant::now();
            timed();
            total += start.elapsed();
        }
        total
    })
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

    // The kernel's share of a cycle (two queue freezes, each waiting for an
    // RCU grace period) swings with the machine's load by 10x within
    // seconds, so each iteration also runs its counterpart, untimed:
    // both sides of every comparison see the same conditions.
    let raw = || {
        black_box(raw_cycle(&control, backing));
    };
    let verified = || {
        black_box(verified_cycle(backing, backing_id));
    };
    let mut cycle = c.benchmark_group("attach_detach");
    cycle.bench_function("raw_ioctls", |b| paired(b, raw, verified));
    cycle.bench_function("diskseq_verified", |b| paired(b, verified, raw));
    cycle.finish();

    let mut losetup = c.benchmark_group("attach_detach_losetup");
    losetup.sample_size(20);
    losetup.bench_function("losetup_f_show_d", |b| {
        paired(b, || losetup_cycle(file.path()), verified)
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
    // The floor with the path known in advance...
    open.bench_function("raw_open_fstat_diskseq", |b| {
        b.iter(|| black_box(raw_open(&path)))
    });
    // ...and for the same job, where only the number is known: the name
    // comes from sysfs first (as it must on a host without udev).
    let sys_link = format!("/sys/dev/block/{}", id.dev());
    open.bench_function("raw_sysfs_name_open_fstat_diskseq", |b| {
        b.iter(|| {
            let target = std::fs::read_link(&sys_link).expect("readlink");
            let name = target.file_name().expect("kernel name");
            black_box(raw_open(&Path::new("/dev").join(name)))
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
