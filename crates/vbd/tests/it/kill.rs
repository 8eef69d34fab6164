//! Kill safety, tried as an adversary would: the script SIGKILLed at every
//! step of `add` and `remove` (test-only fault injection) and at random
//! instants, against a backend that checks diskseq, a stand-in for stock
//! blkback (which checks nothing) and no backend at all, with another image
//! attached onto the published minor the moment it is freed.
//!
//! The invariant: a record a backend may act on without checking diskseq
//! always names the published disk instance; a record a checking backend
//! acts on is refused if it does not. After the toolstack's normal `remove`
//! no loop device of the test's images is left.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::support::*;
use diskseq::{Access, DiskId, LoopDevice};
use testbed::race::bind_on_minor;
use testbed::require_root;
use vbd::schema::{node, BackendPath, PublishedDevice};

const SIGKILL: i32 = 9;

/// Who serves the vbd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Writes `opened` at probe and opens with the diskseq check.
    Checking,
    /// Stock blkback: its sysfs directory exists from probe, no `opened`,
    /// opens whatever the number names.
    Stock,
    /// No backend in this domain.
    NoBackend,
}

const KINDS: [Kind; 3] = [Kind::Checking, Kind::Stock, Kind::NoBackend];

/// When the script dies.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// At a fault-injection step.
    Step(&'static str),
    /// SIGKILL from outside after this long.
    After(Duration),
}

/// What the sweep counted.
#[derive(Debug, Default)]
struct Tally {
    runs: usize,
    killed: usize,
    /// Records left published by a killed run.
    published: usize,
    /// Records naming another disk that a non-checking backend would open.
    wrong: usize,
    /// Records naming another disk, refused by the checking backend.
    refused: usize,
    /// Loop devices of the test's images left after the toolstack's remove.
    leaks: usize,
}

/// The world of one backend kind: a bed, the image the toolstack asks
/// for, and the adversary's image, kept open.
struct Arena {
    bed: Bed,
    image: Image,
    adversary: Image,
    adversary_file: std::fs::File,
    kind: Kind,
    next_frontend: u32,
}

