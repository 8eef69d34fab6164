//! Backend and toolstack latency, on real loop devices and our xenstored:
//!
//! 1. `physical-device` written → backend state Connected (the frontend is
//!    already Initialised): the backend's own cost, with the diskseq check
//!    (open by number, or by diskseq) and without it (stock blkback model);
//! 2. toolstack attach → Connected for 1 disk and 32 concurrent disks, the
//!    hotplug step done by `block-diskseq` or by Xen's stock `block` script.
//!
//! A bench binary, not criterion: the quantities are wall-clock latencies
//! of a multi-process flow (event loop, child processes, concurrency).
//! Needs root. Environment: `BLOCK_DISKSEQ_BIN` (default: `block-diskseq`
//! next to this binary's target dir), `STOCK_BLOCK_SCRIPT` (optional: the
//! stock script from Debian's xen-utils-common, unpacked),
//! `BACKEND_BENCH_RUNS` (default 200). See docs/benchmarks/backend.md.

#[path = "../tests/it/support.rs"]
#[allow(dead_code)] // the bench uses part of the tests' bed
mod support;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use support::*;
use testbed::loops::{attach_loop, image_attached, wait_detached};
use vbd::schema::{node, BackendPath, Mode, XenbusState};
use xen_sim::backend::{DiskseqPolicy, OpenMethod};
use xen_sim::toolstack::{DeviceType, DiskSpec, Toolstack, Vdev};
use xenstore::client::Client;

const MIB: u64 = 1 << 20;
const GUEST: u32 = 1;

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("backend bench: needs root (loop devices)");
        std::process::exit(1);
    }
    let runs: usize = std::env::var("BACKEND_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    println!("## physical-device → Connected (backend only), {runs} runs each\n");
    println!("| backend | median µs | p90 µs | p99 µs |");
    println!("|---|---:|---:|---:|");
    for (label, policy, method) in [
        (
            "diskseq check, open by number",
            DiskseqPolicy::Verify,
            OpenMethod::ByNumber,
        ),
        (
            "diskseq check, open by diskseq",
            DiskseqPolicy::Verify,
            OpenMethod::ByDiskseq,
        ),
        (
            "no check (stock blkback model)",
            DiskseqPolicy::Ignore,
            OpenMethod::ByNumber,
        ),
    ] {
        let samples = publish_to_connected(runs, policy, method);
        let (p50, p90, p99) = percentiles(&samples);
        println!("| {label} | {p50:.0} | {p90:.0} | {p99:.0} |");
    }

    let mut scripts = vec![("block-diskseq", ours())];
    if let Some(stock) = std::env::var_os("STOCK_BLOCK_SCRIPT") {
        scripts.push(("Xen stock block", PathBuf::from(stock)));
    }
    println!("\n## toolstack attach → Connected (file targets, script as a child process)\n");
    println!(
        "| script | 1 disk: median ms | 1 disk: p90 ms | 32 concurrent: median wall ms | 32 concurrent: max ms | failed attaches |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, script) in &scripts {
        let mut failed = 0;
        let mut single = Vec::new();
        for _ in 0..20 {
            let (wall, failures) = attach_wall(script, 1);
            single.push(wall);
            failed += failures;
        }
        let (s50, s90, _) = percentiles(&single);
        let mut many = Vec::new();
        for _ in 0..5 {
            let (wall, failures) = attach_wall(script, 32);
            many.push(wall);
            failed += failures;
        }
        let (m50, _, _) = percentiles(&many);
        let max = many.iter().copied().fold(0.0, f64::max);
        println!(
            "| {label} | {s50:.1} | {s90:.1} | {m50:.1} | {max:.1} | {failed} of {} |",
            20 + 5 * 32
        );
    }
}

/// `block-diskseq`, from the environment or next to this binary.
fn ours() -> PathBuf {
    std::env::var_os("BLOCK_DISKSEQ_BIN").map_or_else(
        || {
            let exe = std::env::current_exe().expect("bench exe");
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .join("block-diskseq")
        },
        PathBuf::from,
    )
}

fn percentiles(samples: &[f64]) -> (f64, f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9), at(0.99))
}

/// Waits on a watch until `<dir>/state` is Connected.
fn wait_connected(client: &mut Client, path: &BackendPath, token: &str) {
    let state = path.node(node::STATE);
    client.watch(&state, token).expect("watch state");
    loop {
        if read(client, &state).as_deref() == Some("4") {
            break;
        }
        client
            .next_event(Some(Duration::from_secs(10)))
            .expect("event")
            .unwrap_or_else(|| panic!("{}: not Connected within 10 s", path.dir()));
    }
    client.unwatch(&state, token).expect("unwatch");
}

