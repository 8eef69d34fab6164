//! A model of the guest's side of the vbd handshake (blkfront), for tests
//! and the demo: there is no guest and no data ring here, only the xenstore
//! conversation that makes a backend connect and disconnect.
//!
//! One [`Frontend`] plays one guest domain, like the guest's xenbus: it
//! watches the guest's `device/vbd` and, per device, the backend's `state`.
//! It should connect through the guest's own domain socket, so that it has
//! exactly a guest's permissions: it reads its backend dir and writes only
//! its own frontend dir. Ring references, event channel and protocol are
//! placeholders with the right names; the backend checks they are present.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xenstore::client::{Client, WatchEvent};

use vbd::schema::{node, XenbusState};

/// The ring ABI the model announces.
pub const PROTOCOL: &str = "x86_64-abi";

/// What the guest learned from the backend at connect (`blkfront_connect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GuestDisk {
    /// `sectors`: size in 512-byte units.
    pub sectors: u64,
    /// `sector-size`.
    pub sector_size: u32,
    /// `info` VDISK_* bits.
    pub info: u32,
}

impl GuestDisk {
    /// The backend serves the disk read-only (VDISK_READONLY).
    pub fn read_only(&self) -> bool {
        self.info & 4 != 0
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.sectors * 512
    }
}

/// One virtual disk as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VbdView {
    /// The device id (e.g. 51712).
    pub devid: u32,
    /// The frontend's own state.
    #[serde(serialize_with = "serialize_state")]
    pub state: XenbusState,
    /// The backend dir the toolstack named.
    pub backend: String,
    /// The backend's state as last seen.
    #[serde(serialize_with = "serialize_state")]
    pub backend_state: XenbusState,
    /// Set once connected.
    pub disk: Option<GuestDisk>,
}

/// A state as its xenstore number.
pub fn serialize_state<S: serde::Serializer>(state: &XenbusState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(state.as_u32())
}

/// What blkfront does when the backend's state changes, given its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendStep {
    /// Publish ring-ref, event-channel, protocol and switch to Initialised.
    PublishRing,
    /// Read sectors/info/sector-size and switch to Connected.
    Connect,
    /// Switch to Closed (`xenbus_frontend_closed`).
    Close,
}

/// blkfront's `blkback_changed`, as pure logic.
pub fn frontend_steps(own: XenbusState, backend: XenbusState) -> Vec<FrontendStep> {
    use XenbusState::*;
    match backend {
        InitWait if matches!(own, Initialising | Closed) => vec![FrontendStep::PublishRing],
        Connected => match own {
            Initialised | Connected => vec![FrontendStep::Connect],
            Closing | Closed => vec![],
            _ => vec![FrontendStep::PublishRing, FrontendStep::Connect],
        },
        Closing if own != Closing && own != Closed => vec![FrontendStep::Close],
        Closed if own != Closed => vec![FrontendStep::Close],
        _ => vec![],
    }
}

/// Why the frontend model stopped.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The xenstore connection failed.
    #[error("frontend of domain {domid}: xenstore {what}: {source}")]
    Xenstore {
        /// The guest domain.
        domid: u32,
        /// What the model was doing.
        what: String,
        /// The client's error.
        #[source]
        source: xenstore::client::Error,
    },
    /// The model's thread could not be started or panicked.
    #[error("frontend thread: {0}")]
    Thread(String),
}

/// A wait on a [`FrontendHandle`] that did not see its condition in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "guest {domid} vbd {devid}: {what} not reached within {} s ({})",
    timeout.as_secs_f64(),
    describe_last(last.as_ref())
)]
pub struct WaitTimeout {
    /// The guest domain.
    pub domid: u32,
    /// The device.
    pub devid: u32,
    /// The condition waited for.
    pub what: String,
    /// How long was waited.
    pub timeout: Duration,
    /// The view when the wait gave up.
    pub last: Option<VbdView>,
}

/// The last view of a timed-out wait, in words.
fn describe_last(last: Option<&VbdView>) -> String {
    match last {
        None => "the guest never saw the disk".into(),
        Some(view) => format!(
            "last seen: frontend {} ({:?}), backend {} ({:?}) at {}",
            view.state, view.state, view.backend_state, view.backend_state, view.backend
        ),
    }
}