impl Arena {
    fn new(kind: Kind) -> Arena {
        let bed = Bed::new();
        let image = bed.image("guest.img", 4);
        let adversary = bed.image("adversary.img", 4);
        let adversary_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&adversary.path)
            .unwrap();
        Arena {
            bed,
            image,
            adversary,
            adversary_file,
            kind,
            next_frontend: 1,
        }
    }

    /// A fresh vbd directory, and the backend serving it (if any).
    fn vbd(&mut self) -> (BackendPath, Option<OpenedBackend>) {
        let fe = self.next_frontend;
        self.next_frontend += 1;
        let backend = self.bed.libxl_add(fe, 768, self.image.path_bytes(), "w");
        let server = match self.kind {
            Kind::Checking => Some(OpenedBackend::start(&self.bed, &backend, true)),
            Kind::Stock => {
                std::fs::create_dir_all(self.bed.blkback_dir(&backend)).unwrap();
                None
            }
            Kind::NoBackend => None,
        };
        (backend, server)
    }

    /// Runs `cmd`, killed as `kill` says; returns the run.
    fn run_killed(&self, cmd: &str, backend: &BackendPath, kill: Kill) -> Run {
        match kill {
            Kill::Step(step) => self.bed.run(cmd, backend, &[("BLOCK_DISKSEQ_FAULT", step)]),
            Kill::After(delay) => {
                let mut command = self.bed.script_command(cmd, backend, &[]);
                command
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
                let mut child = command.spawn().unwrap();
                std::thread::sleep(delay);
                let _ = child.kill();
                Run::from(child.wait_with_output().unwrap())
            }
        }
    }

    /// After a kill: attach the adversary's image on the published minor
    /// if it is free, then judge the record. Returns the adversary's device
    /// (held until the toolstack is done).
    fn attack_and_judge(&self, backend: &BackendPath, tally: &mut Tally) -> Option<LoopDevice> {
        let record = record_opt(&self.bed, backend)?;
        tally.published += 1;
        let adversary = bind_on_minor(
            record.physical_device.minor,
            self.adversary_file.as_fd(),
            Duration::ZERO,
        )
        .ok();
        if !names_published_instance(&record) {
            let id = DiskId::new(record.physical_device, record.diskseq.expect("diskseq"));
            let refused = diskseq::open_verified(id, Access::ReadOnly).is_err();
            if self.kind == Kind::Checking && refused {
                tally.refused += 1;
            } else {
                tally.wrong += 1;
                eprintln!("WRONG record after a kill ({:?}): {record:?}", self.kind);
            }
        }
        adversary
    }

    /// The toolstack's part after a failed or killed run: the backend
    /// closes, `remove` runs, the directory goes. Then counts leaks.
    fn clean_up(
        &self,
        backend: &BackendPath,
        server: Option<OpenedBackend>,
        adversary: Option<LoopDevice>,
        tally: &mut Tally,
    ) {
        drop(server);
        drop(adversary);
        let run = self.bed.run("remove", backend, &[]);
        run.assert_ok();
        assert_eq!(record_opt(&self.bed, backend), None, "remove withdrew it");
        self.bed.client().rm(&backend.dir()).unwrap();
        if !settled_without_loops(&self.image) {
            tally.leaks += 1;
            eprintln!(
                "LEAK ({:?}): {:?}\n{}",
                self.kind,
                self.image.loops(),
                run.log
            );
            for info in self.image.loops() {
                let _ = diskseq::detach_verified(&info.id, None);
            }
        }
        assert!(settled_without_loops(&self.adversary));
    }

    /// One killed `add`, judged and cleaned up.
    fn killed_add(&mut self, kill: Kill, tally: &mut Tally) -> Run {
        let (backend, server) = self.vbd();
        let run = self.run_killed("add", &backend, kill);
        tally.runs += 1;
        if run.signal == Some(SIGKILL) {
            tally.killed += 1;
        }
        let adversary = self.attack_and_judge(&backend, tally);
        self.clean_up(&backend, server, adversary, tally);
        run
    }

    /// A completed `add`, then one killed `remove`, judged and cleaned up
    /// (the toolstack's next `remove` finishes the job).
    fn killed_remove(&mut self, kill: Kill, tally: &mut Tally) -> Run {
        let (backend, server) = self.vbd();
        self.bed.run("add", &backend, &[]).assert_ok();
        // The backend has closed the device by the time libxl runs remove.
        drop(server);
        let run = self.run_killed("remove", &backend, kill);
        tally.runs += 1;
        if run.signal == Some(SIGKILL) {
            tally.killed += 1;
        }
        let adversary = self.attack_and_judge(&backend, tally);
        self.clean_up(&backend, None, adversary, tally);
        run
    }

    /// How long one whole `add` takes here (spawn to exit), for the random
    /// kills' range.
    fn add_duration(&mut self) -> Duration {
        let (backend, server) = self.vbd();
        let start = Instant::now();
        self.bed.run("add", &backend, &[]).assert_ok();
        let took = start.elapsed();
        let mut tally = Tally::default();
        self.clean_up(&backend, server, None, &mut tally);
        assert_eq!(tally.leaks, 0);
        took
    }
}

/// Whether the record's number names the published instance now: same
/// diskseq, and for a loop device still bound to the recorded inode.
fn names_published_instance(record: &PublishedDevice) -> bool {
    let Some(seq) = record.diskseq else {
        return false;
    };
    let id = DiskId::new(record.physical_device, seq);
    let Ok(device) = diskseq::open_verified(id, Access::ReadOnly) else {
        return false;
    };
    match record.backing {
        None => true,
        Some(backing) => {
            matches!(diskseq::loop_info(&device), Ok(Some(info)) if info.backing == backing)
        }
    }
}

/// Waits (bounded) for autoclear to finish; true if nothing is bound to
/// `image`.
fn settled_without_loops(image: &Image) -> bool {
    for _ in 0..200 {
        if image.loops().is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// A small deterministic generator for the random delays (seed printed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound.max(1)
    }
}

/// `add`'s fault steps: every step but `remove`'s.
fn add_steps() -> impl Iterator<Item = &'static str> {
    vbd::hotplug::fault::STEPS
        .iter()
        .copied()
        .filter(|step| *step != "after-withdraw")
}