fn spec(devid: u32, target: &Path, script: &Path) -> DiskSpec {
    DiskSpec {
        frontend_domid: GUEST,
        backend_domid: 0,
        vdev: Vdev::from_devid(devid),
        target: target.to_owned(),
        mode: Mode::ReadWrite,
        device_type: DeviceType::Disk,
        script: script.to_owned(),
        discard_enable: true,
    }
}

/// Microseconds from the record's commit to Connected, per run.
fn publish_to_connected(runs: usize, policy: DiskseqPolicy, method: OpenMethod) -> Vec<f64> {
    let env = Env::new(&[GUEST]);
    let mut config = env.backend_config(0);
    config.policy = policy;
    config.open_method = method;
    let _backend = env.start_backend(config);
    let guest = env.start_frontend(GUEST);
    let toolstack = Toolstack::new(Some(env.socket()));
    let image = env.image("bench.img", "BENCH", 16 * MIB);
    let mut xs = env.dom0();
    let mut watcher = env.dom0();
    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        let devid = 1000 + u32::try_from(run).unwrap();
        let layout = toolstack
            .create(&mut xs, &spec(devid, &image, Path::new("/bin/true")))
            .expect("create");
        let path = layout.backend;
        guest
            .wait_state(devid, XenbusState::Initialised, Duration::from_secs(10))
            .expect("frontend initialised");
        let dev = attach_loop(&image, false);
        let state = path.node(node::STATE);
        watcher.watch(&state, "bench").unwrap();
        let _ = watcher.next_event(Some(Duration::from_secs(1))); // the initial event
        let started = Instant::now();
        publish(
            &mut xs,
            &path,
            &dev.id().dev().to_xenstore(),
            Some(&dev.id().seq.to_xenstore()),
            dev.path(),
        );
        loop {
            if read(&mut watcher, &state).as_deref() == Some("4") {
                break;
            }
            watcher
                .next_event(Some(Duration::from_secs(10)))
                .unwrap()
                .expect("Connected within 10 s");
        }
        samples.push(started.elapsed().as_secs_f64() * 1e6);
        watcher.unwatch(&state, "bench").unwrap();
        drop(dev);
        xs.rm(&path.dir()).unwrap();
        xs.rm(&layout.frontend_dir).unwrap();
        wait_detached(&image);
    }
    samples
}

/// Milliseconds from the first attach's start to the last disk Connected
/// (`k` disks attached concurrently), and how many attaches failed (the
/// stock script's find-then-attach loses races under load). Everything is
/// detached afterwards, failed or not.
fn attach_wall(script: &Path, k: usize) -> (f64, usize) {
    let env = Env::new(&[GUEST]);
    let _backend = env.start_backend(env.backend_config(0));
    let _guest = env.start_frontend(GUEST);
    let images: Vec<PathBuf> = (0..k)
        .map(|i| env.image(&format!("d{i}.img"), "BENCH", 16 * MIB))
        .collect();
    let socket = env.socket();
    let started = Instant::now();
    let failures = thread::scope(|s| {
        let handles: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, image)| {
                let socket = socket.clone();
                s.spawn(move || {
                    let devid = 2000 + u32::try_from(i).unwrap();
                    let toolstack = Toolstack::new(Some(socket.clone()));
                    match toolstack.attach(&spec(devid, image, script)) {
                        Ok(report) => {
                            let mut client = Client::connect_socket(&socket).unwrap();
                            let path = BackendPath::parse(&report.backend).unwrap();
                            wait_connected(&mut client, &path, &format!("bench-{i}"));
                            0
                        }
                        Err(e) => {
                            eprintln!("backend bench: attach {devid}: {e}");
                            1
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(1))
            .sum::<usize>()
    });
    let wall = started.elapsed().as_secs_f64() * 1000.0;
    thread::scope(|s| {
        for i in 0..k {
            let socket = socket.clone();
            s.spawn(move || {
                let devid = 2000 + u32::try_from(i).unwrap();
                if let Err(e) =
                    Toolstack::new(Some(socket)).detach(GUEST, &Vdev::from_devid(devid), 0)
                {
                    eprintln!("backend bench: detach {devid}: {e}");
                }
            });
        }
    });
    for image in &images {
        release_image(image);
    }
    (wall, failures)
}

/// Waits for `image`'s loop devices to go; detaches (verified) any that a
/// failed script run left behind, so the bench never leaks a device.
fn release_image(image: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while image_attached(image) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let id = diskseq::FileId::of(std::fs::File::open(image).expect("image")).expect("image id");
    for info in diskseq::list_loops().expect("list loops") {
        if info.backing == id {
            eprintln!("backend bench: detaching leftover {}", info.path.display());
            if let Err(e) = diskseq::detach_verified(&info.id, Some(info.backing)) {
                eprintln!("backend bench: {}: {e}", info.path.display());
            }
        }
    }
    wait_detached(image);
}
