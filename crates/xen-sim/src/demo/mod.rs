//! `diskseq demo`'s scenario: the whole system on a host without Xen, and
//! the race the diskseq check exists for, reproduced on cue.
//!
//! Everything is real except the hypervisor: our xenstored on a private
//! socket (with a domain socket per guest), the backend model on a thread
//! with its blkback protocol and diskseq check, a frontend model per guest,
//! the toolstack writing libxl's directories and running the real
//! `block-diskseq` script as a child process, and real loop devices.
//!
//! The race is driven deterministically through the backend's
//! [`BeforeOpen`](crate::backend::BeforeOpen) hook: it runs on the backend
//! thread after the `physical-device` record was read and before the device
//! is opened — exactly the window in which, on a real host, a loop device
//! can be detached and another file bound under the same number ([`race`]).
//!
//! This module does the work and returns a [`DemoReport`]; it reports
//! [`Event`]s as it goes, and the command line turns them into the
//! narration (the words are the CLI's, the facts are these).

mod race;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diskseq::{DiskId, FileId};
use vbd::schema::{BackendPath, Mode, XenbusState};
use xenstore::client::Client;
use xenstored::{Config, Daemon, DaemonHandle};

use crate::backend::{Backend, BackendConfig, BackendHandle, DiskseqPolicy};
use crate::frontend::{Frontend, FrontendHandle};
use crate::toolstack::{self, AttachReport, DetachReport, DeviceType, DiskSpec, Toolstack, Vdev};
use race::{race_hook, run_race, RaceRig, RaceSlot};

/// The guest that gets image A.
pub const GUEST_A: u32 = 1;
/// The guest whose disk is raced.
pub const GUEST_RACE: u32 = 2;
/// The backend domain running the legacy model (a driver domain).
pub const LEGACY_BACKEND: u32 = 10;
const IMAGE_SIZE: u64 = 4 << 20;
/// What image A's first sector says.
pub const MARKER_A: &str = "image A: the disk the toolstack asked for";
/// What image B's first sector says.
pub const MARKER_B: &str = "image B: another tenant's data";
const WAIT: Duration = Duration::from_secs(10);

/// Which backend a race runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// Ours in dom0, with the diskseq check (step 4).
    Checked,
    /// The same without the check, as stock blkback, in backend domain
    /// [`LEGACY_BACKEND`] (step 5).
    Legacy,
}

impl Contender {
    fn backend_domid(self) -> u32 {
        match self {
            Contender::Checked => 0,
            Contender::Legacy => LEGACY_BACKEND,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Contender::Checked => "diskseq backend (dom0)",
            Contender::Legacy => "legacy backend (no diskseq check)",
        }
    }
}

