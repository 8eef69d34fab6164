//! The backend's event loop: one xenstore connection, one watch on
//! `backend/vbd` under the backend domain's home, and per device the two
//! watches blkback sets (`physical-device`, the frontend's `state`).
//!
//! Blocking and single-threaded on purpose: blkback's xenbus callbacks run
//! one at a time too, so the machines never see two events at once and
//! need no locks. The only shared state is the table of held disks, which
//! observers (tests, the demo) read through [`BackendHandle`].

use std::collections::VecDeque;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use diskseq::BlockDevice;
use xenstore::client::{Client, WatchEvent};

use crate::backend::config::{BackendConfig, BackendError};
use crate::backend::disk::open_disk;
use crate::backend::handle::BackendHandle;
use crate::backend::machine::{
    Effect, FrontendView, PhysicalSnapshot, RingInfo, Start, VbdMachine,
};
use vbd::schema::{self, node, BackendPath, XenbusState};

pub(super) type HeldTable = Arc<Mutex<HashMap<BackendPath, Arc<BlockDevice>>>>;

const ROOT_TOKEN: &str = "vbd-backend";
const PD_TOKEN: &str = "pd:";
const FE_TOKEN: &str = "fe:";

/// One device this backend drives.
struct Device {
    dir: String,
    frontend: String,
    machine: VbdMachine<Arc<BlockDevice>>,
    watches: Vec<(String, String)>,
}

/// The backend event loop. See the module docs.
pub struct Backend {
    config: BackendConfig,
    client: Client,
    root: String,
    devices: HashMap<BackendPath, Device>,
    /// Dirs whose probe failed (no frontend): not retried until removed.
    unprobeable: HashSet<BackendPath>,
    held: HeldTable,
}

impl Backend {
    /// A backend on `client` (a dom0 connection to the xenstore daemon).
    pub fn new(client: Client, config: BackendConfig) -> Self {
        let root = format!("/local/domain/{}/backend/vbd", config.domid);
        Backend {
            config,
            client,
            root,
            devices: HashMap::new(),
            unprobeable: HashSet::new(),
            held: Arc::default(),
        }
    }

