//! Whole-process latency of the block hotplug script, ours against Xen's
//! stock bash `block` script, on the same machine, the same xenstored and
//! the same kind of backend directory, in the same run:
//! - sequential `add` and `remove` (median and p90 of each);
//! - 1, 8 and 32 concurrent `add`s (wall time from first spawn to last exit).
//!
//! Ours (with this project's backend) and the stock script take turns run
//! by run, so the ratio holds on a machine whose load changes.
//!
//! Not a criterion bench: what is measured is process spawn to exit of an
//! external program, with concurrency. Run through `bench/hotplug/run.sh`,
//! which builds the release binary, unpacks the stock script and sets
//! `BLOCK_DISKSEQ_BIN` and `STOCK_BLOCK_SCRIPT`. Needs root (loop devices).
//! `BLOCK_DISKSEQ_BASELINE_BIN` adds another build of the script (say, the
//! previous commit's), measured in turns with this one.

#[path = "../tests/it/support.rs"]
#[allow(dead_code)] // the bench uses part of the tests' bed
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::{assert_no_loops, wait_for, Bed, Image, OpenedBackend};
use vbd::schema::{node, BackendPath};
use xen_sim::backend::{Backend, BackendConfig};

const STOCK: &str = "Xen stock block (backend without the check)";

#[derive(Clone, Copy, PartialEq, Eq)]
enum BackendKind {
    /// This project's backend (blkback's protocol with the diskseq check
    /// and the `opened` node), one thread for all devices, as blkback.
    Project,
    /// A minimal stand-in per device that only opens the published device
    /// and sets `opened` = 1: isolates the script's own cost.
    StandIn,
    /// No backend: nothing can prove the handoff.
    None,
}

/// One script's measurements.
#[derive(Default)]
struct Measured {
    add: Vec<Duration>,
    remove: Vec<Duration>,
    /// (concurrent adds, median wall time).
    concurrent: Vec<(usize, Duration)>,
    add_cpu: Duration,
    adds: u32,
    failures: u32,
}

