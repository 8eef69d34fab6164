//! Closing the handoff window: the script keeps its fd on the device (which
//! pins a loop device's binding) until the backend proves it holds the
//! device itself, so no other disk can slip in under the published number.
//!
//! Two proofs exist in the wild (vbd-protocol.md §2–3, real-xen.md):
//! - the `opened` node ("0" at probe, "1" once open): the diskseq kernel
//!   patch's blkback and this project's backend write it;
//! - stock Linux blkback creates `/sys/bus/xen-backend/devices/vbd-<fe>-<devid>`
//!   at probe and adds its `physical_device` attribute only after it opened
//!   the device: the attribute showing the published `maj:min` is the proof.
//!
//! While waiting, the backend's `state` is watched too: a backend that gives
//! up (Closing, e.g. on a diskseq mismatch) or a directory that disappears
//! ends the wait at once instead of at the timeout.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diskseq::DevNum;
use xenstore::client::Client;

use super::config::HandoffPolicy;
use super::error::HotplugError;
use crate::schema::{node, BackendPath, XenbusState};

/// What the script will wait for after publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The backend's `opened` node turning "1".
    Opened,
    /// The stock blkback sysfs attribute in this directory.
    Sysfs(PathBuf),
    /// Nothing can prove the handoff: make the device persistent instead.
    None,
}

/// The blkback sysfs directory for a backend under `sysfs_root`.
pub fn sysfs_dir(sysfs_root: &Path, backend: &BackendPath) -> PathBuf {
    sysfs_root
        .join("bus/xen-backend/devices")
        .join(backend.sysfs_name())
}

/// Picks the signal: the policy, whether the backend wrote an `opened` node
/// at probe, and whether stock blkback's sysfs directory exists.
pub fn choose(policy: HandoffPolicy, has_opened_node: bool, sysfs: PathBuf) -> Signal {
    match policy {
        HandoffPolicy::Opened => Signal::Opened,
        HandoffPolicy::Sysfs => Signal::Sysfs(sysfs),
        HandoffPolicy::Off => Signal::None,
        HandoffPolicy::Auto if has_opened_node => Signal::Opened,
        HandoffPolicy::Auto if sysfs.is_dir() => Signal::Sysfs(sysfs),
        HandoffPolicy::Auto => Signal::None,
    }
}

/// True when blkback's `physical_device` attribute (`%x:%x`) names `dev`.
pub fn sysfs_shows(dir: &Path, dev: DevNum) -> bool {
    std::fs::read_to_string(dir.join("physical_device"))
        .ok()
        .and_then(|text| DevNum::parse_xenstore(text.trim()).ok())
        == Some(dev)
}

/// How often the sysfs attribute is polled (sysfs attributes cannot be
/// watched); the xenstore watch on `state` doubles as the sleep.
const SYSFS_POLL: Duration = Duration::from_millis(5);
/// The token of the handoff watches.
pub const WATCH_TOKEN: &str = "block-diskseq-handoff";

/// The nodes the wait watches: `opened` and `state`. `add` registers the
/// watches in its first round trip, before it knows which signal applies
/// (a watch on a node that never changes costs nothing), so the wait needs
/// no round trip of its own.
pub fn watched_nodes(backend: &BackendPath) -> [String; 2] {
    [backend.node(node::OPENED), backend.node(node::STATE)]
}

/// `opened` and `state` as the publishing transaction read them: their
/// values at its commit, which came after the watches of
/// [`watched_nodes`] were registered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// The `opened` node.
    pub opened: Option<Vec<u8>>,
    /// The `state` node.
    pub state: Option<Vec<u8>>,
}

