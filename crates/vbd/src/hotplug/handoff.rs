//! How a loop device made for the backend stays the published disk until
//! the backend holds it — whatever happens to this script, which libxl (or
//! the OOM killer) may SIGKILL at any instant.
//!
//! The invariant: while `physical-device` is published and a backend may
//! open it *without* checking `diskseq`, that number names the published
//! disk instance until `remove` runs or the backend holds it. So the device
//! is made according to the backend (vbd-protocol.md §2–3):
//!
//! - A backend that checks `diskseq` writes `opened` = "0" at probe (the
//!   diskseq kernel patch's blkback, this project's backend). The loop
//!   device keeps autoclear and the script holds its fd until `opened`
//!   turns "1": the device lives exactly as long as the backend holds it.
//!   Killed while waiting, the script's fd closes and the device detaches;
//!   the number may be reused, but this backend refuses a disk whose
//!   sequence number differs, so the record cannot misdirect it.
//! - Any other backend (stock blkback, which checks nothing): the device is
//!   attached persistent from the start. Nothing can make it vanish under
//!   the record, so there is nothing to wait for; `remove` detaches it,
//!   verified. A script killed before it published leaves a labelled
//!   device that `remove` (or `diskseq loop gc`) finds by its label.
//!
//! (Earlier versions attached with autoclear everywhere and, for stock
//! blkback, held the fd until its sysfs `physical_device` attribute showed
//! the number: a script killed during that wait left a published record
//! whose device autoclear had just freed — issue 10.)

use std::time::{Duration, Instant};

use xenstore::client::Client;

use super::config::HandoffPolicy;
use super::error::HotplugError;
use crate::schema::{node, BackendPath, XenbusState};

/// What keeps the published device the published disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Autoclear, held until the backend's `opened` node turns "1".
    Opened,
    /// Attached persistent; `remove` detaches it.
    Persistent,
}

impl Handoff {
    /// Picks the handoff from the policy and whether the backend wrote an
    /// `opened` node at probe.
    pub fn choose(policy: HandoffPolicy, has_opened_node: bool) -> Handoff {
        match policy {
            HandoffPolicy::Opened => Handoff::Opened,
            HandoffPolicy::Persistent => Handoff::Persistent,
            HandoffPolicy::Auto if has_opened_node => Handoff::Opened,
            HandoffPolicy::Auto => Handoff::Persistent,
        }
    }

    /// Whether the loop device is attached with autoclear.
    pub fn autoclear(self) -> bool {
        self == Handoff::Opened
    }
}

/// The token of the handoff watches.
pub const WATCH_TOKEN: &str = "block-diskseq-handoff";

/// The nodes the wait watches: `opened` and `state`. `add` registers the
/// watches, only for this handoff, in the publishing transaction's write
/// batch (before its commit), so the wait needs no round trip of its own.
pub fn watched_nodes(backend: &BackendPath) -> [String; 2] {
    [backend.node(node::OPENED), backend.node(node::STATE)]
}

/// `opened` and `state` as the publishing transaction read them: their
/// values at its commit (a change between the read and the commit fails
/// the commit), which came after the watches of [`watched_nodes`] were
/// registered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// The `opened` node.
    pub opened: Option<Vec<u8>>,
    /// The `state` node.
    pub state: Option<Vec<u8>>,
}

/// Waits until the backend's `opened` node is "1" (it holds the device),
/// the backend gives up, or `timeout` passes. Returns how long it waited.
///
/// The watches of [`watched_nodes`] must be registered on `client` (with
/// [`WATCH_TOKEN`]) before the commit of the transaction that read `known`;
/// they stay registered (the script drops the connection right after, and
/// with it the watches).
pub fn wait_opened(
    client: &mut Client,
    backend: &BackendPath,
    timeout: Duration,
    known: Known,
) -> Result<Duration, HotplugError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let [opened_path, state_path] = watched_nodes(backend);
    // The known values, each used once in place of a read of its own.
    let mut first_state: Option<Option<Vec<u8>>> = Some(known.state);
    let mut first_opened: Option<Option<Vec<u8>>> = Some(known.opened);
    super::fault::point("in-wait");
    // Which nodes to (re)read: both at first, then those a watch named.
    let (mut check_opened, mut check_state) = (true, true);
    // Each watch fires once when registered, before the commit at which
    // `known` held: those values cover that event, so the first event of
    // each watch needs no re-read (a later change fires the watch again).
    let (mut opened_registered, mut state_registered) = (true, true);
    loop {
        if check_opened {
            let opened = match first_opened.take() {
                Some(value) => value,
                None => client.read_opt(&opened_path)?,
            };
            if opened.as_deref() == Some(b"1") {
                return Ok(start.elapsed());
            }
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
                what: format!("{} = 1", node::OPENED),
            });
        }
        (check_opened, check_state) = (false, false);
        let mut event = client.next_event(Some(deadline - now))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_opened_node() {
        assert_eq!(Handoff::choose(HandoffPolicy::Auto, true), Handoff::Opened);
        assert_eq!(
            Handoff::choose(HandoffPolicy::Auto, false),
            Handoff::Persistent
        );
        assert_eq!(
            Handoff::choose(HandoffPolicy::Persistent, true),
            Handoff::Persistent
        );
        assert_eq!(
            Handoff::choose(HandoffPolicy::Opened, false),
            Handoff::Opened
        );
        assert!(Handoff::Opened.autoclear() && !Handoff::Persistent.autoclear());
    }
}