struct Script {
    name: &'static str,
    path: PathBuf,
    /// Which backend takes the devices.
    backend: BackendKind,
    env: &'static [(&'static str, &'static str)],
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("hotplug bench: needs root (loop devices)");
        std::process::exit(1);
    }
    let ours = std::env::var_os("BLOCK_DISKSEQ_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            eprintln!("hotplug bench: set BLOCK_DISKSEQ_BIN (bench/hotplug/run.sh does)");
            std::process::exit(1)
        });
    let runs: usize = std::env::var("HOTPLUG_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut scripts = vec![
        Script {
            name: "block-diskseq (project backend: opened handshake)",
            path: ours.clone(),
            backend: BackendKind::Project,
            env: &[],
        },
        Script {
            name: "block-diskseq (minimal stand-in backend: opened handshake)",
            path: ours.clone(),
            backend: BackendKind::StandIn,
            env: &[],
        },
        Script {
            name: "block-diskseq (backend without the check: persistent loop, no wait)",
            path: ours.clone(),
            backend: BackendKind::None,
            env: &[],
        },
    ];
    if let Some(baseline) = std::env::var_os("BLOCK_DISKSEQ_BASELINE_BIN") {
        // Another build of block-diskseq (e.g. the previous commit's),
        // interleaved with this one in the same case: a before/after
        // comparison that a change in the machine's load cannot skew.
        scripts.push(Script {
            name: "block-diskseq baseline build (backend without the check)",
            path: baseline.into(),
            backend: BackendKind::None,
            env: &[],
        });
    }
    if let Some(stock) = std::env::var_os("STOCK_BLOCK_SCRIPT") {
        // Stock blkback checks nothing and writes no `opened`: measured
        // interleaved with ours in the same case (a backend without the
        // check), where ours attaches persistent and waits for nothing.
        scripts.push(Script {
            name: STOCK,
            path: stock.into(),
            backend: BackendKind::None,
            env: &[],
        });
    }

    let bed = Bed::new();
    // The floor: spawning a process that does nothing, the same way.
    let mut floor: Vec<Duration> = (0..runs.max(30))
        .map(|_| {
            let start = Instant::now();
            let status = Command::new("/bin/true")
                .env_remove("LD_LIBRARY_PATH")
                .status()
                .unwrap();
            assert!(status.success());
            start.elapsed()
        })
        .collect();
    let floor = median(&mut floor);
    let floors = concurrency_floors(&bed, &ours);
    let mut next_fe = 1u32;
    let mut measured: Vec<Measured> = scripts.iter().map(|_| Measured::default()).collect();
    // Scripts that share a kind of backend are measured interleaved, run
    // by run, so a change in the machine's load (it is shared) hits them
    // alike and their ratio holds: ours with the project backend and the
    // stock script take turns. A kind of backend is one group because
    // backends cannot share a backend tree (the project backend probes
    // every vbd directory; the stand-in and "none" rows need it absent).
    for kind in [
        BackendKind::Project,
        BackendKind::StandIn,
        BackendKind::None,
    ] {
        let group: Vec<usize> = (0..scripts.len())
            .filter(|&i| scripts[i].backend == kind)
            .collect();
        if group.is_empty() {
            continue;
        }
        let service = (kind == BackendKind::Project).then(|| {
            let mut config = BackendConfig::new(0);
            config.logger = std::sync::Arc::new(|_| {});
            Backend::new(bed.client(), config)
                .spawn()
                .expect("start the backend")
        });
        for run_index in 0..runs {
            // Each turn starts with the next script: the first place in a
            // turn (right after the stock script's run and its dozens of
            // processes) measured 0.1-0.4 ms slower, whichever build held it.
            for k in 0..group.len() {
                let i = group[(run_index + k) % group.len()];
                let script = &scripts[i];
                let m = &mut measured[i];
                let (image, backend, stand_in) = prepare(&bed, &mut next_fe, kind);
                match run(&bed, script, "add", &backend) {
                    Some(latency) => {
                        m.add.push(latency);
                        assert_published(&bed, &backend, script);
                        detach(&bed, &backend, &image, kind, stand_in);
                        m.remove.extend(run(&bed, script, "remove", &backend));
                    }
                    None => m.failures += 1,
                }
                teardown(&bed, &backend, &image);
            }
        }
        for k in [1usize, 8, 32] {
            let reps = if k == 32 { 5 } else { 7 };
            let mut walls: Vec<Vec<Duration>> = group.iter().map(|_| Vec::new()).collect();
            for _ in 0..reps {
                for (slot, &i) in group.iter().enumerate() {
                    let script = &scripts[i];
                    let m = &mut measured[i];
                    let set: Vec<_> = (0..k).map(|_| prepare(&bed, &mut next_fe, kind)).collect();
                    let cpu_before = children_cpu();
                    let start = Instant::now();
                    let children: Vec<Child> = set
                        .iter()
                        .map(|(_, b, _)| spawn(&bed, script, "add", b))
                        .collect();
                    let statuses: Vec<ExitStatus> = children
                        .into_iter()
                        .map(|mut c| c.wait().unwrap())
                        .collect();
                    walls[slot].push(start.elapsed());
                    m.add_cpu += children_cpu().saturating_sub(cpu_before);
                    m.adds += k as u32;
                    for ((image, backend, stand_in), status) in set.into_iter().zip(statuses) {
                        if check(&bed, script, "add", &backend, status) {
                            assert_published(&bed, &backend, script);
                            detach(&bed, &backend, &image, kind, stand_in);
                            run(&bed, script, "remove", &backend);
                        } else {
                            m.failures += 1;
                        }
                        teardown(&bed, &backend, &image);
                    }
                }
            }
            for (slot, &i) in group.iter().enumerate() {
                measured[i].concurrent.push((k, median(&mut walls[slot])));
            }
        }
        if let Some(service) = service {
            service.stop().expect("backend ran cleanly");
        }
    }
    let mut results = Vec::new();
    let mut cpu = Vec::new();
    for (script, mut m) in scripts.iter().zip(measured) {
        if m.failures > 0 {
            println!(
                "{}: {} failed adds (not in the latencies)",
                script.name, m.failures
            );
        }
        results.push((
            script.name,
            stats(&mut m.add),
            stats(&mut m.remove),
            m.concurrent,
        ));
        cpu.push(m.add_cpu / m.adds.max(1));
    }

    println!("| script | add median | add p90 | remove median | remove p90 | 1 add (wall) | 8 concurrent | 32 concurrent | 32 conc. / 1 | CPU per add |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((name, add, remove, conc), cpu) in results.iter().zip(&cpu) {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {:.1}× | {} |",
            ms(add.0),
            ms(add.1),
            ms(remove.0),
            ms(remove.1),
            ms(conc[0].1),
            ms(conc[1].1),
            ms(conc[2].1),
            conc[2].1.as_secs_f64() / conc[0].1.as_secs_f64(),
            ms(*cpu)
        );
    }
    if let Some((_, stock_add, stock_rm, stock_c)) = results.iter().find(|r| r.0 == STOCK) {
        let ratio = |stock: Duration, ours: Duration| stock.as_secs_f64() / ours.as_secs_f64();
        for (name, add, rm, conc) in results.iter().filter(|r| r.0 != STOCK) {
            println!();
            println!("stock / {name}:");
            println!(
                "- median add: {:.0}×, median remove: {:.0}×",
                ratio(stock_add.0, add.0),
                ratio(stock_rm.0, rm.0)
            );
            for (i, (k, wall)) in conc.iter().enumerate() {
                println!("- {k} concurrent adds: {:.0}×", ratio(stock_c[i].1, *wall));
            }
        }
    }
    println!(
        "\nspawning /bin/true (the floor for any script): median {}",
        ms(floor)
    );
    println!("\nconcurrency floors (median of 7 for 1, of 5 for 32; wall time from first start to last end):");
    println!("| what | 1 | 32 concurrent | 32 / 1 |");
    println!("|---|---:|---:|---:|");
    for (what, one, many) in &floors {
        println!(
            "| {what} | {} | {} | {:.1}× |",
            ms(*one),
            ms(*many),
            many.as_secs_f64() / one.as_secs_f64()
        );
    }
    println!(
        "\n({runs} sequential runs per script; concurrent: median of 7 (32: 5) repetitions; \
         CPU per add: user + system of the script processes over all concurrent adds)"
    );
}

