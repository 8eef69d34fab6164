//! `diskseq demo`: the whole system on a host without Xen, and the race the
//! diskseq check exists for, reproduced on cue.
//!
//! Everything is real except the hypervisor: our xenstored on a private
//! socket (with a domain socket per guest), the backend model on a thread
//! with its blkback protocol and diskseq check, a frontend model per guest,
//! the toolstack writing libxl's directories and running the real
//! `block-diskseq` script as a child process, and real loop devices.
//!
//! The race is driven deterministically through the backend's
//! [`BeforeOpen`] hook: it runs on the backend
//! thread after the `physical-device` record was read and before the device
//! is opened — exactly the window in which, on a real host, a loop device
//! can be detached and another file bound under the same number. The record
//! for the race is published the way Xen's stock `block` script leaves it
//! (nothing holds the device afterwards); `block-diskseq` itself holds its
//! fd until the backend's `opened` = 1, which pins the binding, so against
//! it the window cannot even open.
//!
//! This module does the work and returns a [`DemoReport`]; it narrates
//! through a callback so the command line can print as it goes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diskseq::{DiskId, FileId, LoopDevice, LoopOptions};
use xenstore::client::Client;
use xenstored::{Config, Daemon, DaemonHandle};

use crate::backend::{Backend, BackendConfig, BackendHandle, BeforeOpen, DiskseqPolicy, Fatal};
use crate::frontend::{Frontend, FrontendHandle};
use crate::schema::{node, BackendPath, Mode, PublishedDevice, XenbusState};
use crate::toolstack::{self, DeviceType, DiskSpec, Toolstack, Vdev};

/// The guest that gets image A.
const GUEST_A: u32 = 1;
/// The guest whose disk is raced.
const GUEST_RACE: u32 = 2;
/// The backend domain running the legacy model (a driver domain).
const LEGACY_BACKEND: u32 = 10;
const IMAGE_SIZE: u64 = 4 << 20;
const MARKER_A: &str = "image A: the disk the toolstack asked for";
const MARKER_B: &str = "image B: another tenant's data";
const WAIT: Duration = Duration::from_secs(10);
const STEPS: usize = 6;

/// What the demo narrates as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Narration {
    /// A numbered step begins.
    Step {
        /// 1-based.
        number: usize,
        /// Of how many.
        of: usize,
        /// What it does.
        title: String,
    },
    /// A line of detail within the current step.
    Detail(String),
}

/// A disk instance as the demo shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    /// `maj:min`, decimal.
    pub dev: String,
    /// The sequence number, decimal.
    pub diskseq: u64,
    /// `/dev/loopN`.
    pub path: String,
}

impl Instance {
    fn of(id: DiskId, path: &Path) -> Self {
        Instance {
            dev: id.dev().to_string(),
            diskseq: id.seq.get(),
            path: path.display().to_string(),
        }
    }
}

/// Step 3: the attached disk and the proof the backend holds it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachProof {
    /// The toolstack's report.
    pub attach: toolstack::AttachReport,
    /// The instance the backend holds open.
    pub held: Instance,
    /// The file that instance is bound to.
    pub backing_file: Option<String>,
    /// Its backing file is image A (by inode, not by name).
    pub backing_is_image_a: bool,
    /// What reading through the backend's fd gives.
    pub first_bytes: String,
    /// The guest's size in 512-byte sectors.
    pub guest_sectors: u64,
}

/// Steps 4 and 5: one run of the race.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RaceOutcome {
    /// Which backend faced it.
    pub backend: String,
    /// The backend directory.
    pub backend_path: String,
    /// The instance published (bound to image A).
    pub published: Instance,
    /// What was under that number when the backend opened it (image B).
    pub swapped_in: Instance,
    /// The backend's state afterwards.
    pub backend_state: u32,
    /// The states the backend wrote for the device, in order.
    pub states_seen: Vec<u32>,
    /// The error node, if the backend refused.
    pub error_node: Option<String>,
    /// The backend connected the guest.
    pub connected: bool,
    /// First bytes read through the backend's fd, if it holds a disk.
    pub served: Option<String>,
}

