//! The toolstack side of a disk: attach and detach the way libxl does
//! (`xl block-attach` / `xl block-detach`), against any xenstore daemon.
//!
//! Attach: one transaction writes the backend and frontend directories with
//! libxl's permissions ([`layout`]); wait up to 10 s for the backend's
//! InitWait; run the hotplug script once ([`script`]) and judge it by its
//! exit status only. On failure the toolstack reports the script's
//! `hotplug-error`, runs the script's `remove` and deletes what it wrote, so
//! a failed attach leaves nothing behind.
//!
//! Detach: `online` = 0 and `state` = Closing in one transaction (Closing
//! only if not already Closed), wait up to 10 s for Closed, run `remove`
//! (its failure is ignored), delete both directories. A backend that never
//! reaches Closed is removed anyway (libxl's forced removal).

pub mod layout;
pub mod script;
pub mod vdev;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xenstore::client::Client;
use xenstore::perms::Perms;

pub use layout::{DeviceType, DiskSpec, Layout};
pub use script::{ScriptAction, ScriptOutcome};
use vbd::schema::{self, node, BackendPath, XenbusState};
pub use vdev::{Vdev, VdevError};

/// libxl's timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Backend probe to InitWait (`LIBXL_INIT_TIMEOUT`, 10 s).
    pub init_wait: Duration,
    /// The hotplug script (`LIBXL_HOTPLUG_TIMEOUT`, 40 s).
    pub hotplug: Duration,
    /// Closing to Closed on detach (`LIBXL_DESTROY_TIMEOUT`, 10 s).
    pub destroy: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            init_wait: Duration::from_secs(10),
            hotplug: script::HOTPLUG_TIMEOUT,
            destroy: Duration::from_secs(10),
        }
    }
}

/// What an attach did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachReport {
    /// The backend directory.
    pub backend: String,
    /// The frontend directory.
    pub frontend: String,
    /// The guest's device name.
    pub vdev: String,
    /// Its device id.
    pub devid: u32,
    /// The script run (`None` when the backend domain is not this one: a
    /// driver domain runs its own scripts).
    pub script: Option<ScriptOutcome>,
    /// The published device number, decimal `MAJ:MIN` as the kernel and
    /// sysfs write it (`None`: not published, or not a device number).
    pub dev: Option<String>,
    /// The published diskseq, decimal (`None`: not published, a legacy
    /// script, or not a diskseq).
    pub diskseq: Option<u64>,
    /// The `physical-device` node as the script wrote it (hex `maj:min`).
    pub physical_device_node: Option<String>,
    /// The `diskseq` node as the script wrote it (hex).
    pub diskseq_node: Option<String>,
    /// `hotplug-status`.
    pub hotplug_status: Option<String>,
    /// Wall time of the whole attach, in milliseconds.
    pub elapsed_ms: f64,
}

/// What a detach did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DetachReport {
    /// The backend directory.
    pub backend: String,
    /// The frontend directory.
    pub frontend: String,
    /// False when the backend dir was already gone (frontend cleaned only).
    pub backend_was_present: bool,
    /// The backend reached Closed in time (else the removal was forced).
    pub closed: bool,
    /// The `remove` run, if one was made.
    pub script: Option<ScriptOutcome>,
    /// Wall time of the whole detach, in milliseconds.
    pub elapsed_ms: f64,
}