/// What 32 concurrent adds cannot beat on this machine, each measured the
/// way the adds are (1 and 32 at once, wall time from the first start to
/// the last end): spawning a process that does nothing (`/bin/true`), the
/// script's own start-up (`block-diskseq` without a command: exec, runtime
/// init, usage error), and the kernel's part of an add alone (32 threads
/// each attaching a loop device to its own image with `LOOP_CONFIGURE`,
/// autoclear, then closing it, which detaches it).
fn concurrency_floors(
    bed: &Bed,
    ours: &std::path::Path,
) -> Vec<(&'static str, Duration, Duration)> {
    let spawn_all = |program: &std::path::Path, k: usize| {
        let start = Instant::now();
        let children: Vec<Child> = (0..k)
            .map(|_| {
                Command::new(program)
                    .env_remove("LD_LIBRARY_PATH")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut child in children {
            child.wait().unwrap();
        }
        start.elapsed()
    };
    let images: Vec<Image> = (0..32)
        .map(|i| bed.image(&format!("floor-{i}.img"), 64))
        .collect();
    let attach_all = |k: usize| {
        let files: Vec<std::fs::File> = images[..k]
            .iter()
            .map(|image| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&image.path)
                    .unwrap()
            })
            .collect();
        let start = Instant::now();
        std::thread::scope(|scope| {
            for file in &files {
                scope.spawn(move || {
                    let options = diskseq::LoopOptions {
                        autoclear: true,
                        ..diskseq::LoopOptions::default()
                    };
                    // Retried like the script does when concurrent
                    // attaches claim every free minor first.
                    loop {
                        match diskseq::LoopDevice::attach(std::os::fd::AsFd::as_fd(file), &options)
                        {
                            Ok(device) => break drop(device),
                            Err(diskseq::Error::NoFreeLoop { .. }) => {
                                std::thread::sleep(Duration::from_micros(100))
                            }
                            Err(e) => panic!("attach: {e}"),
                        }
                    }
                });
            }
        });
        start.elapsed()
    };
    let measure = |f: &dyn Fn(usize) -> Duration| {
        let mut one: Vec<Duration> = (0..7).map(|_| f(1)).collect();
        let mut many: Vec<Duration> = (0..5).map(|_| f(32)).collect();
        (median(&mut one), median(&mut many))
    };
    let true_bin = std::path::Path::new("/bin/true");
    let (t1, t32) = measure(&|k| spawn_all(true_bin, k));
    let (s1, s32) = measure(&|k| spawn_all(ours, k));
    let (a1, a32) = measure(&attach_all);
    for image in &images {
        // Autoclear detaches once the last opener is gone; wait for it.
        assert_no_loops(image);
        let _ = std::fs::remove_file(&image.path);
    }
    vec![
        ("spawn /bin/true", t1, t32),
        ("spawn block-diskseq (start-up only: no command)", s1, s32),
        (
            "loop attach + autoclear detach (threads, no process)",
            a1,
            a32,
        ),
    ]
}

/// A fresh image and backend directory, as libxl has them when it runs the
/// script: written in one transaction, then probed by the backend (libxl
/// waits for InitWait), or, without one, set to InitWait by hand (the stock
/// script requires it).
fn prepare(
    bed: &Bed,
    next_fe: &mut u32,
    kind: BackendKind,
) -> (Image, BackendPath, Option<OpenedBackend>) {
    let fe = *next_fe;
    *next_fe += 1;
    let image = bed.image(&format!("bench-{fe}.img"), 64);
    let backend = bed.libxl_add(fe, 51712, image.path_bytes(), "w");
    let stand_in = match kind {
        BackendKind::Project => {
            wait_for(
                || bed.read(&backend, node::STATE).as_deref() == Some("2"),
                "backend InitWait",
            );
            None
        }
        BackendKind::StandIn => Some(OpenedBackend::start(bed, &backend, true)),
        BackendKind::None => {
            bed.write(&backend, node::STATE, "2");
            None
        }
    };
    (image, backend, stand_in)
}