/// The demo's machine-readable summary (`--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// Every expectation held.
    pub ok: bool,
    /// The private xenstored socket.
    pub xenstored: String,
    /// The hotplug script used.
    pub script: String,
    /// Step 3.
    pub attach: AttachProof,
    /// Step 4: our backend with the diskseq check.
    pub race_checked: RaceOutcome,
    /// Step 5: the legacy backend without it.
    pub race_legacy: RaceOutcome,
    /// Step 6: loop devices still bound to the demo's images (must be none).
    pub loops_left: Vec<String>,
    /// Loop devices on the host after the demo, all owners.
    pub loops_on_host: usize,
    /// What the hotplug script logged (its stdout and stderr).
    pub hotplug_log: Vec<String>,
    /// What the backends logged.
    pub backend_log: Vec<String>,
}

/// Why the demo could not complete.
#[derive(Debug, thiserror::Error)]
#[error("demo step {step}: {message}")]
pub struct DemoError {
    /// The step that failed.
    pub step: &'static str,
    /// What went wrong.
    pub message: String,
}

fn fail(step: &'static str) -> impl Fn(&dyn std::fmt::Display) -> DemoError {
    move |e| DemoError {
        step,
        message: e.to_string(),
    }
}

/// Options for [`run`].
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// The hotplug script; default `block-diskseq` next to this executable.
    pub script: Option<PathBuf>,
}

/// The race's moving parts, shared with the backend's hook.
#[derive(Default)]
struct RaceSlot {
    /// The device to race, and the loop device published for it.
    armed: Option<(BackendPath, LoopDevice, PathBuf)>,
    /// After the hook: the published id and the replacement binding.
    swapped: Option<Result<(DiskId, LoopDevice), String>>,
}

/// The hook: in the open window of the armed device, detach its loop
/// device and bind the replacement image on the same minor. If that fails
/// (another process took the minor meanwhile), the open is refused, so a
/// backend never opens a device that is not the demo's.
fn race_hook(slot: Arc<Mutex<RaceSlot>>) -> BeforeOpen {
    Arc::new(move |path, _request| {
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        let armed_here = slot.armed.as_ref().is_some_and(|(p, _, _)| p == path);
        if !armed_here {
            return Ok(());
        }
        let Some((_, victim, replacement)) = slot.armed.take() else {
            return Ok(());
        };
        let published = victim.id();
        let swapped = rebind_same_minor(victim, &replacement);
        let verdict = match &swapped {
            Ok(_) => Ok(()),
            Err(e) => Err(Fatal::new(rustix::io::Errno::BUSY, format!("demo: {e}"))),
        };
        slot.swapped = Some(swapped.map(|rebound| (published, rebound)));
        verdict
    })
}

/// Detaches `victim` (its fd is the last one: autoclear detaches it at the
/// close) and binds `image` on the same minor, with autoclear.
///
/// The minor cannot be held across the swap: `LOOP_CLR_FD` only marks the
/// device and the detach happens at the last close, after which any process
/// may claim the free minor. So the bind retries for a while (someone who
/// took the minor usually gives it back soon) and fails otherwise.
pub fn rebind_same_minor(victim: LoopDevice, image: &Path) -> Result<LoopDevice, String> {
    let minor = victim.id().minor;
    drop(victim);
    let file = open_rw(image)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match LoopDevice::attach_at(minor, file.as_fd(), &autoclear()) {
            Ok(dev) => return Ok(dev),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => {
                return Err(format!(
                    "binding {} to /dev/loop{minor}: {e}",
                    image.display()
                ))
            }
        }
    }
}

/// Binds `file` to a free loop device. Every free minor can be briefly
/// claimed by other processes attaching at the same moment (the claim is
/// an O_EXCL open that GET_FREE does not see): retry for a while.
fn attach_free(file: &File) -> Result<LoopDevice, diskseq::Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match LoopDevice::attach(file.as_fd(), &autoclear()) {
            Err(diskseq::Error::NoFreeLoop { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            result => return result,
        }
    }
}

