//! How a backend is set up, what it reports, and how it fails.

use std::sync::Arc;
use std::time::Duration;

use diskseq::DiskId;
use vbd::schema::BackendPath;

use crate::backend::disk::OpenMethod;
use crate::backend::machine::{OpenRequest, ProbeFeatures};
use crate::backend::policy::DiskseqPolicy;
use crate::backend::Fatal;

/// Called on the backend thread after the `physical-device` record was read
/// and before the device is opened. The demo uses it to reproduce, on cue,
/// the race the diskseq check closes (the device number is reused in this
/// exact window); production never sets it. An error is fatal for the
/// device, like a failed open.
pub type BeforeOpen = Arc<dyn Fn(&BackendPath, &OpenRequest) -> Result<(), Fatal> + Send + Sync>;

/// Where the backend's log lines go.
pub type Logger = Arc<dyn Fn(&str) + Send + Sync>;

/// How a backend behaves.
#[derive(Clone)]
pub struct BackendConfig {
    /// The backend domain: devices live under `/local/domain/<domid>/backend/vbd`.
    pub domid: u32,
    /// What the `diskseq` node means.
    pub policy: DiskseqPolicy,
    /// How the published device is opened.
    pub open_method: OpenMethod,
    /// Nodes advertised at probe.
    pub features: ProbeFeatures,
    /// Hook before each open (see [`BeforeOpen`]).
    pub before_open: Option<BeforeOpen>,
    /// Log sink; stderr by default.
    pub logger: Logger,
    /// How often the loop checks for a stop request while idle.
    pub stop_poll: Duration,
}

impl BackendConfig {
    /// blkback's behaviour with the diskseq patches, as backend domain `domid`.
    pub fn new(domid: u32) -> Self {
        BackendConfig {
            domid,
            policy: DiskseqPolicy::Verify,
            open_method: OpenMethod::ByNumber,
            features: ProbeFeatures::host_default(),
            before_open: None,
            logger: Arc::new(|line| eprintln!("diskseq backend: {line}")),
            stop_poll: Duration::from_millis(50),
        }
    }
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConfig")
            .field("domid", &self.domid)
            .field("policy", &self.policy)
            .field("open_method", &self.open_method)
            .field("features", &self.features)
            .field("before_open", &self.before_open.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the backend stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The xenstore connection failed (daemon gone, protocol error).
    #[error("backend domain {domid}: xenstore {what}: {source}")]
    Xenstore {
        /// The backend domain.
        domid: u32,
        /// What the loop was doing.
        what: String,
        /// The client's error.
        #[source]
        source: xenstore::client::Error,
    },
    /// The backend thread panicked (a bug).
    #[error("backend thread panicked")]
    Panicked,
    /// The backend thread could not be started.
    #[error("starting the backend thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// A disk the backend holds open, as observers see it.
#[derive(Debug, Clone)]
pub struct HeldDisk {
    /// The device directory.
    pub path: BackendPath,
    /// The identity proven on the held fd.
    pub id: DiskId,
}