/// Detach up to running `remove`, as libxl and a departing guest do it:
/// `online` = 0, backend Closing, the frontend Closed; the backend then
/// releases the disk (ours autoclears at that moment: wait for it).
fn detach(
    bed: &Bed,
    backend: &BackendPath,
    image: &Image,
    kind: BackendKind,
    stand_in: Option<OpenedBackend>,
) {
    bed.write(backend, node::ONLINE, "0");
    bed.write(backend, node::STATE, "5");
    let frontend_state = format!(
        "/local/domain/{}/device/vbd/{}/state",
        backend.frontend_domid(),
        backend.devid()
    );
    bed.client().write(&frontend_state, "6").unwrap();
    if let Some(stand_in) = stand_in {
        stand_in.release().expect("the stand-in held the device");
    }
    let autoclear = image.loops().iter().any(|l| l.autoclear);
    if kind != BackendKind::None && autoclear {
        wait_for(
            || image.loops().is_empty(),
            "the backend to release the disk",
        );
    }
}

fn spawn(bed: &Bed, script: &Script, cmd: &str, backend: &BackendPath) -> Child {
    Command::new(&script.path)
        .arg(cmd)
        // `cargo bench` points LD_LIBRARY_PATH at the target directory; a
        // hotplug script never runs with that (the loader would search
        // every directory in it for libgcc_s and libc on each start).
        .env_remove("LD_LIBRARY_PATH")
        .env("XENSTORED_PATH", &bed.socket)
        .env("XENBUS_PATH", backend.relative())
        .env("XENBUS_TYPE", "vbd")
        .env("XENBUS_BASE_PATH", "backend")
        .env("script", &script.path)
        // Ours logs here (the stock script ignores it and writes
        // /var/log/xen/xen-hotplug.log): both pay for one log file.
        .env("BLOCK_DISKSEQ_LOG", &bed.log)
        .envs(script.env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", script.path.display()))
}

/// Whole-process latency, spawn to exit; `None` if the script failed.
fn run(bed: &Bed, script: &Script, cmd: &str, backend: &BackendPath) -> Option<Duration> {
    let start = Instant::now();
    let status = spawn(bed, script, cmd, backend).wait().unwrap();
    let elapsed = start.elapsed();
    check(bed, script, cmd, backend, status).then_some(elapsed)
}

/// Whether the script succeeded. Ours must: a failure ends the bench with
/// what it logged. The stock script may fail by its own find-then-attach
/// race (`losetup -f`, then `losetup DEV FILE`) when other processes on the
/// host attach loop devices meanwhile; that is reported and counted.
fn check(bed: &Bed, script: &Script, cmd: &str, backend: &BackendPath, status: ExitStatus) -> bool {
    if status.success() {
        return true;
    }
    if script.name == STOCK {
        eprintln!(
            "{} {cmd} {backend} failed: {:?}",
            script.name,
            bed.read(backend, node::HOTPLUG_ERROR)
        );
        return false;
    }
    let dir = format!("{}: ", backend.relative());
    let log: Vec<String> = bed
        .log_text()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(String::from)
        .collect();
    panic!(
        "{} {cmd} {backend} failed ({status}); hotplug-error {:?}; log:\n{}",
        script.name,
        bed.read(backend, node::HOTPLUG_ERROR),
        log.join("\n")
    );
}

fn assert_published(bed: &Bed, backend: &BackendPath, script: &Script) {
    assert!(
        bed.read(backend, node::PHYSICAL_DEVICE).is_some(),
        "{}: no physical-device after add",
        script.name
    );
}

/// What libxl does after `remove`: delete the directories.
fn teardown(bed: &Bed, backend: &BackendPath, image: &Image) {
    let mut client = bed.client();
    client.rm(&backend.absolute(0)).unwrap();
    let _ = client.rm(&format!("/local/domain/{}", backend.frontend_domid()));
    // A backend may close its fd a moment later (then autoclear detaches).
    assert_no_loops(image);
    let _ = std::fs::remove_file(&image.path);
}

/// CPU time (user + system) of this process's reaped children, from
/// `/proc/self/stat` (clock ticks, assumed 100 Hz: summed over hundreds of
/// adds, the tick granularity averages out).
fn children_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; cutime, cstime are 16, 17.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[13].parse::<u64>().unwrap() + fields[14].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn stats(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 9 / 10).min(v.len() - 1)])
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
