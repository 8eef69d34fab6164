//! Loop devices the script attached that nothing will detach any more.
//!
//! Every loop device `add` attaches carries its backend's label
//! (`diskseq-vbd:…`). `remove` detaches what its backend's `add` left, but
//! libxl runs `remove` once: if that run is killed too, or the toolstack
//! deletes the backend directory without running it, the device stays bound.
//! [`survey`] finds each labelled device and judges it against the backend's
//! record, read in one transaction; [`reap`] detaches one, verified on its fd
//! (number, diskseq, backing file and label as surveyed). A device without
//! our label is never listed, so never touched.

use std::fmt;

use diskseq::{LoopInfo, LoopLabel};
use xenstore::client::Client;

use super::error::HotplugError;
use crate::schema::{self, node, BackendPath};

/// A labelled loop device and what its backend says of it.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// The device as the kernel describes it.
    pub info: LoopInfo,
    /// Its label.
    pub label: LoopLabel,
    /// The backend directory the label names.
    pub backend: BackendPath,
    /// Whether it is still needed.
    pub verdict: Verdict,
}

/// Whether a labelled device is still needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its backend's record names this very instance.
    InUse,
    /// Its backend exists without a record: an `add` is running, or was
    /// killed and its `remove` (which detaches the device) is still to come.
    Pending,
    /// Nothing will detach it: its backend directory is gone, or the
    /// backend's record names another device.
    Leaked {
        /// Which of the two.
        reason: String,
    },
}

impl Verdict {
    /// Whether `gc` detaches the device.
    pub fn is_leaked(&self) -> bool {
        matches!(self, Verdict::Leaked { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::InUse => f.write_str("in use: its backend's record names it"),
            Verdict::Pending => f.write_str(
                "pending: its backend has no record yet (an add running, or killed: its remove detaches it)",
            ),
            Verdict::Leaked { reason } => write!(f, "leaked: {reason}"),
        }
    }
}

/// Every loop device carrying a vbd label, judged against its backend's
/// record (one transaction for all of them, so the verdicts are of one
/// moment). Relative labels name backends of the domain `client` is in.
/// `backend_domain` narrows the survey to labels naming that backend domain
/// explicitly (an absolute `XENBUS_PATH`).
pub fn survey(
    client: &mut Client,
    backend_domain: Option<u32>,
) -> Result<Vec<Labelled>, HotplugError> {
    let mut labelled = Vec::new();
    for info in diskseq::list_loops()? {
        let Some(label) = info.label.clone() else {
            continue;
        };
        let Some(backend) = BackendPath::from_loop_label(&label) else {
            continue;
        };
        if backend_domain.is_some_and(|be| backend.backend_domid() != Some(be)) {
            continue;
        }
        labelled.push((info, label, backend));
    }
    const READ: [&str; 3] = [node::STATE, node::PHYSICAL_DEVICE, node::DISKSEQ];
    let paths: Vec<String> = labelled
        .iter()
        .flat_map(|(_, _, backend)| READ.iter().map(|n| backend.node(n)))
        .collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let values = if refs.is_empty() {
        Vec::new()
    } else {
        client.read_many_atomically(&refs)?
    };
    Ok(labelled
        .into_iter()
        .zip(values.chunks(READ.len()))
        .map(|((info, label, backend), values)| {
            let verdict = judge(&info, &backend, values);
            Labelled {
                info,
                label,
                backend,
                verdict,
            }
        })
        .collect())
}

/// The verdict from the backend's `state`, `physical-device`, `diskseq`.
fn judge(info: &LoopInfo, backend: &BackendPath, values: &[Option<Vec<u8>>]) -> Verdict {
    if values[0].is_none() {
        return Verdict::Leaked {
            reason: format!("backend directory {backend} is gone"),
        };
    }
    let Some(raw_dev) = &values[1] else {
        return Verdict::Pending;
    };
    let dev = schema::physical_device_from_node(raw_dev).ok();
    let seq = values[2]
        .as_deref()
        .and_then(|raw| schema::diskseq_from_node(raw).ok());
    match (dev, seq) {
        (Some(dev), Some(seq)) if dev == info.id.dev() && seq == info.id.seq => Verdict::InUse,
        (Some(dev), Some(seq)) => Verdict::Leaked {
            reason: format!("{backend} publishes another device: {dev} diskseq {seq}"),
        },
        // A record we cannot read is not evidence of a leak: left alone.
        _ => Verdict::Pending,
    }
}

/// Detaches a surveyed device, if it still is exactly what was surveyed.
pub fn reap(device: &Labelled) -> Result<(), diskseq::Error> {
    diskseq::detach_labeled(&device.info.id, Some(device.info.backing), &device.label)
}