#[test]
fn kill_sweep_every_step_every_backend() {
    if !require_root("kill_sweep_every_step_every_backend") {
        return;
    }
    let mut tally = Tally::default();
    for kind in KINDS {
        let mut arena = Arena::new(kind);
        for step in add_steps() {
            let run = arena.killed_add(Kill::Step(step), &mut tally);
            // Only a checking backend makes the script wait.
            if step != "in-wait" || kind == Kind::Checking {
                assert_eq!(run.signal, Some(SIGKILL), "{kind:?} {step}: {run:?}");
            } else {
                run.assert_ok();
            }
        }
        let run = arena.killed_remove(Kill::Step("after-withdraw"), &mut tally);
        assert_eq!(run.signal, Some(SIGKILL), "{kind:?} remove: {run:?}");
    }
    eprintln!("kill sweep, fixed steps: {tally:?}");
    assert_eq!(tally.wrong, 0, "{tally:?}");
    assert_eq!(tally.leaks, 0, "{tally:?}");
    assert_eq!(tally.killed, tally.runs - 2, "{tally:?}");
}

#[test]
fn kill_sweep_random_instants() {
    if !require_root("kill_sweep_random_instants") {
        return;
    }
    const ADDS_PER_KIND: usize = 60;
    const REMOVES_PER_KIND: usize = 20;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill sweep seed {seed}");
    let mut rng = Lcg(seed);
    let mut tally = Tally::default();
    for kind in KINDS {
        let mut arena = Arena::new(kind);
        // Kill anywhere from the start to a little past a whole run.
        let span = arena.add_duration().as_micros() as u64 * 6 / 5;
        for _ in 0..ADDS_PER_KIND {
            let delay = Duration::from_micros(rng.below(span));
            arena.killed_add(Kill::After(delay), &mut tally);
        }
        for _ in 0..REMOVES_PER_KIND {
            let delay = Duration::from_micros(rng.below(span));
            arena.killed_remove(Kill::After(delay), &mut tally);
        }
    }
    eprintln!("kill sweep, random instants: {tally:?}");
    assert_eq!(tally.wrong, 0, "{tally:?}");
    assert_eq!(tally.leaks, 0, "{tally:?}");
    assert!(tally.killed > 0, "no run was killed: {tally:?}");
}