#[derive(Default)]
struct Shared {
    views: Mutex<HashMap<u32, VbdView>>,
    changed: Condvar,
}

const ROOT_TOKEN: &str = "vbd-frontend";
const BACKEND_TOKEN: &str = "be:";

/// One guest's frontends. See the module docs.
pub struct Frontend {
    domid: u32,
    client: Client,
    root: String,
    watched: HashMap<u32, (String, String)>,
    shared: Arc<Shared>,
}

impl Frontend {
    /// The frontend model of guest `domid`, on `client` (ideally a
    /// connection through that guest's domain socket).
    pub fn new(client: Client, domid: u32) -> Self {
        Frontend {
            domid,
            client,
            root: format!("/local/domain/{domid}/device/vbd"),
            watched: HashMap::new(),
            shared: Arc::default(),
        }
    }

    /// Runs the model on its own thread.
    pub fn spawn(self) -> Result<FrontendHandle, FrontendError> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::clone(&self.shared);
        let domid = self.domid;
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("vbd-frontend-{domid}"))
            .spawn(move || self.run(&thread_stop))
            .map_err(|e| FrontendError::Thread(e.to_string()))?;
        Ok(FrontendHandle {
            domid,
            stop,
            thread: Some(thread),
            shared,
        })
    }

    /// Runs until `stop` is set or xenstore fails.
    pub fn run(mut self, stop: &AtomicBool) -> Result<(), FrontendError> {
        let root = self.root.clone();
        self.client
            .watch(&root, ROOT_TOKEN)
            .map_err(|e| self.error(format!("watching {root}"), e))?;
        while !stop.load(Ordering::Relaxed) {
            let event = match self.client.next_event(Some(Duration::from_millis(50))) {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(e) => return Err(self.error("waiting for events".into(), e)),
            };
            if let Err(e) = self.dispatch(&event) {
                if e.is_connection_lost() {
                    return Err(self.error(format!("handling {}", event.path), e));
                }
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, event: &WatchEvent) -> Result<(), xenstore::client::Error> {
        if event.token == ROOT_TOKEN {
            return self.scan();
        }
        if let Some(devid) = event
            .token
            .strip_prefix(BACKEND_TOKEN)
            .and_then(|d| d.parse().ok())
        {
            return self.backend_changed(devid);
        }
        Ok(())
    }

    /// Follows the guest's `device/vbd`: new devices get a backend watch,
    /// removed ones lose it.
    fn scan(&mut self) -> Result<(), xenstore::client::Error> {
        let devids: Vec<u32> = match self.client.directory(&self.root) {
            Ok(list) => list.iter().filter_map(|d| d.parse().ok()).collect(),
            Err(e) if e.is_not_found() || e.errno() == Some(xenstore::wire::Errno::EACCES) => {
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let gone: Vec<u32> = self
            .watched
            .keys()
            .filter(|d| !devids.contains(d))
            .copied()
            .collect();
        for devid in gone {
            if let Some((path, token)) = self.watched.remove(&devid) {
                let _ = self.client.unwatch(&path, &token);
            }
            self.update(devid, |views| {
                views.remove(&devid);
            });
        }
        for devid in devids {
            if self.watched.contains_key(&devid) {
                continue;
            }
            let dir = format!("{}/{devid}", self.root);
            let Some(backend) = self
                .client
                .read_opt(&format!("{dir}/{}", node::frontend::BACKEND))?
            else {
                continue; // written later (a transaction would have made it whole)
            };
            let backend = String::from_utf8_lossy(&backend).into_owned();
            let own = self.own_state(devid)?;
            self.update(devid, |views| {
                views.insert(
                    devid,
                    VbdView {
                        devid,
                        state: own,
                        backend: backend.clone(),
                        backend_state: XenbusState::Unknown,
                        disk: None,
                    },
                );
            });
            let watch = (
                format!("{backend}/{}", node::STATE),
                format!("{BACKEND_TOKEN}{devid}"),
            );
            self.client.watch(&watch.0, &watch.1)?;
            self.watched.insert(devid, watch);
        }
        Ok(())
    }

    fn own_state(&mut self, devid: u32) -> Result<XenbusState, xenstore::client::Error> {
        let raw =
            self.client
                .read_opt(&format!("{}/{devid}/{}", self.root, node::frontend::STATE))?;
        Ok(raw
            .and_then(|r| XenbusState::from_node(&r).ok())
            .unwrap_or(XenbusState::Unknown))
    }

    fn backend_changed(&mut self, devid: u32) -> Result<(), xenstore::client::Error> {
        let Some((state_path, _)) = self.watched.get(&devid) else {
            return Ok(());
        };
        let backend = state_path
            .strip_suffix(&format!("/{}", node::STATE))
            .unwrap_or(state_path)
            .to_owned();
        let backend_state = self
            .client
            .read_opt(state_path)?
            .and_then(|r| XenbusState::from_node(&r).ok())
            .unwrap_or(XenbusState::Unknown);
        let mut own = self.own_state(devid)?;
        self.update(devid, |views| {
            if let Some(view) = views.get_mut(&devid) {
                view.backend_state = backend_state;
                view.state = own;
            }
        });
        for step in frontend_steps(own, backend_state) {
            let dir = format!("{}/{devid}", self.root);
            match step {
                FrontendStep::PublishRing => {
                    // Placeholders with blkfront's names; a grant reference
                    // and an event channel number unique per device.
                    let ring_ref = (8 + devid % 1000).to_string();
                    let evtchn = (16 + devid % 1000).to_string();
                    let written = self.client.transaction(|tx| {
                        if tx
                            .read_opt(&format!("{dir}/{}", node::frontend::STATE))?
                            .is_none()
                        {
                            return Ok(false);
                        }
                        tx.write_many(&[
                            (
                                &format!("{dir}/{}", node::frontend::RING_REF),
                                ring_ref.as_bytes(),
                            ),
                            (
                                &format!("{dir}/{}", node::frontend::EVENT_CHANNEL),
                                evtchn.as_bytes(),
                            ),
                            (
                                &format!("{dir}/{}", node::frontend::PROTOCOL),
                                PROTOCOL.as_bytes(),
                            ),
                        ])?;
                        Ok(true)
                    })?;
                    if written {
                        own = self.switch(devid, XenbusState::Initialised)?;
                    }
                }
                FrontendStep::Connect => {
                    let values = self.client.transaction(|tx| {
                        tx.read_many(&[
                            &format!("{backend}/{}", node::SECTORS),
                            &format!("{backend}/{}", node::INFO),
                            &format!("{backend}/{}", node::SECTOR_SIZE),
                        ])
                    })?;
                    let number = |i: usize| -> Option<u64> {
                        std::str::from_utf8(values[i].as_deref()?)
                            .ok()?
                            .trim()
                            .parse()
                            .ok()
                    };
                    let (Some(sectors), Some(info), Some(sector_size)) =
                        (number(0), number(1), number(2))
                    else {
                        // blkfront: "reading backend fields" is fatal for the device.
                        own = self.switch(devid, XenbusState::Closing)?;
                        continue;
                    };
                    let disk = GuestDisk {
                        sectors,
                        sector_size: u32::try_from(sector_size).unwrap_or(u32::MAX),
                        info: u32::try_from(info).unwrap_or(u32::MAX),
                    };
                    // The disk first: a waiter that sees Connected sees it.
                    self.update(devid, |views| {
                        if let Some(view) = views.get_mut(&devid) {
                            view.disk = Some(disk);
                        }
                    });
                    own = self.switch(devid, XenbusState::Connected)?;
                }
                FrontendStep::Close => {
                    own = self.switch(devid, XenbusState::Closed)?;
                    self.update(devid, |views| {
                        if let Some(view) = views.get_mut(&devid) {
                            view.disk = None;
                        }
                    });
                }
            }
        }
        let _ = own;
        Ok(())
    }

    /// Writes the frontend's `state` unless its dir is gone.
    fn switch(
        &mut self,
        devid: u32,
        to: XenbusState,
    ) -> Result<XenbusState, xenstore::client::Error> {
        let state_node = format!("{}/{devid}/{}", self.root, node::frontend::STATE);
        self.client.transaction(|tx| {
            if tx.read_opt(&state_node)?.is_some() {
                tx.write(&state_node, to.to_string().as_bytes())?;
            }
            Ok(())
        })?;
        self.update(devid, |views| {
            if let Some(view) = views.get_mut(&devid) {
                view.state = to;
            }
        });
        Ok(to)
    }

    fn update(&self, _devid: u32, f: impl FnOnce(&mut HashMap<u32, VbdView>)) {
        let mut views = self.shared.views.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut views);
        self.shared.changed.notify_all();
    }

    fn error(&self, what: String, source: xenstore::client::Error) -> FrontendError {
        FrontendError::Xenstore {
            domid: self.domid,
            what,
            source,
        }
    }
}

/// A running frontend model. Dropping it stops the thread.
pub struct FrontendHandle {
    domid: u32,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), FrontendError>>>,
    shared: Arc<Shared>,
}

impl FrontendHandle {
    /// The guest domain.
    pub fn domid(&self) -> u32 {
        self.domid
    }

    /// The guest's view of device `devid`, if it has one.
    pub fn vbd(&self, devid: u32) -> Option<VbdView> {
        self.shared
            .views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&devid)
            .cloned()
    }

    /// Waits until `done` holds for device `devid` (absent devices count as
    /// `None`), or `timeout`.
    pub fn wait_for(
        &self,
        devid: u32,
        what: &str,
        timeout: Duration,
        done: impl Fn(Option<&VbdView>) -> bool,
    ) -> Result<Option<VbdView>, WaitTimeout> {
        let deadline = Instant::now() + timeout;
        let mut views = self.shared.views.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let view = views.get(&devid);
            if done(view) {
                return Ok(view.cloned());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitTimeout {
                    domid: self.domid,
                    devid,
                    what: what.to_owned(),
                    timeout,
                    last: view.cloned(),
                });
            }
            views = self
                .shared
                .changed
                .wait_timeout(views, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the frontend of `devid` is in `state`.
    pub fn wait_state(
        &self,
        devid: u32,
        state: XenbusState,
        timeout: Duration,
    ) -> Result<VbdView, WaitTimeout> {
        self.wait_for(
            devid,
            &format!("frontend state {state} ({state:?})"),
            timeout,
            |v| v.is_some_and(|v| v.state == state),
        )
        .map(|v| v.expect("condition requires a view"))
    }

    /// Stops the model.
    pub fn stop(mut self) -> Result<(), FrontendError> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Result<(), FrontendError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| FrontendError::Thread("panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for FrontendHandle {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use XenbusState::*;

    #[test]
    fn blkfront_reacts_to_backend_states() {
        assert_eq!(
            frontend_steps(Initialising, InitWait),
            [FrontendStep::PublishRing]
        );
        assert_eq!(
            frontend_steps(Closed, InitWait),
            [FrontendStep::PublishRing]
        );
        assert_eq!(frontend_steps(Initialised, InitWait), []);
        assert_eq!(
            frontend_steps(Initialised, Connected),
            [FrontendStep::Connect]
        );
        assert_eq!(
            frontend_steps(Initialising, Connected),
            [FrontendStep::PublishRing, FrontendStep::Connect]
        );
        assert_eq!(frontend_steps(Connected, Closing), [FrontendStep::Close]);
        assert_eq!(frontend_steps(Initialised, Closing), [FrontendStep::Close]);
        assert_eq!(frontend_steps(Closed, Closing), []);
        assert_eq!(frontend_steps(Connected, Closed), [FrontendStep::Close]);
        assert_eq!(frontend_steps(Closed, Closed), []);
        assert_eq!(frontend_steps(Closed, Connected), []);
        for be in [
            Unknown,
            Initialising,
            Initialised,
            Reconfiguring,
            Reconfigured,
        ] {
            assert_eq!(frontend_steps(Initialising, be), [], "{be:?}");
        }
    }
}