fn autoclear() -> LoopOptions {
    LoopOptions {
        autoclear: true,
        ..LoopOptions::default()
    }
}

fn open_rw(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Everything the demo started; dropped in reverse order.
struct Stage {
    frontends: Vec<FrontendHandle>,
    daemon: Option<DaemonHandle>,
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.frontends.clear();
        if let Some(daemon) = self.daemon.take() {
            daemon.stop();
        }
    }
}

/// Runs the demo. See the module docs.
pub fn run(
    options: &DemoOptions,
    narrate: &mut dyn FnMut(Narration),
) -> Result<DemoReport, DemoError> {
    let mut step_no = 0;
    let mut step = |narrate: &mut dyn FnMut(Narration), title: String| {
        step_no += 1;
        narrate(Narration::Step {
            number: step_no,
            of: STEPS,
            title,
        });
    };
    let detail =
        |narrate: &mut dyn FnMut(Narration), text: String| narrate(Narration::Detail(text));

    // 1. The stage.
    let script = match &options.script {
        Some(script) => script.clone(),
        None => toolstack::script::default_script().map_err(|e| fail("setup")(&e))?,
    };
    if !script.exists() {
        return Err(fail("setup")(&format!(
            "hotplug script {} not found (build the workspace: cargo build)",
            script.display()
        )));
    }
    let dir = tempfile::Builder::new()
        .prefix("diskseq-demo-")
        .tempdir()
        .map_err(|e| fail("setup")(&e))?;
    let socket = dir.path().join("xenstored.sock");
    let config = Config::new(&socket)
        .domain_socket(GUEST_A, dir.path().join(format!("dom{GUEST_A}.sock")))
        .domain_socket(GUEST_RACE, dir.path().join(format!("dom{GUEST_RACE}.sock")));
    let guest_sockets = config.domain_sockets.clone();
    let mut stage = Stage {
        frontends: Vec::new(),
        daemon: Some(Daemon::start(config).map_err(|e| fail("setup")(&e))?),
    };
    let connect = |path: &Path| Client::connect_socket(path).map_err(|e| fail("setup")(&e));
    let slot: Arc<Mutex<RaceSlot>> = Arc::default();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let backend_config = |domid: u32, policy: DiskseqPolicy| {
        let mut config = BackendConfig::new(domid);
        config.policy = policy;
        config.before_open = Some(race_hook(Arc::clone(&slot)));
        let log = Arc::clone(&log);
        config.logger = Arc::new(move |line| {
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.to_owned())
        });
        config
    };
    let checked = Backend::new(connect(&socket)?, backend_config(0, DiskseqPolicy::Verify))
        .spawn()
        .map_err(|e| fail("setup")(&e))?;
    let legacy = Backend::new(
        connect(&socket)?,
        backend_config(LEGACY_BACKEND, DiskseqPolicy::Ignore),
    )
    .spawn()
    .map_err(|e| fail("setup")(&e))?;
    for (domid, guest_socket) in &guest_sockets {
        let frontend = Frontend::new(connect(guest_socket)?, *domid)
            .spawn()
            .map_err(|e| fail("setup")(&e))?;
        stage.frontends.push(frontend);
    }
    step(
        narrate,
        "start xenstored, the backends and two guests' frontends (no Xen needed)".into(),
    );
    detail(narrate, format!("xenstored (ours) on {}", socket.display()));
    detail(
        narrate,
        "backend in dom0: blkback's xenstore protocol with the diskseq check".into(),
    );
    detail(
        narrate,
        format!("backend in domain {LEGACY_BACKEND}: the same without the check (stock blkback), for comparison"),
    );
    detail(
        narrate,
        format!(
            "frontend models for guests {GUEST_A} and {GUEST_RACE}, each on its own domain socket"
        ),
    );

    // 2. Two images.
    let image_a = write_image(dir.path(), "A.img", MARKER_A).map_err(|e| fail("images")(&e))?;
    let image_b = write_image(dir.path(), "B.img", MARKER_B).map_err(|e| fail("images")(&e))?;
    let id_a = file_id(&image_a).map_err(|e| fail("images")(&e))?;
    let id_b = file_id(&image_b).map_err(|e| fail("images")(&e))?;
    step(
        narrate,
        "create two small disk images with different contents".into(),
    );
    detail(narrate, format!("{}: \"{MARKER_A}\"", image_a.display()));
    detail(narrate, format!("{}: \"{MARKER_B}\"", image_b.display()));

    // 3. Attach A, prove the backend holds A.
    let mut tools = Toolstack::new(Some(socket.clone()));
    let hotplug_log = dir.path().join("hotplug.log");
    tools.script_log = Some(hotplug_log.clone());
    // block-diskseq logs to Xen's hotplug log when /var/log/xen exists; the
    // demo leaves no trace on the host, so its log goes to the temp dir.
    tools.script_env.push((
        "BLOCK_DISKSEQ_LOG".into(),
        hotplug_log.display().to_string(),
    ));
    let xvda: Vdev = "xvda".parse().map_err(|e| fail("attach")(&e))?;
    step(
        narrate,
        format!(
            "attach A.img to guest {GUEST_A} as xvda (toolstack + {} as a child process)",
            script.display()
        ),
    );
    let spec = DiskSpec {
        frontend_domid: GUEST_A,
        backend_domid: 0,
        vdev: xvda.clone(),
        target: image_a.clone(),
        mode: Mode::ReadWrite,
        device_type: DeviceType::Disk,
        script: script.clone(),
        discard_enable: true,
    };
    let attach = tools.attach(&spec).map_err(|e| fail("attach")(&e))?;
    // A script that exits 0 without publishing both nodes is not a diskseq
    // hotplug script (e.g. --script /bin/true): nothing below can work.
    let (Some(dev_node), Some(seq_node)) = (&attach.physical_device_node, &attach.diskseq_node)
    else {
        return Err(fail("attach")(&format!(
            "{} exited 0 but published no {} in {}: it is not a hotplug script that \
             publishes a device and its diskseq (use block-diskseq)",
            script.display(),
            match (&attach.physical_device_node, &attach.diskseq_node) {
                (None, None) => "physical-device and no diskseq",
                (None, Some(_)) => "physical-device",
                _ => "diskseq",
            },
            attach.backend
        )));
    };
    detail(
        narrate,
        format!(
            "the script published physical-device {} and diskseq {} in one transaction; exit status 0",
            dev_both(dev_node),
            seq_both(seq_node)
        ),
    );
    let guest_a = &stage.frontends[0];
    let view = guest_a
        .wait_state(xvda.devid, XenbusState::Connected, WAIT)
        .map_err(|e| fail("attach")(&e))?;
    let guest_sectors = view.disk.map_or(0, |d| d.sectors);
    let path_a = BackendPath::new_absolute(0, GUEST_A, xvda.devid);
    let (held, backing, backing_id, first) = checked
        .with_held_disk(&path_a, |disk| {
            let info = diskseq::loop_info(disk).ok().flatten();
            (
                Instance::of(disk.id(), disk.path()),
                info.as_ref().and_then(|i| i.backing_file.clone()),
                info.map(|i| i.backing),
                read_marker(disk),
            )
        })
        .ok_or_else(|| fail("attach")(&"the backend holds no disk for xvda"))?;
    let attach_proof = AttachProof {
        attach,
        held: held.clone(),
        backing_file: backing.map(|p| p.display().to_string()),
        backing_is_image_a: backing_id == Some(id_a),
        first_bytes: first.clone(),
        guest_sectors,
    };
    detail(
        narrate,
        format!("backend: Connected; guest {GUEST_A} sees {guest_sectors} sectors, read-write"),
    );
    detail(
        narrate,
        format!(
            "backend holds {} = {} diskseq {}, bound to {} — reading through its fd: \"{first}\"",
            held.path,
            held.dev,
            held.diskseq,
            attach_proof.backing_file.as_deref().unwrap_or("?")
        ),
    );

    // 4. The race against the diskseq backend.
    step(
        narrate,
        "the race, against the backend with the diskseq check".into(),
    );
    detail(
        narrate,
        format!(
            "guest {GUEST_RACE} asks for A.img as xvda; the record is published as Xen's stock"
        ),
    );
    detail(
        narrate,
        "`block` script leaves it: a loop device that nothing holds afterwards.".into(),
    );
    detail(
        narrate,
        "A pause point in the backend, between reading the record and opening the device,".into(),
    );
    detail(
        narrate,
        "detaches that loop device and binds B.img on the same minor.".into(),
    );
    let rig = RaceRig {
        tools: &tools,
        script: &script,
        slot: &slot,
        log: &log,
        image_a: &image_a,
        image_b: &image_b,
    };
    let race_checked = run_race(&rig, &checked, 0, "diskseq backend (dom0)", narrate)?;
    match &race_checked.error_node {
        Some(error) => {
            detail(narrate, format!("REFUSED, error node: \"{error}\""));
            detail(
                narrate,
                format!(
                    "states the backend wrote: {} (Closed once the guest closed); it holds nothing",
                    race_checked
                        .states_seen
                        .iter()
                        .map(|&s| format!("{} {s}", state_name(s)))
                        .collect::<Vec<_>>()
                        .join(" -> ")
                ),
            );
        }
        None => detail(
            narrate,
            "NOT refused: the check failed to catch the swap".into(),
        ),
    }

    // 5. The same race against the legacy backend.
    step(
        narrate,
        format!(
            "the same race, against a backend without the check (backend domain {LEGACY_BACKEND})"
        ),
    );
    let race_legacy = run_race(
        &rig,
        &legacy,
        LEGACY_BACKEND,
        "legacy backend (no diskseq check)",
        narrate,
    )?;
    match &race_legacy.served {
        Some(bytes) if race_legacy.connected => detail(
            narrate,
            format!("connected guest {GUEST_RACE}'s xvdb to {} — reading it gives \"{bytes}\": the wrong disk", race_legacy.swapped_in.dev),
        ),
        _ => detail(narrate, "the legacy backend did not serve the swapped disk".into()),
    }

    // 6. Detach everything.
    step(
        narrate,
        "detach everything (libxl's removal: online=0, Closing, wait Closed, script remove, rm)"
            .into(),
    );
    for (fe, vdev, be) in [
        (GUEST_A, "xvda", 0),
        (GUEST_RACE, "xvda", 0),
        (GUEST_RACE, "xvdb", LEGACY_BACKEND),
    ] {
        let vdev: Vdev = vdev.parse().map_err(|e| fail("detach")(&e))?;
        let report = tools
            .detach(fe, &vdev, be)
            .map_err(|e| fail("detach")(&e))?;
        detail(
            narrate,
            format!(
                "guest {fe} {vdev}: {}{}",
                if report.closed {
                    "Closed"
                } else {
                    "forced (no Closed in time)"
                },
                report
                    .script
                    .as_ref()
                    .map(|s| format!(", script remove: {}", s.describe()))
                    .unwrap_or_default()
            ),
        );
    }
    // The demo's own binding of B (the legacy backend's disk) goes too.
    slot.lock().unwrap_or_else(|e| e.into_inner()).swapped = None;
    let _ = checked.stop();
    let _ = legacy.stop();
    drop(stage);
    let loops_left = wait_unbound(&[id_a, id_b]);
    let loops_on_host = diskseq::list_loops().map(|l| l.len()).unwrap_or(0);
    if loops_left.is_empty() {
        detail(narrate, "loop devices bound to A.img or B.img: none".into());
    } else {
        detail(narrate, format!("STILL BOUND: {}", loops_left.join(", ")));
    }
    detail(
        narrate,
        match loops_on_host {
            0 => "losetup -a equivalent: (empty)".to_owned(),
            n => format!("losetup -a equivalent: {n} device(s), none of them the demo's"),
        },
    );
    let ok = attach_proof.backing_is_image_a
        && attach_proof.first_bytes == MARKER_A
        && race_checked
            .error_node
            .as_deref()
            .is_some_and(|e| e.starts_with("19 "))
        && !race_checked.connected
        && race_legacy.connected
        && race_legacy.served.as_deref() == Some(MARKER_B)
        && loops_left.is_empty();
    let hotplug_log = std::fs::read_to_string(&hotplug_log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let backend_log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(DemoReport {
        ok,
        hotplug_log,
        backend_log,
        xenstored: socket.display().to_string(),
        script: script.display().to_string(),
        attach: attach_proof,
        race_checked,
        race_legacy,
        loops_left,
        loops_on_host,
    })
}