/// Why an attach or detach failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolstackError {
    /// xenstore refused or the connection failed.
    #[error("{what}: {source}")]
    Xenstore {
        /// What was being done, naming the path.
        what: String,
        /// The client's error.
        #[source]
        source: xenstore::client::Error,
    },
    /// Detach named a disk with neither a backend nor a frontend directory.
    #[error("no such disk: neither {backend} nor {frontend} exists (not attached)")]
    NotAttached {
        /// The backend directory.
        backend: String,
        /// The frontend directory.
        frontend: String,
    },
    /// The device directory is already there.
    #[error("{backend}: device already exists (detach it first)")]
    Exists {
        /// The backend directory.
        backend: String,
    },
    /// The backend did not reach the state in time.
    #[error("{backend}: backend did not reach state {want} ({want:?}) within {timeout:?} (state: {last})")]
    Timeout {
        /// The backend directory.
        backend: String,
        /// The state waited for.
        want: XenbusState,
        /// How long.
        timeout: Duration,
        /// The last state seen ("absent" when the node is gone).
        last: String,
    },
    /// The hotplug script failed; what the toolstack wrote was removed.
    #[error("{backend}: hotplug script {} add failed ({}){}", outcome.script.display(), outcome.describe(), hotplug_error.as_deref().map(|e| format!("; hotplug-error: {e}")).unwrap_or_default())]
    Hotplug {
        /// The backend directory.
        backend: String,
        /// How the script ended.
        outcome: ScriptOutcome,
        /// The script's `hotplug-error` node.
        hotplug_error: Option<String>,
    },
    /// The script could not be started.
    #[error("running hotplug script {}: {source}", script.display())]
    Spawn {
        /// The script.
        script: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn xs(what: impl Into<String>) -> impl FnOnce(xenstore::client::Error) -> ToolstackError {
    let what = what.into();
    move |source| ToolstackError::Xenstore { what, source }
}

/// The toolstack: where xenstore is and how long to wait.
#[derive(Debug, Clone, Default)]
pub struct Toolstack {
    xenstored: Option<PathBuf>,
    /// libxl's timeouts (tests shorten them).
    pub timeouts: Timeouts,
    /// Where scripts' output goes; `None`: our stderr, as libxl does.
    pub script_log: Option<PathBuf>,
    /// Extra environment for scripts (e.g. where a script should log).
    pub script_env: Vec<(String, String)>,
}

impl Toolstack {
    /// A toolstack on the xenstore daemon at `socket`, or the system's one
    /// (libxenstore's discovery) when `None`. Scripts get the same socket.
    pub fn new(socket: Option<PathBuf>) -> Self {
        Toolstack {
            xenstored: socket,
            timeouts: Timeouts::default(),
            script_log: None,
            script_env: Vec::new(),
        }
    }

    /// A new connection, as each libxl operation has its own context.
    pub fn connect(&self) -> Result<Client, ToolstackError> {
        match &self.xenstored {
            Some(socket) => Client::connect_socket(socket)
                .map_err(xs(format!("connecting to {}", socket.display()))),
            None => Client::connect().map_err(xs("connecting to xenstore")),
        }
    }

    /// Attaches a disk. See the module docs.
    pub fn attach(&self, spec: &DiskSpec) -> Result<AttachReport, ToolstackError> {
        let started = Instant::now();
        let mut client = self.connect()?;
        let layout = self.create(&mut client, spec)?;
        let backend_dir = layout.backend_dir();
        if let Err(e) = wait_state(
            &mut client,
            &backend_dir,
            XenbusState::InitWait,
            self.timeouts.init_wait,
        ) {
            self.remove_dirs(&mut client, &layout)?;
            return Err(e);
        }
        let outcome = if spec.backend_domid == 0 {
            Some(self.run_script(&spec.script, ScriptAction::Add, &layout.backend)?)
        } else {
            None
        };
        let nodes = [
            node::PHYSICAL_DEVICE,
            node::DISKSEQ,
            node::HOTPLUG_STATUS,
            node::HOTPLUG_ERROR,
        ];
        let read = |client: &mut Client| -> Result<Vec<Option<String>>, ToolstackError> {
            let paths: Vec<String> = nodes.iter().map(|n| format!("{backend_dir}/{n}")).collect();
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            let values = client
                .transaction(|tx| tx.read_many(&refs))
                .map_err(xs(format!("reading {backend_dir}")))?;
            Ok(values
                .into_iter()
                .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
                .collect())
        };
        let values = read(&mut client)?;
        if let Some(outcome) = outcome.as_ref().filter(|o| !o.success()) {
            // Clean up first: the script may have left a device recorded.
            let _ = self.run_script(&spec.script, ScriptAction::Remove, &layout.backend);
            self.remove_dirs(&mut client, &layout)?;
            return Err(ToolstackError::Hotplug {
                backend: backend_dir,
                outcome: outcome.clone(),
                hotplug_error: values[3].clone(),
            });
        }
        let mut values = values.into_iter();
        let physical_device_node = values.next().flatten();
        let diskseq_node = values.next().flatten();
        Ok(AttachReport {
            backend: backend_dir,
            frontend: layout.frontend_dir.clone(),
            vdev: spec.vdev.name.clone(),
            devid: spec.vdev.devid,
            script: outcome,
            dev: physical_device_node
                .as_deref()
                .and_then(|hex| schema::physical_device_from_node(hex.as_bytes()).ok())
                .map(|dev| dev.to_string()),
            diskseq: diskseq_node
                .as_deref()
                .and_then(|hex| schema::diskseq_from_node(hex.as_bytes()).ok())
                .map(diskseq::DiskSeq::get),
            physical_device_node,
            diskseq_node,
            hotplug_status: values.next().flatten(),
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// Writes the two directories in one transaction, with libxl's
    /// permissions. Fails if the backend dir exists.
    pub fn create(&self, client: &mut Client, spec: &DiskSpec) -> Result<Layout, ToolstackError> {
        let layout = Layout::new(spec);
        let backend_dir = layout.backend_dir();
        let guest_devices = format!("/local/domain/{}/device", spec.frontend_domid);
        let exists = client
            .transaction(|tx| {
                if tx.read_opt(&backend_dir)?.is_some() {
                    return Ok(true);
                }
                // The guest's `device` dir is the guest's (libxl makes it at
                // domain creation); make it so if this guest has none yet.
                if tx.read_opt(&guest_devices)?.is_none() {
                    tx.mkdir(&guest_devices)?;
                    tx.set_perms(&guest_devices, &Perms::owner_only(spec.frontend_domid))?;
                }
                tx.rm(&layout.frontend_dir).or_else(ignore_not_found)?;
                tx.mkdir(&layout.frontend_dir)?;
                tx.set_perms(&layout.frontend_dir, &layout.frontend_perms)?;
                write_nodes(tx, &layout.frontend_dir, &layout.frontend_nodes)?;
                tx.mkdir(&backend_dir)?;
                tx.set_perms(&backend_dir, &layout.backend_perms)?;
                write_nodes(tx, &backend_dir, &layout.backend_nodes)?;
                Ok(false)
            })
            .map_err(xs(format!("writing {backend_dir}")))?;
        if exists {
            return Err(ToolstackError::Exists {
                backend: backend_dir,
            });
        }
        Ok(layout)
    }

    /// Detaches a disk. See the module docs.
    pub fn detach(
        &self,
        frontend_domid: u32,
        vdev: &Vdev,
        backend_domid: u32,
    ) -> Result<DetachReport, ToolstackError> {
        let started = Instant::now();
        let mut client = self.connect()?;
        let backend = BackendPath::new_absolute(backend_domid, frontend_domid, vdev.devid);
        let backend_dir = backend.dir();
        let frontend_dir = layout::frontend_dir(frontend_domid, vdev.devid);
        let state_node = backend.node(node::STATE);
        let online_node = backend.node(node::ONLINE);
        let (present, frontend_present) = client
            .transaction(|tx| {
                let frontend_present = tx.read_opt(&frontend_dir)?.is_some();
                let Some(raw) = tx.read_opt(&state_node)? else {
                    return Ok((false, frontend_present));
                };
                tx.write(&online_node, b"0")?;
                if XenbusState::from_node(&raw).ok() != Some(XenbusState::Closed) {
                    tx.write(&state_node, XenbusState::Closing.to_string().as_bytes())?;
                }
                Ok((true, frontend_present))
            })
            .map_err(xs(format!("closing {backend_dir}")))?;
        // As `xl block-detach` ("device not connected"): naming a disk that
        // is not there is an error, not a successful no-op.
        if !present && !frontend_present {
            return Err(ToolstackError::NotAttached {
                backend: backend_dir,
                frontend: frontend_dir,
            });
        }
        let mut report = DetachReport {
            backend: backend_dir.clone(),
            frontend: frontend_dir.clone(),
            backend_was_present: present,
            closed: false,
            script: None,
            elapsed_ms: 0.0,
        };
        if present {
            report.closed = wait_state(
                &mut client,
                &backend_dir,
                XenbusState::Closed,
                self.timeouts.destroy,
            )
            .is_ok();
            let script = client
                .read_opt(&backend.node(node::SCRIPT))
                .map_err(xs(format!("reading {backend_dir}")))?;
            if let (Some(script), 0) = (script, backend_domid) {
                let script = PathBuf::from(String::from_utf8_lossy(&script).into_owned());
                // libxl ignores a failing remove and removes the device anyway.
                report.script = self
                    .run_script(&script, ScriptAction::Remove, &backend)
                    .ok();
            }
        }
        let layout_dirs = (backend_dir, frontend_dir);
        self.remove_paths(&mut client, &layout_dirs.0, &layout_dirs.1, &backend)?;
        report.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(report)
    }

    /// Runs the hotplug script with libxl's argv and environment.
    pub fn run_script(
        &self,
        script: &Path,
        action: ScriptAction,
        backend: &BackendPath,
    ) -> Result<ScriptOutcome, ToolstackError> {
        script::run(&script::ScriptRun {
            script,
            action,
            backend,
            xenstored: self.xenstored.as_deref(),
            timeout: self.timeouts.hotplug,
            log: self.script_log.as_deref(),
            env: &self.script_env,
        })
        .map_err(|source| ToolstackError::Spawn {
            script: script.to_owned(),
            source,
        })
    }

    fn remove_dirs(&self, client: &mut Client, layout: &Layout) -> Result<(), ToolstackError> {
        self.remove_paths(
            client,
            &layout.backend_dir(),
            &layout.frontend_dir,
            &layout.backend,
        )
    }

    /// Deletes both directories in one transaction, and the guest's
    /// `backend/vbd/<fe>` level when it is left empty.
    fn remove_paths(
        &self,
        client: &mut Client,
        backend_dir: &str,
        frontend_dir: &str,
        backend: &BackendPath,
    ) -> Result<(), ToolstackError> {
        let parent = backend.frontend_dir();
        client
            .transaction(|tx| {
                tx.rm(backend_dir).or_else(ignore_not_found)?;
                tx.rm(frontend_dir).or_else(ignore_not_found)?;
                match tx.directory(&parent) {
                    Ok(children) if children.is_empty() => tx.rm(&parent).or_else(ignore_not_found),
                    Ok(_) => Ok(()),
                    Err(e) if e.is_not_found() => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .map_err(xs(format!("removing {backend_dir}")))
    }
}

fn ignore_not_found(e: xenstore::client::Error) -> Result<(), xenstore::client::Error> {
    if e.is_not_found() {
        Ok(())
    } else {
        Err(e)
    }
}

fn write_nodes(
    tx: &mut xenstore::client::Transaction<'_>,
    dir: &str,
    nodes: &[(&'static str, String)],
) -> Result<(), xenstore::client::Error> {
    let paths: Vec<(String, &[u8])> = nodes
        .iter()
        .map(|(name, value)| (format!("{dir}/{name}"), value.as_bytes()))
        .collect();
    let items: Vec<(&str, &[u8])> = paths.iter().map(|(p, v)| (p.as_str(), *v)).collect();
    tx.write_many(&items)
}

/// Waits until `<backend_dir>/state` is `want`, watching it. A backend
/// that goes to Closing/Closed while another state is awaited has failed:
/// no need to wait for the timeout then.
pub fn wait_state(
    client: &mut Client,
    backend_dir: &str,
    want: XenbusState,
    timeout: Duration,
) -> Result<(), ToolstackError> {
    let state_node = format!("{backend_dir}/{}", node::STATE);
    let token = format!("toolstack-wait-{}", std::process::id());
    client
        .watch(&state_node, &token)
        .map_err(xs(format!("watching {state_node}")))?;
    let deadline = Instant::now() + timeout;
    let mut last = None;
    let result = loop {
        let raw = client
            .read_opt(&state_node)
            .map_err(xs(format!("reading {state_node}")))?;
        last = raw
            .as_deref()
            .and_then(|r| XenbusState::from_node(r).ok())
            .or(last);
        let state = raw.as_deref().and_then(|r| XenbusState::from_node(r).ok());
        let failed = want < XenbusState::Closing
            && matches!(state, Some(XenbusState::Closing | XenbusState::Closed));
        if state == Some(want) {
            break Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || failed || raw.is_none() {
            break Err(ToolstackError::Timeout {
                backend: backend_dir.to_owned(),
                want,
                timeout,
                last: match (raw.is_some(), last) {
                    (false, _) => "absent".into(),
                    (true, Some(s)) => format!("{s} ({s:?})"),
                    (true, None) => "unreadable".into(),
                },
            });
        }
        // Any event (ours or another watch's) means: look again.
        if let Err(e) = client.next_event(Some(left)) {
            break Err(xs(format!("waiting on {state_node}"))(e));
        }
    };
    let _ = client.unwatch(&state_node, &token);
    result
}