    /// Starts the loop on its own thread.
    pub fn spawn(self) -> Result<BackendHandle, BackendError> {
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::clone(&self.held);
        let domid = self.config.domid;
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("vbd-backend-{}", self.config.domid))
            .spawn(move || self.run(&thread_stop))
            .map_err(BackendError::Spawn)?;
        Ok(BackendHandle {
            domid,
            stop,
            thread: Some(thread),
            held,
        })
    }

    /// Runs in the foreground until `stop` is set or xenstore fails.
    ///
    /// On return every held disk is closed, as when a process dies; the
    /// xenstore state is left as it is, so a new backend resumes from it.
    pub fn run(mut self, stop: &AtomicBool) -> Result<(), BackendError> {
        let result = self.serve(stop);
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.devices.clear();
        result
    }

    fn serve(&mut self, stop: &AtomicBool) -> Result<(), BackendError> {
        let root = self.root.clone();
        self.client
            .watch(&root, ROOT_TOKEN)
            .map_err(|e| self.xs_error(format!("watching {root}"), e))?;
        self.log(&format!(
            "watching {root} (diskseq policy {:?}, open {:?})",
            self.config.policy, self.config.open_method
        ));
        let mut first_scan = true;
        while !stop.load(Ordering::Relaxed) {
            let event = match self.client.next_event(Some(self.config.stop_poll)) {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(e) => return Err(self.xs_error("waiting for events".into(), e)),
            };
            if let Err(e) = self.dispatch(&event, &mut first_scan) {
                if e.is_connection_lost() {
                    // Not a per-node error: the connection itself failed.
                    return Err(self.xs_error(format!("handling {}", event.path), e));
                }
                self.log(&format!("{}: {e}", event.path));
            }
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        event: &WatchEvent,
        first_scan: &mut bool,
    ) -> Result<(), xenstore::client::Error> {
        if event.token == ROOT_TOKEN {
            let startup = std::mem::take(first_scan);
            return match self.device_of(&event.path) {
                Some((path, exact)) => self.device_dir_changed(path, exact),
                None => self.scan(startup),
            };
        }
        let (kind, dir) = if let Some(dir) = event.token.strip_prefix(PD_TOKEN) {
            (PD_TOKEN, dir)
        } else if let Some(dir) = event.token.strip_prefix(FE_TOKEN) {
            (FE_TOKEN, dir)
        } else {
            return Ok(());
        };
        let Ok(path) = BackendPath::parse(dir) else {
            return Ok(());
        };
        if !self.devices.contains_key(&path) {
            return Ok(());
        }
        if kind == PD_TOKEN {
            self.physical_device_changed(&path)
        } else {
            self.frontend_changed(&path)
        }
    }

    /// The device dir an event path is at or below, and whether the event
    /// may mean the dir was removed or created: an event on the dir itself
    /// or on its `state` node.
    fn device_of(&self, event_path: &str) -> Option<(BackendPath, bool)> {
        let rest = event_path.strip_prefix(&self.root)?.strip_prefix('/')?;
        let mut parts = rest.splitn(3, '/');
        let fe = parts.next()?;
        let devid = parts.next()?;
        let below = parts.next();
        let path = BackendPath::parse(&format!("{}/{fe}/{devid}", self.root)).ok()?;
        Some((path, below.is_none_or(|node| node == node::STATE)))
    }

    /// Lists every device dir: at startup, adopts each in whatever state it
    /// is (restart recovery); later, probes the new ones and drops the gone.
    fn scan(&mut self, startup: bool) -> Result<(), xenstore::client::Error> {
        let mut present = HashSet::new();
        let frontends = match self.client.directory(&self.root) {
            Ok(list) => list,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e),
        };
        for fe in frontends {
            let fe_dir = format!("{}/{fe}", self.root);
            let devids = match self.client.directory(&fe_dir) {
                Ok(list) => list,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            for devid in devids {
                if let Ok(path) = BackendPath::parse(&format!("{fe_dir}/{devid}")) {
                    present.insert(path);
                }
            }
        }
        let gone: Vec<BackendPath> = self
            .devices
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            self.removed(&path);
        }
        self.unprobeable.retain(|p| present.contains(p));
        for path in present {
            if self.devices.contains_key(&path) {
                continue;
            }
            // One device's trouble must not keep the others from starting.
            match self.consider(&path, startup) {
                Err(e) if e.is_connection_lost() => return Err(e),
                Err(e) => self.log(&format!("{path}: {e}")),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    fn device_dir_changed(
        &mut self,
        path: BackendPath,
        exact: bool,
    ) -> Result<(), xenstore::client::Error> {
        if let Some(device) = self.devices.get(&path) {
            // Only a removal concerns a known device here: blkback does not
            // react to the toolstack rewriting its nodes.
            if !exact {
                return Ok(());
            }
            let ours = device.machine.state();
            let dir = path.dir();
            let state = self.client.transaction(|tx| {
                tx.read_opt(&dir)?
                    .map(|_| tx.read_opt(&format!("{dir}/{}", node::STATE)))
                    .transpose()
            })?;
            match state {
                None => self.removed(&path),
                // Removed and created again before this event was read (a
                // failed attach retried, say): Initialising is written only
                // by a toolstack creating the dir. The old device goes, the
                // new one is probed.
                Some(Some(raw))
                    if XenbusState::from_node(&raw).ok() == Some(XenbusState::Initialising)
                        && ours != XenbusState::Initialising =>
                {
                    self.log(&format!("{dir}: removed and created again"));
                    self.removed(&path);
                    return self.consider(&path, false);
                }
                Some(_) => {}
            }
            return Ok(());
        }
        if self.client.read_opt(&path.dir())?.is_none() {
            self.unprobeable.remove(&path);
            return Ok(());
        }
        self.consider(&path, false)
    }

    /// Probes a device dir not yet driven. Outside startup only a new one
    /// (state Initialising) is probed, as xenbus does: a dir in another
    /// state is a device on its way out.
    fn consider(
        &mut self,
        path: &BackendPath,
        startup: bool,
    ) -> Result<(), xenstore::client::Error> {
        if self.unprobeable.contains(path) {
            return Ok(());
        }
        let dir = path.dir();
        let values = self.client.read_many_atomically(&[
            &format!("{dir}/{}", node::STATE),
            &format!("{dir}/{}", node::FRONTEND),
            &format!("{dir}/{}", node::FRONTEND_ID),
        ])?;
        let state = values[0]
            .as_deref()
            .and_then(|raw| XenbusState::from_node(raw).ok());
        let Some(state) = state else {
            return Ok(()); // not written yet (non-transactional toolstack)
        };
        let start = match (state, startup) {
            (XenbusState::Initialising, _) => Start::Probe,
            (other, true) => Start::Resume(other),
            (_, false) => return Ok(()),
        };
        let frontend = match self.other_end(&values[1], &values[2]) {
            Ok(frontend) => frontend,
            Err(why) => {
                self.log(&format!("{dir}: reading other end details: {why}"));
                self.unprobeable.insert(path.clone());
                return Ok(());
            }
        };
        let (machine, effects) = VbdMachine::start(start, self.config.features);
        self.log(&format!(
            "{dir}: {} (frontend {frontend})",
            match start {
                Start::Probe => "probe".to_owned(),
                Start::Resume(s) => format!("resume from state {s}"),
            }
        ));
        self.devices.insert(
            path.clone(),
            Device {
                dir,
                frontend,
                machine,
                watches: Vec::new(),
            },
        );
        self.apply(path, effects)
    }

    /// `frontend` must name an existing dir and `frontend-id` must parse
    /// (xenbus's `read_otherend_details`).
    fn other_end(
        &mut self,
        frontend: &Option<Vec<u8>>,
        frontend_id: &Option<Vec<u8>>,
    ) -> Result<String, String> {
        let raw_id = frontend_id.as_deref().ok_or("no frontend-id")?;
        schema::domid(node::FRONTEND_ID, raw_id).map_err(|e| e.to_string())?;
        let raw = frontend.as_deref().ok_or("no frontend")?;
        let frontend =
            String::from_utf8(raw.to_vec()).map_err(|_| "frontend is not text".to_owned())?;
        match self.client.read_opt(&frontend) {
            Ok(Some(_)) => Ok(frontend),
            Ok(None) => Err(format!("frontend {frontend} does not exist")),
            Err(e) => Err(format!("frontend {frontend}: {e}")),
        }
    }

    fn physical_device_changed(
        &mut self,
        path: &BackendPath,
    ) -> Result<(), xenstore::client::Error> {
        let Some(device) = self.devices.get(path) else {
            return Ok(());
        };
        let dir = device.dir.clone();
        let frontend = device.frontend.clone();
        let values = self.client.read_many_atomically(&[
            &format!("{dir}/{}", node::PHYSICAL_DEVICE),
            &format!("{dir}/{}", node::DISKSEQ),
            &format!("{dir}/{}", node::PARTITION),
            &format!("{dir}/{}", node::MODE),
            &format!("{frontend}/{}", node::frontend::DEVICE_TYPE),
            &format!("{dir}/{}", node::DISCARD_ENABLE),
        ])?;
        let mut values = values.into_iter();
        let mut next = || values.next().flatten();
        let snapshot = PhysicalSnapshot {
            physical_device: next(),
            diskseq: next(),
            partition: next(),
            mode: next(),
            frontend_device_type: next(),
            discard_enable: next().is_none_or(|v| schema::flag(Some(&v))),
        };
        let policy = self.config.policy;
        let method = self.config.open_method;
        let hook = self.config.before_open.clone();
        let Some(device) = self.devices.get_mut(path) else {
            return Ok(());
        };
        let effects = device
            .machine
            .on_physical_device(&snapshot, policy, |request| {
                if let Some(hook) = &hook {
                    hook(path, request)?;
                }
                open_disk(request, method)
            });
        self.apply(path, effects)
    }

    fn frontend_changed(&mut self, path: &BackendPath) -> Result<(), xenstore::client::Error> {
        let Some(device) = self.devices.get(path) else {
            return Ok(());
        };
        let dir = device.dir.clone();
        let frontend = device.frontend.clone();
        let values = self.client.read_many_atomically(&[
            &format!("{frontend}/{}", node::frontend::STATE),
            &format!("{frontend}/{}", node::frontend::RING_REF),
            &format!("{frontend}/{}", node::frontend::EVENT_CHANNEL),
            &format!("{frontend}/{}", node::frontend::PROTOCOL),
            &format!("{dir}/{}", node::ONLINE),
            &format!("{dir}/{}", node::DISCARD_ENABLE),
        ])?;
        let state = values[0]
            .as_deref()
            .and_then(|raw| XenbusState::from_node(raw).ok())
            .unwrap_or(XenbusState::Unknown);
        let view = FrontendView {
            state,
            ring: RingInfo::from_nodes(
                &frontend,
                values[1].as_deref(),
                values[2].as_deref(),
                values[3].as_deref(),
            ),
            online: schema::flag(values[4].as_deref()),
            discard_enable: values[5].is_none() || schema::flag(values[5].as_deref()),
        };
        let Some(device) = self.devices.get_mut(path) else {
            return Ok(());
        };
        let effects = device.machine.on_frontend(&view);
        self.apply(path, effects)
    }

    fn removed(&mut self, path: &BackendPath) {
        if let Some(device) = self.devices.get_mut(path) {
            let effects = device.machine.on_removed();
            let dir = device.dir.clone();
            self.log(&format!("{dir}: removed"));
            if let Err(e) = self.apply(path, effects) {
                self.log(&format!("{path}: {e}"));
            }
        }
    }

    /// Carries out a machine's effects in order.
    fn apply(
        &mut self,
        path: &BackendPath,
        effects: Vec<Effect>,
    ) -> Result<(), xenstore::client::Error> {
        let logger = Arc::clone(&self.config.logger);
        let log = |line: String| logger(&line);
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            let Some(device) = self.devices.get_mut(path) else {
                return Ok(());
            };
            let dir = device.dir.clone();
            match effect {
                Effect::RemoveErrorNode => {
                    let error_dir = error_dir(path, self.config.domid);
                    match self.client.rm(&error_dir) {
                        Err(e) if !e.is_not_found() => return Err(e),
                        _ => {}
                    }
                }
                Effect::Write(name, value) => {
                    self.client
                        .write(&format!("{dir}/{name}"), value.as_bytes())?;
                }
                Effect::WatchPhysicalDevice => {
                    let watch = (
                        format!("{dir}/{}", node::PHYSICAL_DEVICE),
                        format!("{PD_TOKEN}{dir}"),
                    );
                    self.client.watch(&watch.0, &watch.1)?;
                    device.watches.push(watch);
                }
                Effect::WatchFrontend => {
                    let watch = (
                        format!("{}/{}", device.frontend, node::frontend::STATE),
                        format!("{FE_TOKEN}{dir}"),
                    );
                    self.client.watch(&watch.0, &watch.1)?;
                    device.watches.push(watch);
                }
                Effect::RecheckPhysicalDevice => {
                    self.physical_device_changed(path)?;
                }
                Effect::Connect(nodes) => {
                    let state_node = format!("{dir}/{}", node::STATE);
                    let nodes: Vec<(String, Vec<u8>)> = nodes
                        .into_iter()
                        .map(|(name, value)| (format!("{dir}/{name}"), value.into_bytes()))
                        .collect();
                    self.client.transaction(|tx| {
                        if tx.read_opt(&state_node)?.is_none() {
                            return Ok(()); // never recreate a removed dir
                        }
                        let items: Vec<(&str, &[u8])> = nodes
                            .iter()
                            .map(|(n, v)| (n.as_str(), v.as_slice()))
                            .collect();
                        tx.write_many(&items)
                    })?;
                }
                Effect::SwitchState(state) => {
                    let state_node = format!("{dir}/{}", node::STATE);
                    self.client.transaction(|tx| {
                        if tx.read_opt(&state_node)?.is_none() {
                            return Ok(());
                        }
                        tx.write(&state_node, state.to_string().as_bytes())
                    })?;
                    log(format!("{dir}: state {state} ({state:?})"));
                }
                Effect::Fatal(fatal) => {
                    let error_node = path.error_node(self.config.domid);
                    log(format!("{dir}: fatal: {fatal}"));
                    self.client
                        .write(&error_node, fatal.to_string().as_bytes())?;
                }
                Effect::Log(line) => log(format!("{dir}: {line}")),
                Effect::DiskHeld => {
                    if let Some(disk) = device.machine.disk() {
                        log(format!(
                            "{dir}: opened {} ({})",
                            disk.path().display(),
                            disk.id()
                        ));
                        self.held
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(path.clone(), Arc::clone(disk));
                    }
                }
                Effect::DiskReleased => {
                    self.held
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(path);
                    log(format!("{dir}: released the device"));
                }
                Effect::Unregister => {
                    let watches = std::mem::take(&mut device.watches);
                    self.devices.remove(path);
                    for (watch_path, token) in watches {
                        match self.client.unwatch(&watch_path, &token) {
                            Err(e) if !e.is_not_found() => return Err(e),
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn log(&self, line: &str) {
        (self.config.logger)(line);
    }

    fn xs_error(&self, what: String, source: xenstore::client::Error) -> BackendError {
        BackendError::Xenstore {
            domid: self.config.domid,
            what,
            source,
        }
    }
}

/// `/local/domain/<be>/error/backend/vbd/<fe>/<devid>`: the dir holding a
/// device's error node.
fn error_dir(path: &BackendPath, backend_domid: u32) -> String {
    let node = path.error_node(backend_domid);
    node.strip_suffix("/error").unwrap_or(&node).to_owned()
}