/// What every run of the race shares.
struct RaceRig<'a> {
    tools: &'a Toolstack,
    script: &'a Path,
    slot: &'a Arc<Mutex<RaceSlot>>,
    /// The backends' log lines (their record of each state they wrote).
    log: &'a Arc<Mutex<Vec<String>>>,
    image_a: &'a Path,
    image_b: &'a Path,
}

/// One run of the race against `backend` (backend domain `backend_domid`):
/// guest 2's next disk, image A published, image B swapped in.
fn run_race(
    rig: &RaceRig<'_>,
    backend: &BackendHandle,
    backend_domid: u32,
    label: &str,
    narrate: &mut dyn FnMut(Narration),
) -> Result<RaceOutcome, DemoError> {
    let RaceRig {
        tools,
        script,
        slot,
        log,
        image_a,
        image_b,
    } = *rig;
    let step = "race";
    let vdev: Vdev = if backend_domid == 0 { "xvda" } else { "xvdb" }
        .parse()
        .map_err(|e| fail(step)(&e))?;
    let spec = DiskSpec {
        frontend_domid: GUEST_RACE,
        backend_domid,
        vdev: vdev.clone(),
        target: image_a.to_owned(),
        mode: Mode::ReadOnly,
        device_type: DeviceType::Disk,
        script: script.to_owned(),
        discard_enable: true,
    };
    let mut client = tools.connect().map_err(|e| fail(step)(&e))?;
    let layout = tools
        .create(&mut client, &spec)
        .map_err(|e| fail(step)(&e))?;
    let path = layout.backend.clone();
    toolstack::wait_state(&mut client, &path.dir(), XenbusState::InitWait, WAIT)
        .map_err(|e| fail(step)(&e))?;

    // The script's part, as the stock script leaves it.
    let file = open_rw(image_a).map_err(|e| fail(step)(&e))?;
    let victim = attach_free(&file).map_err(|e| fail(step)(&e))?;
    let published_id = victim.id();
    let published = Instance::of(published_id, victim.path());
    let record = PublishedDevice {
        physical_device: published_id.dev(),
        physical_device_path: victim.path().to_owned(),
        diskseq: Some(published_id.seq),
        node: None,
        backing: None,
    };
    {
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.swapped = None;
        slot.armed = Some((path.clone(), victim, image_b.to_owned()));
    }
    narrate(Narration::Detail(format!(
        "published physical-device {}, diskseq {}: {}, bound to A.img",
        dev_both(&published_id.dev().to_xenstore()),
        seq_both(&published_id.seq.to_xenstore()),
        published.path
    )));
    let nodes = record.to_nodes();
    let dir = path.dir();
    client
        .transaction(|tx| {
            let items: Vec<(String, &[u8])> = nodes
                .iter()
                .map(|(name, value)| (format!("{dir}/{name}"), value.as_slice()))
                .collect();
            let refs: Vec<(&str, &[u8])> = items.iter().map(|(p, v)| (p.as_str(), *v)).collect();
            tx.write_many(&refs)
        })
        .map_err(|e| fail(step)(&e))?;

    // Wait for the backend's verdict: Connected, or Closed (a refusing
    // backend goes Closing and the guest's Closed follows at once).
    let state_node = path.node(node::STATE);
    let deadline = Instant::now() + WAIT;
    let state = loop {
        let state = client
            .read_opt(&state_node)
            .map_err(|e| fail(step)(&e))?
            .and_then(|raw| XenbusState::from_node(&raw).ok());
        match state {
            Some(s @ (XenbusState::Connected | XenbusState::Closed)) => break s,
            Some(XenbusState::Closing)
                if Instant::now() + Duration::from_millis(500) > deadline =>
            {
                break XenbusState::Closing
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(fail(step)(&format!(
                "{label}: no verdict within {WAIT:?} (state {state:?})"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // The states the backend wrote for this device, from its own log.
    let prefix = format!("{}: state ", path.dir());
    let states: Vec<u32> = log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|line| line.strip_prefix(&prefix)?.split(' ').next()?.parse().ok())
        .collect();
    let swapped = slot
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .swapped
        .as_ref()
        .map(|r| {
            r.as_ref()
                .map(|(_, dev)| Instance::of(dev.id(), dev.path()))
                .map_err(Clone::clone)
        });
    let swapped_in = match swapped {
        Some(Ok(instance)) => instance,
        Some(Err(e)) => return Err(fail(step)(&e)),
        None => {
            return Err(fail(step)(
                &"the backend opened without passing the pause point",
            ))
        }
    };
    narrate(Narration::Detail(format!(
        "in the window: {} detached, B.img bound on the same minor: {} diskseq {}",
        published.path, swapped_in.dev, swapped_in.diskseq
    )));
    let error_node = client
        .read_opt(&path.error_node(backend_domid))
        .map_err(|e| fail(step)(&e))?
        .map(|raw| String::from_utf8_lossy(&raw).into_owned());
    let served = backend.with_held_disk(&path, read_marker);
    Ok(RaceOutcome {
        backend: label.to_owned(),
        backend_path: path.dir(),
        published,
        swapped_in,
        backend_state: state.as_u32(),
        states_seen: states,
        error_node,
        connected: state == XenbusState::Connected,
        served,
    })
}

/// `8d2 (= 2258)`: the xenstore form, and the decimal the kernel and the
/// error messages use.
fn seq_both(hex: &str) -> String {
    match u64::from_str_radix(hex, 16) {
        Ok(n) => format!("{hex} (= {n})"),
        Err(_) => hex.to_owned(),
    }
}

/// `7:a (= 7:10)`: `physical-device` as xenstore has it (hex), and the
/// decimal `maj:min` the kernel and sysfs use, when they differ.
fn dev_both(hex: &str) -> String {
    match diskseq::DevNum::parse_xenstore(hex) {
        Ok(dev) if dev.to_string() != hex => format!("{hex} (= {dev})"),
        _ => hex.to_owned(),
    }
}

fn state_name(state: u32) -> String {
    XenbusState::from_u32(state).map_or_else(|| "?".into(), |s| format!("{s:?}"))
}

fn write_image(dir: &Path, name: &str, marker: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let mut file = File::create(&path)?;
    let mut sector = vec![0u8; 512];
    sector[..marker.len()].copy_from_slice(marker.as_bytes());
    file.write_all(&sector)?;
    file.set_len(IMAGE_SIZE)?;
    Ok(path)
}

fn file_id(path: &Path) -> std::io::Result<FileId> {
    FileId::of(File::open(path)?)
}

/// The marker text at the start of a disk, read through its fd.
fn read_marker(disk: &diskseq::BlockDevice) -> String {
    let mut buf = [0u8; 64];
    let n = rustix::io::pread(disk, &mut buf, 0).unwrap_or(0);
    let text = &buf[..n];
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    String::from_utf8_lossy(&text[..end]).into_owned()
}

/// Waits (briefly: autoclear runs at the last close) until no loop device
/// is bound to one of `files`; returns those still bound.
fn wait_unbound(files: &[FileId]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<String> = diskseq::list_loops()
            .unwrap_or_default()
            .into_iter()
            .filter(|info| files.contains(&info.backing))
            .map(|info| format!("{} ({})", info.path.display(), info.id))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
