//! The race the diskseq check exists for, driven on cue: a record
//! published the way Xen's stock `block` script leaves it (nothing holds
//! the loop device afterwards), and, in the backend's window between
//! reading the record and opening the device, the device detached and
//! another image bound on the same minor.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diskseq::{DiskId, LoopDevice, LoopOptions};
use vbd::schema::{node, BackendPath, Mode, PublishedDevice, XenbusState};

use super::{
    fail, read_marker, Contender, DemoError, Event, Instance, RaceOutcome, GUEST_RACE, WAIT,
};
use crate::backend::{BackendHandle, BeforeOpen, Fatal};
use crate::toolstack::{self, DeviceType, DiskSpec, Toolstack, Vdev};

/// The race's moving parts, shared with the backend's hook.
#[derive(Default)]
pub(super) struct RaceSlot {
    /// The device to race, and the loop device published for it.
    pub(super) armed: Option<(BackendPath, LoopDevice, PathBuf)>,
    /// After the hook: the published id and the replacement binding.
    pub(super) swapped: Option<Result<(DiskId, LoopDevice), String>>,
}

/// The hook: in the open window of the armed device, detach its loop
/// device and bind the replacement image on the same minor. If that fails
/// (another process took the minor meanwhile), the open is refused, so a
/// backend never opens a device that is not the demo's.
pub(super) fn race_hook(slot: Arc<Mutex<RaceSlot>>) -> BeforeOpen {
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
        let swapped = swap_in(victim, &replacement);
        let verdict = match &swapped {
            Ok(_) => Ok(()),
            Err(e) => Err(Fatal::new(rustix::io::Errno::BUSY, format!("demo: {e}"))),
        };
        slot.swapped = Some(swapped.map(|rebound| (published, rebound)));
        verdict
    })
}

/// Detaches `victim` (its fd is the last one: autoclear detaches it at the
/// close) and binds `image` on the same minor, with autoclear. (The tests'
/// race injector, `testbed::race`, does the same for them: the demo is not
/// a test and ships without the test bed.)
///
/// The minor cannot be held across the swap: `LOOP_CLR_FD` only marks the
/// device and the detach happens at the last close, after which any process
/// may claim the free minor. So the bind retries for a while (someone who
/// took the minor usually gives it back soon) and fails otherwise.
fn swap_in(victim: LoopDevice, image: &Path) -> Result<LoopDevice, String> {
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

/// What every run of the race shares.
pub(super) struct RaceRig<'a> {
    pub(super) tools: &'a Toolstack,
    pub(super) script: &'a Path,
    pub(super) slot: &'a Arc<Mutex<RaceSlot>>,
    /// The backends' log lines (their record of each state they wrote).
    pub(super) log: &'a Arc<Mutex<Vec<String>>>,
    pub(super) image_a: &'a Path,
    pub(super) image_b: &'a Path,
}

/// One run of the race against `backend` (backend domain `backend_domid`):
/// guest 2's next disk, image A published, image B swapped in.
pub(super) fn run_race(
    rig: &RaceRig<'_>,
    backend: &BackendHandle,
    contender: Contender,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<RaceOutcome, DemoError> {
    let backend_domid = contender.backend_domid();
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
        partition: None,
    };
    {
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.swapped = None;
        slot.armed = Some((path.clone(), victim, image_b.to_owned()));
    }
    events(Event::RacePublished(&published));
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
                "{}: no verdict within {WAIT:?} (state {state:?})",
                contender.label()
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
    events(Event::RaceSwapped {
        published: &published,
        swapped_in: &swapped_in,
    });
    let error_node = client
        .read_opt(&path.error_node(backend_domid))
        .map_err(|e| fail(step)(&e))?
        .map(|raw| String::from_utf8_lossy(&raw).into_owned());
    let served = backend.with_held_disk(&path, read_marker);
    Ok(RaceOutcome {
        backend: contender.label().to_owned(),
        checked: contender == Contender::Checked,
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