#[test]
fn without_a_fault_the_same_setup_completes() {
    if !require_root("without_a_fault_the_same_setup_completes") {
        return;
    }
    // The control for the sweep: no fault, same bed, exits normally (by
    // timeout here, since nobody confirms), so SIGKILL there came from the
    // injection point.
    let bed = Bed::new();
    let image = bed.image("control.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    bed.write(&backend, node::OPENED, "0");
    let run = bed.run("add", &backend, &[("BLOCK_DISKSEQ_TIMEOUT", "0.1")]);
    assert_eq!((run.code, run.signal), (Some(1), None), "{run:?}");
    assert_no_loops(&image);
}

/// A persistent device whose `add` was killed before it published: no
/// record names it, but it carries its backend's label, and the
/// toolstack's `remove` finds and detaches it.
#[test]
fn remove_detaches_the_labelled_device_of_an_add_killed_before_publishing() {
    if !require_root("remove_detaches_the_labelled_device_of_an_add_killed_before_publishing") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("unpublished.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    let run = bed.run(
        "add",
        &backend,
        &[("BLOCK_DISKSEQ_FAULT", "before-publish")],
    );
    assert_eq!(run.signal, Some(SIGKILL), "{run:?}");
    assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
    let left = image.loops();
    assert_eq!(left.len(), 1, "the persistent device outlives the kill");
    assert_eq!(left[0].label, Some(backend.loop_label()));
    let run = bed.run("remove", &backend, &[]);
    run.assert_ok();
    assert!(run.log.contains("left by an add"), "{}", run.log);
    assert_no_loops(&image);
}

/// `remove` identifies the device by what `add` recorded from its fds, not
/// by `params`: a symlink retargeted after `add` (here, continuously by
/// another thread) neither leaks the device nor touches the other image.
#[test]
fn remove_ignores_a_retargeted_params_symlink() {
    if !require_root("remove_ignores_a_retargeted_params_symlink") {
        return;
    }
    let bed = Bed::new();
    let a = bed.image("a.img", 4);
    let b = bed.image("b.img", 4);
    let link = bed.dir.path().join("disk");
    let swap = bed.dir.path().join("disk.new");
    std::os::unix::fs::symlink(&a.path, &link).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (a, b, link, swap, stop) = (
            a.path.clone(),
            b.path.clone(),
            link.clone(),
            swap.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let target = if flips % 2 == 0 { &b } else { &a };
                let _ = std::fs::remove_file(&swap);
                std::os::unix::fs::symlink(target, &swap).unwrap();
                std::fs::rename(&swap, &link).unwrap();
                flips += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            flips
        })
    };
    let link_bytes = link.as_os_str().as_encoded_bytes().to_vec();
    for fe in 1..=30 {
        let backend = bed.libxl_add(fe, 768, &link_bytes, "w");
        bed.run("add", &backend, &[]).assert_ok();
        let run = bed.run("remove", &backend, &[]);
        run.assert_ok();
        assert!(run.log.contains("remove: detached"), "{}", run.log);
        assert!(a.loops().is_empty() && b.loops().is_empty(), "cycle {fe}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(flipper.join().unwrap() > 0);
}

/// Detach + re-attach another file on the same minor behind the script's
/// back: the recorded instance is gone. `remove` withdraws the record,
/// leaves the intruder alone and says so.
#[test]
fn remove_leaves_a_device_swapped_behind_its_back_alone() {
    if !require_root("remove_leaves_a_device_swapped_behind_its_back_alone") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("mine.img", 4);
    let intruder = bed.image("intruder.img", 4);
    let intruder_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&intruder.path)
        .unwrap();
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    // Other tests attach loop devices concurrently and may take the minor
    // between our detach and re-attach; retry the scenario until it happens.
    let mut swapped = None;
    for _ in 0..50 {
        bed.run("add", &backend, &[]).assert_ok();
        let ours = image.loops().pop().expect("the add's loop device");
        diskseq::detach_verified(&ours.id, Some(image.id)).unwrap();
        match bind_on_minor(ours.id.minor, intruder_file.as_fd(), Duration::ZERO) {
            Ok(device) => {
                swapped = Some((ours, device));
                break;
            }
            Err(_) => {
                bed.run("remove", &backend, &[]).assert_ok();
            }
        }
    }
    let (ours, device) = swapped.expect("could not re-attach the minor in 50 tries");
    let run = bed.run("remove", &backend, &[]);
    run.assert_ok();
    assert_device_gone(&run.log);
    assert_eq!(device.id().dev(), ours.id.dev());
    assert_eq!(
        device.block_device().current_seq().unwrap(),
        device.id().seq,
        "intruder untouched"
    );
    assert_eq!(intruder.loops().len(), 1);
    assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
    drop(device);
    assert_no_loops(&intruder);
    assert_no_loops(&image);
}

/// A device handed off with autoclear detaches itself when the backend
/// closes it, and anyone may attach another file under its number before
/// `remove` runs: that is the normal end of the device, not a swap.
#[test]
fn remove_after_autoclear_succeeds_even_if_the_number_was_reused() {
    if !require_root("remove_after_autoclear_succeeds_even_if_the_number_was_reused") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("handed-off.img", 4);
    let other = bed.image("next-user.img", 4);
    let other_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&other.path)
        .unwrap();
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    let mut reused = None;
    for _ in 0..50 {
        let blkback = OpenedBackend::start(&bed, &backend, true);
        bed.run("add", &backend, &[]).assert_ok();
        let id = blkback.release().expect("backend held the device");
        assert_no_loops(&image);
        match bind_on_minor(id.minor, other_file.as_fd(), Duration::ZERO) {
            Ok(device) => {
                reused = Some(device);
                break;
            }
            // Another test took the minor first; try again.
            Err(_) => bed.run("remove", &backend, &[]).assert_ok(),
        }
    }
    let device = reused.expect("could not reuse the minor in 50 tries");
    let run = bed.run("remove", &backend, &[]);
    run.assert_ok();
    assert_device_gone(&run.log);
    assert_eq!(
        device.block_device().current_seq().unwrap(),
        device.id().seq,
        "the next user's disk is untouched"
    );
    assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
    drop(device);
    assert_no_loops(&other);
}