/// Waits until the backend proves it holds `dev`, the backend gives up, or
/// `timeout` passes. Returns how long it waited.
///
/// The watches of [`watched_nodes`] must be registered on `client` (with
/// [`WATCH_TOKEN`]) before `known` was read; they stay registered (the
/// script drops the connection right after, and with it the watches).
pub fn wait(
    client: &mut Client,
    backend: &BackendPath,
    signal: &Signal,
    dev: DevNum,
    timeout: Duration,
    known: Known,
) -> Result<Duration, HotplugError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let [opened_path, state_path] = watched_nodes(backend);
    if matches!(signal, Signal::None) {
        return Ok(Duration::ZERO);
    }
    // The known values, each used once in place of a read of its own.
    let mut first_state: Option<Option<Vec<u8>>> = Some(known.state);
    let mut first_opened: Option<Option<Vec<u8>>> = Some(known.opened);
    super::fault::point("in-wait");
    // Which nodes to (re)read: both at first, then those a watch named.
    let (mut check_opened, mut check_state) = (true, true);
    // Each watch fires once when registered, before `known` was read: those
    // values cover that event, so the first event of each watch needs no
    // re-read (a later change fires the watch again).
    let (mut opened_registered, mut state_registered) = (true, true);
    loop {
        let done = match signal {
            Signal::Opened => {
                check_opened
                    && match first_opened.take() {
                        Some(value) => value,
                        None => client.read_opt(&opened_path)?,
                    }
                    .as_deref()
                        == Some(b"1")
            }
            Signal::Sysfs(dir) => sysfs_shows(dir, dev),
            Signal::None => true,
        };
        if done {
            return Ok(start.elapsed());
        }
        if check_state {
            let state = match first_state.take() {
                Some(value) => value,
                None => client.read_opt(&state_path)?,
            };
            match state {
                None => {
                    return Err(HotplugError::BackendGone {
                        backend: backend.dir(),
                    })
                }
                Some(raw) => {
                    if let Ok(state) = XenbusState::from_node(&raw) {
                        if state >= XenbusState::Closing {
                            return Err(HotplugError::BackendClosed {
                                backend: backend.dir(),
                                state,
                            });
                        }
                    }
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HotplugError::HandoffTimeout {
                backend: backend.dir(),
                waited: timeout,
                what: describe(signal, dev),
            });
        }
        let mut nap = deadline - now;
        if matches!(signal, Signal::Sysfs(_)) {
            nap = nap.min(SYSFS_POLL);
        }
        (check_opened, check_state) = (false, false);
        let mut event = client.next_event(Some(nap))?;
        while let Some(fired) = event {
            // Relative watches report relative paths: compare by suffix.
            let names = |path: &str| fired.path.ends_with(path) || path.ends_with(&fired.path);
            if names(&opened_path) {
                check_opened |= !std::mem::take(&mut opened_registered);
            } else if names(&state_path) {
                check_state |= !std::mem::take(&mut state_registered);
            }
            // Drain whatever else queued up: one check covers all of it.
            event = if client.pending_events() > 0 {
                client.next_event(Some(Duration::ZERO))?
            } else {
                None
            };
        }
    }
}

/// What the wait was for, for the timeout message.
pub fn describe(signal: &Signal, dev: DevNum) -> String {
    match signal {
        Signal::Opened => format!("{} = 1", node::OPENED),
        Signal::Sysfs(dir) => {
            format!("{}/physical_device = {}", dir.display(), dev.to_xenstore())
        }
        Signal::None => "nothing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_opened_then_sysfs_then_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let present = tmp.path().to_path_buf();
        let absent = tmp.path().join("vbd-1-768");
        assert_eq!(
            choose(HandoffPolicy::Auto, true, present.clone()),
            Signal::Opened
        );
        assert_eq!(
            choose(HandoffPolicy::Auto, false, present.clone()),
            Signal::Sysfs(present.clone())
        );
        assert_eq!(
            choose(HandoffPolicy::Auto, false, absent.clone()),
            Signal::None
        );
        assert_eq!(
            choose(HandoffPolicy::Off, true, present.clone()),
            Signal::None
        );
        assert_eq!(
            choose(HandoffPolicy::Opened, false, absent.clone()),
            Signal::Opened
        );
        assert_eq!(
            choose(HandoffPolicy::Sysfs, true, absent.clone()),
            Signal::Sysfs(absent)
        );
    }

    #[test]
    fn sysfs_attribute_must_name_the_published_device() {
        let dir = tempfile::tempdir().unwrap();
        let dev = DevNum {
            major: 7,
            minor: 12,
        };
        assert!(!sysfs_shows(dir.path(), dev));
        std::fs::write(dir.path().join("physical_device"), "7:b\n").unwrap();
        assert!(!sysfs_shows(dir.path(), dev));
        std::fs::write(dir.path().join("physical_device"), "7:c\n").unwrap();
        assert!(sysfs_shows(dir.path(), dev));
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            sysfs_dir(root.path(), &BackendPath::new(3, 768)),
            root.path().join("bus/xen-backend/devices/vbd-3-768")
        );
    }
}
