//! Interleaved medians: the same comparisons as `loop_cycle`, robust to a
//! loaded machine. Each round runs every variant once, in turn, so all of
//! them see the same conditions, and the report uses medians and p90s,
//! which the kernel's occasional scheduler-tick waits (RCU grace periods in
//! the queue freezes of configure and teardown) do not drag the way they
//! drag means. Needs root.
//!
//! `cargo bench -p diskseq --bench cycle_medians [-- ROUNDS]`

mod common;

use std::fs::File;
use std::hint::black_box;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{losetup_cycle, raw_cycle, raw_open, verified_cycle};
use diskseq::{open_verified, Access, FileId, LoopDevice, LoopOptions};

/// Every how many rounds the (slow) losetup pair runs.
const LOSETUP_EVERY: usize = 10;

fn timed(samples: &mut Vec<Duration>, f: impl FnOnce()) {
    let start = Instant::now();
    f();
    samples.push(start.elapsed());
}

struct Summary {
    median: Duration,
    p90: Duration,
    mean: Duration,
}

fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort();
    let n = samples.len();
    Summary {
        median: samples[n / 2],
        p90: samples[n * 9 / 10],
        mean: samples.iter().sum::<Duration>() / n as u32,
    }
}

fn report(name: &str, samples: &mut [Duration], floor: Option<&Summary>) -> Summary {
    let s = summarize(samples);
    let ratio = floor.map_or(String::new(), |f| {
        format!(
            "  median {:.2}x floor",
            s.median.as_secs_f64() / f.median.as_secs_f64()
        )
    });
    println!(
        "{name:<34} n={:<5} median {:>9.1?}  p90 {:>9.1?}  mean {:>9.1?}{ratio}",
        samples.len(),
        s.median,
        s.p90,
        s.mean
    );
    s
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("cycle_medians: skipped, needs root for loop devices");
        return;
    }
    // `cargo bench` passes `--bench`; a bare number is the round count.
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(1000);
    let file = tempfile::NamedTempFile::new().expect("backing file");
    file.as_file().set_len(1 << 20).expect("size backing file");
    let backing = file.as_file();
    let backing_id = FileId::of(backing).expect("stat backing");
    let control = File::options()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .expect("open /dev/loop-control");

    let (mut raw, mut verified, mut losetup) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        timed(&mut raw, || {
            black_box(raw_cycle(&control, backing));
        });
        timed(&mut verified, || {
            black_box(verified_cycle(backing, backing_id));
        });
        if round % LOSETUP_EVERY == 0 {
            timed(&mut losetup, || losetup_cycle(file.path()));
        }
    }

    let opts = LoopOptions {
        autoclear: true,
        ..LoopOptions::default()
    };
    let held = LoopDevice::attach(backing.as_fd(), &opts).expect("attach");
    let (id, path) = (held.id(), held.path().to_owned());
    let sys_link = format!("/sys/dev/block/{}", id.dev());
    let (mut open_raw, mut open_same_job, mut open_ours) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds * 20 {
        timed(&mut open_raw, || {
            black_box(raw_open(&path));
        });
        timed(&mut open_same_job, || {
            let target = std::fs::read_link(&sys_link).expect("readlink");
            let name = target.file_name().expect("kernel name");
            black_box(raw_open(&Path::new("/dev").join(name)));
        });
        timed(&mut open_ours, || {
            black_box(open_verified(id, Access::ReadOnly).expect("open_verified"));
        });
    }
    drop(held);

    println!("interleaved rounds: {rounds} (losetup every {LOSETUP_EVERY}th)");
    let floor = report("attach_detach/raw_ioctls", &mut raw, None);
    report(
        "attach_detach/diskseq_verified",
        &mut verified,
        Some(&floor),
    );
    let lo = report("attach_detach/losetup_f_show_d", &mut losetup, Some(&floor));
    let ours = summarize(&mut verified);
    println!(
        "  verified cycle is {:.1}x faster than losetup (medians)",
        lo.median.as_secs_f64() / ours.median.as_secs_f64()
    );
    let floor = report("open/raw_open_fstat_diskseq", &mut open_raw, None);
    report(
        "open/raw_sysfs_name_open_fstat_diskseq",
        &mut open_same_job,
        Some(&floor),
    );
    report("open/open_verified", &mut open_ours, Some(&floor));
}