/// What the demo reports as it goes, in this order, for a front end to
/// narrate. Steps: 1 [`Staged`](Event::Staged), 2
/// [`ImagesWritten`](Event::ImagesWritten), 3 from
/// [`Attaching`](Event::Attaching), 4 and 5 from
/// [`RaceBegins`](Event::RaceBegins), 6 from [`Detaching`](Event::Detaching).
#[derive(Debug)]
pub enum Event<'a> {
    /// xenstored, both backends and the guests' frontends run.
    Staged {
        /// The private xenstored's socket.
        xenstored: &'a Path,
    },
    /// The two images exist ([`MARKER_A`], [`MARKER_B`]).
    ImagesWritten {
        /// Image A.
        a: &'a Path,
        /// Image B.
        b: &'a Path,
    },
    /// The toolstack attaches image A to [`GUEST_A`] with `script`.
    Attaching {
        /// The frontend's virtual device.
        vdev: &'a Vdev,
        /// The hotplug script, run as a child process.
        script: &'a Path,
    },
    /// The script exited 0, having published this record.
    Published(&'a AttachReport),
    /// The guest is connected and the backend holds image A.
    Attached(&'a AttachProof),
    /// A race begins, against `Contender`'s backend.
    RaceBegins(Contender),
    /// In the race: the record published, as the stock script leaves it.
    RacePublished(&'a Instance),
    /// In the race: the swap happened in the backend's window.
    RaceSwapped {
        /// What the record names (image A, now gone).
        published: &'a Instance,
        /// What is under the same number now (image B).
        swapped_in: &'a Instance,
    },
    /// The race's outcome.
    RaceEnded(&'a RaceOutcome),
    /// Everything is detached, as libxl removes a device.
    Detaching,
    /// One device detached.
    Detached {
        /// Its guest.
        guest: u32,
        /// Its virtual device.
        vdev: &'a Vdev,
        /// The toolstack's report.
        report: &'a DetachReport,
    },
    /// The end: what is left.
    Swept {
        /// Loop devices still bound to the demo's images (must be none).
        loops_left: &'a [String],
        /// Loop devices on the host, all owners.
        loops_on_host: usize,
    },
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
    /// The same, typed (for the xenstore forms).
    #[serde(skip)]
    pub id: DiskId,
}

impl Instance {
    fn of(id: DiskId, path: &Path) -> Self {
        Instance {
            id,
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
    /// The backend checks diskseq (step 4) or not (step 5).
    pub checked: bool,
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

/// Runs the demo, reporting each [`Event`] to `events` as it happens. See
/// the module docs.
pub fn run(
    options: &DemoOptions,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<DemoReport, DemoError> {
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
    let mut world = World::start(dir.path())?;
    events(Event::Staged {
        xenstored: &world.socket,
    });

    let image_a = write_image(dir.path(), "A.img", MARKER_A).map_err(|e| fail("images")(&e))?;
    let image_b = write_image(dir.path(), "B.img", MARKER_B).map_err(|e| fail("images")(&e))?;
    let id_a = file_id(&image_a).map_err(|e| fail("images")(&e))?;
    let id_b = file_id(&image_b).map_err(|e| fail("images")(&e))?;
    events(Event::ImagesWritten {
        a: &image_a,
        b: &image_b,
    });

    let mut tools = Toolstack::new(Some(world.socket.clone()));
    let hotplug_log = dir.path().join("hotplug.log");
    tools.script_log = Some(hotplug_log.clone());
    // block-diskseq logs to Xen's hotplug log when /var/log/xen exists; the
    // demo leaves no trace on the host, so its log goes to the temp dir.
    tools.script_env.push((
        "BLOCK_DISKSEQ_LOG".into(),
        hotplug_log.display().to_string(),
    ));
    let attach = attach_image_a(&world, &tools, &script, &image_a, id_a, events)?;

    let rig = RaceRig {
        tools: &tools,
        script: &script,
        slot: &world.slot,
        log: &world.log,
        image_a: &image_a,
        image_b: &image_b,
    };
    let mut race = |contender, backend: &BackendHandle| {
        events(Event::RaceBegins(contender));
        let outcome = run_race(&rig, backend, contender, events)?;
        events(Event::RaceEnded(&outcome));
        Ok::<_, DemoError>(outcome)
    };
    let race_checked = race(Contender::Checked, world.backend(Contender::Checked))?;
    let race_legacy = race(Contender::Legacy, world.backend(Contender::Legacy))?;

    events(Event::Detaching);
    detach_all(&tools, events)?;
    world.stop();
    let loops_left = wait_unbound(&[id_a, id_b]);
    let loops_on_host = diskseq::list_loops().map(|l| l.len()).unwrap_or(0);
    events(Event::Swept {
        loops_left: &loops_left,
        loops_on_host,
    });

    let ok = attach.backing_is_image_a
        && attach.first_bytes == MARKER_A
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
    let backend_log = world.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(DemoReport {
        ok,
        hotplug_log,
        backend_log,
        xenstored: world.socket.display().to_string(),
        script: script.display().to_string(),
        attach,
        race_checked,
        race_legacy,
        loops_left,
        loops_on_host,
    })
}

/// Everything the demo runs: the daemon, both backends (each with the race
/// hook), the guests' frontends, and what the backends log.
struct World {
    socket: PathBuf,
    slot: Arc<Mutex<RaceSlot>>,
    log: Arc<Mutex<Vec<String>>>,
    /// Both backends; dropping a handle stops its thread.
    backends: Vec<BackendHandle>,
    frontends: Vec<FrontendHandle>,
    daemon: Option<DaemonHandle>,
}

impl World {
    fn start(dir: &Path) -> Result<World, DemoError> {
        let setup = fail("setup");
        let socket = dir.join("xenstored.sock");
        let config = Config::new(&socket)
            .domain_socket(GUEST_A, dir.join(format!("dom{GUEST_A}.sock")))
            .domain_socket(GUEST_RACE, dir.join(format!("dom{GUEST_RACE}.sock")));
        let guest_sockets = config.domain_sockets.clone();
        let daemon = Daemon::start(config).map_err(|e| setup(&e))?;
        let connect = |path: &Path| Client::connect_socket(path).map_err(|e| setup(&e));
        let slot: Arc<Mutex<RaceSlot>> = Arc::default();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let backend = |contender: Contender, policy| {
            let mut config = BackendConfig::new(contender.backend_domid());
            config.policy = policy;
            config.before_open = Some(race_hook(Arc::clone(&slot)));
            let log = Arc::clone(&log);
            config.logger = Arc::new(move |line| {
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.to_owned())
            });
            Backend::new(connect(&socket)?, config)
                .spawn()
                .map_err(|e| setup(&e))
        };
        let checked = backend(Contender::Checked, DiskseqPolicy::Verify)?;
        let legacy = backend(Contender::Legacy, DiskseqPolicy::Ignore)?;
        let mut frontends = Vec::new();
        for (domid, guest_socket) in &guest_sockets {
            let frontend = Frontend::new(connect(guest_socket)?, *domid)
                .spawn()
                .map_err(|e| setup(&e))?;
            frontends.push(frontend);
        }
        Ok(World {
            socket,
            slot,
            log,
            backends: vec![checked, legacy],
            frontends,
            daemon: Some(daemon),
        })
    }

    fn backend(&self, contender: Contender) -> &BackendHandle {
        &self.backends[usize::from(contender == Contender::Legacy)]
    }

    /// Stops everything (also on an early return: [`Drop`]); the demo's
    /// own binding of image B (the legacy backend's disk) goes too.
    fn stop(&mut self) {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).swapped = None;
        self.backends.clear();
        self.frontends.clear();
        if let Some(daemon) = self.daemon.take() {
            daemon.stop();
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Step 3: attach image A to guest 1 with the script, and prove the backend
/// holds image A (by inode, not by name) and reads it.
fn attach_image_a(
    world: &World,
    tools: &Toolstack,
    script: &Path,
    image_a: &Path,
    id_a: FileId,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<AttachProof, DemoError> {
    let attach_failed = fail("attach");
    let xvda: Vdev = "xvda".parse().map_err(|e| attach_failed(&e))?;
    events(Event::Attaching {
        vdev: &xvda,
        script,
    });
    let spec = DiskSpec {
        frontend_domid: GUEST_A,
        backend_domid: 0,
        vdev: xvda.clone(),
        target: image_a.to_owned(),
        mode: Mode::ReadWrite,
        device_type: DeviceType::Disk,
        script: script.to_owned(),
        discard_enable: true,
    };
    let attach = tools.attach(&spec).map_err(|e| attach_failed(&e))?;
    // A script that exits 0 without publishing both nodes is not a diskseq
    // hotplug script (e.g. --script /bin/true): nothing below can work.
    let missing = match (&attach.physical_device_node, &attach.diskseq_node) {
        (Some(_), Some(_)) => None,
        (None, None) => Some("physical-device and no diskseq"),
        (None, Some(_)) => Some("physical-device"),
        (Some(_), None) => Some("diskseq"),
    };
    if let Some(missing) = missing {
        return Err(attach_failed(&format!(
            "{} exited 0 but published no {missing} in {}: it is not a hotplug script that \
             publishes a device and its diskseq (use block-diskseq)",
            script.display(),
            attach.backend
        )));
    }
    events(Event::Published(&attach));
    let view = world.frontends[0]
        .wait_state(xvda.devid, XenbusState::Connected, WAIT)
        .map_err(|e| attach_failed(&e))?;
    let path_a = BackendPath::new_absolute(0, GUEST_A, xvda.devid);
    let (held, backing, backing_id, first) = world
        .backend(Contender::Checked)
        .with_held_disk(&path_a, |disk| {
            let info = diskseq::loop_info(disk).ok().flatten();
            (
                Instance::of(disk.id(), disk.path()),
                info.as_ref().and_then(|i| i.backing_file.clone()),
                info.map(|i| i.backing),
                read_marker(disk),
            )
        })
        .ok_or_else(|| attach_failed(&"the backend holds no disk for xvda"))?;
    let proof = AttachProof {
        attach,
        held,
        backing_file: backing.map(|p| p.display().to_string()),
        backing_is_image_a: backing_id == Some(id_a),
        first_bytes: first,
        guest_sectors: view.disk.map_or(0, |d| d.sectors),
    };
    events(Event::Attached(&proof));
    Ok(proof)
}

/// Step 6: every device the demo made, removed as libxl removes one.
fn detach_all(tools: &Toolstack, events: &mut dyn FnMut(Event<'_>)) -> Result<(), DemoError> {
    let detach_failed = fail("detach");
    for (guest, vdev, backend) in [
        (GUEST_A, "xvda", 0),
        (GUEST_RACE, "xvda", 0),
        (GUEST_RACE, "xvdb", LEGACY_BACKEND),
    ] {
        let vdev: Vdev = vdev.parse().map_err(|e| detach_failed(&e))?;
        let report = tools
            .detach(guest, &vdev, backend)
            .map_err(|e| detach_failed(&e))?;
        events(Event::Detached {
            guest,
            vdev: &vdev,
            report: &report,
        });
    }
    Ok(())
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
