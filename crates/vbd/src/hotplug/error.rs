//! Why a run failed. Every message names the node, path or device involved;
//! it ends up in `hotplug-error`, where libxl shows it to the user.

use std::path::PathBuf;
use std::time::Duration;

use super::config::ConfigError;
use super::sharing::Conflict;
use crate::schema::{SchemaError, XenbusState};

/// A failed `add` or `remove`.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// argv or the environment is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// xenstore refused or the connection failed (the error names the path).
    #[error("xenstore: {0}")]
    Xenstore(#[from] xenstore::client::Error),
    /// A node has a value of the wrong shape.
    #[error("{backend}/{source}")]
    Schema {
        /// The backend directory.
        backend: String,
        /// The node and what is wrong.
        #[source]
        source: SchemaError,
    },
    /// The backend is not waiting for a device.
    #[error("{backend}: backend state is {state}, not waiting for a device")]
    NotWaiting {
        /// The backend directory.
        backend: String,
        /// What `state` holds ("missing" when absent).
        state: String,
    },
    /// `params` names something that cannot back a vbd.
    #[error("params {path}: {reason}")]
    BadTarget {
        /// The target.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// Opening or inspecting the target failed.
    #[error("params {path}: {op}: {source}")]
    Io {
        /// The target.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// The identity or loop layer failed.
    #[error("{0}")]
    Device(#[from] diskseq::Error),
    /// Mode `w` on something read-only: a "busy" failure like the stock script.
    #[error("{path} is read-only, and so will not be used read-write by a guest domain")]
    ReadOnly {
        /// The target.
        path: PathBuf,
    },
    /// Someone else uses the device incompatibly: "busy".
    #[error(transparent)]
    Sharing(#[from] Conflict),
    /// mountinfo could not be read or parsed.
    #[error("{path}: {detail}")]
    MountInfo {
        /// The mountinfo file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The inputs changed between reading them and publishing.
    #[error("{backend}: {node} changed while the device was being prepared")]
    InputsChanged {
        /// The backend directory.
        backend: String,
        /// The node that changed.
        node: &'static str,
    },
    /// The backend went away during the handoff wait.
    #[error("{backend}: backend directory removed before the backend opened the device")]
    BackendGone {
        /// The backend directory.
        backend: String,
    },
    /// The backend gave up (e.g. it refused the device).
    #[error("{backend}: backend switched to state {state} before opening the device")]
    BackendClosed {
        /// The backend directory.
        backend: String,
        /// The state it reached.
        state: XenbusState,
    },
    /// The backend did not prove it opened the device in time.
    #[error("{backend}: backend did not open the device within {waited:?} (waited for {what})")]
    HandoffTimeout {
        /// The backend directory.
        backend: String,
        /// How long.
        waited: Duration,
        /// The signal.
        what: String,
    },
}

impl HotplugError {
    /// The `hotplug-status` this failure publishes: `busy` for a sharing
    /// conflict or a read-only target (as the stock script), else `error`.
    pub fn status(&self) -> &'static str {
        match self {
            HotplugError::Sharing(_) | HotplugError::ReadOnly { .. } => "busy",
            _ => "error",
        }
    }
}
