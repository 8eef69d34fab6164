//! Watches: registering and removing them, and the queue of events a
//! client hands out in the order the daemon sent them.
//!
//! Events met while the engine waits for a reply are queued
//! ([`EventQueue`]); [`Client::next_event`] drains the queue before it
//! reads from the daemon, so none is lost or reordered. Removing a watch
//! also drops its queued events, as libxenstore does, so none arrives
//! after `unwatch` returns.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::engine::{BatchRequest, Outcomes};
use super::nodes::{checked, not_found_as_none};
use super::{Client, Error, ErrorKind, Result};
use crate::path::XsPath;
use crate::wire::{self, MsgType};

/// A watch firing: the changed path (relative when the watch was registered
/// relative) and the token given to [`Client::watch`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// Events read while waiting for replies, oldest first.
#[derive(Debug, Default)]
pub(crate) struct EventQueue(VecDeque<WatchEvent>);

impl EventQueue {
    pub(crate) fn push(&mut self, event: WatchEvent) {
        self.0.push_back(event);
    }

    fn pop(&mut self) -> Option<WatchEvent> {
        self.0.pop_front()
    }

    /// Drops the queued events of the watch on `path` with `token`.
    fn forget_watch(&mut self, path: &str, token: &str) {
        self.0
            .retain(|e| !(e.token == token && event_is_under(&e.path, path)));
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl Client {
    /// Registers a watch on `path` (absolute, relative or special). The daemon
    /// fires it once at once; that event arrives through
    /// [`next_event`](Self::next_event) like every other.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<()> {
        check_token(MsgType::Watch, path, token)?;
        self.engine()
            .request(
                MsgType::Watch,
                0,
                wire::watch_payload(path, token),
                Some(path),
            )
            .map(drop)
    }

    /// Registers `watches` (path, token) and then reads `paths`, all in one
    /// round trip. A read that follows the registration cannot miss a
    /// change: either it sees the new value or the watch fires after it.
    /// Missing nodes are `None`; the first failure, in order, is returned.
    pub fn watch_and_read_many(
        &mut self,
        watches: &[(&str, &str)],
        paths: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let outcomes = self.watch_read_batch(watches, paths)?;
        watched_values(outcomes, watches.len())
    }

    /// One pipelined batch: `watches`, then reads of `paths`; their
    /// outcomes, in order.
    fn watch_read_batch(&mut self, watches: &[(&str, &str)], paths: &[&str]) -> Result<Outcomes> {
        let mut requests = watch_requests(watches)?;
        for path in paths {
            checked(MsgType::Read, path)?;
            requests.push((MsgType::Read, wire::path_payload(path), *path));
        }
        self.engine().request_many(0, &requests)
    }

    /// Removes a watch and drops its events still queued here, as
    /// libxenstore does, so none arrives after `unwatch` returns.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<()> {
        check_token(MsgType::Unwatch, path, token)?;
        let engine = self.engine();
        engine.request(
            MsgType::Unwatch,
            0,
            wire::watch_payload(path, token),
            Some(path),
        )?;
        engine.events.forget_watch(path, token);
        Ok(())
    }

    /// Removes every watch of this connection, and the queued events.
    pub fn reset_watches(&mut self) -> Result<()> {
        let engine = self.engine();
        engine.request(MsgType::ResetWatches, 0, Vec::new(), None)?;
        engine.events.clear();
        Ok(())
    }

    /// The next watch event: a queued one first, else one read from the
    /// daemon within `timeout` (`None`: wait forever). `Ok(None)` on timeout.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<WatchEvent>> {
        let engine = self.engine();
        if let Some(event) = engine.events.pop() {
            return Ok(Some(event));
        }
        // A timeout too large to add to now means: wait forever.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        engine.recv_event(deadline)
    }

    /// A blocking iterator over watch events; ends after the first error.
    pub fn events(&mut self) -> Events<'_> {
        Events {
            client: self,
            failed: false,
        }
    }

    /// Number of events already received and queued.
    pub fn pending_events(&self) -> usize {
        self.scope.events.len()
    }
}

/// The WATCH requests of a batch, every one validated before anything is
/// sent.
pub(crate) fn watch_requests<'p>(watches: &[(&'p str, &str)]) -> Result<Vec<BatchRequest<'p>>> {
    watches
        .iter()
        .map(|(path, token)| {
            check_token(MsgType::Watch, path, token)?;
            Ok((MsgType::Watch, wire::watch_payload(path, token), *path))
        })
        .collect()
}

/// The read values of a watch-and-read batch whose first `watches`
/// outcomes are registrations: the first failure, in order, or the values
/// (missing nodes `None`).
fn watched_values(mut outcomes: Outcomes, watches: usize) -> Result<Vec<Option<Vec<u8>>>> {
    let reads = outcomes.split_off(watches);
    outcomes
        .into_iter()
        .try_for_each(|outcome| outcome.map(drop))?;
    reads.into_iter().map(not_found_as_none).collect()
}

/// Blocking iterator over a client's watch events.
#[derive(Debug)]
pub struct Events<'c> {
    client: &'c mut Client,
    failed: bool,
}

impl Iterator for Events<'_> {
    type Item = Result<WatchEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.client.next_event(None) {
            Ok(event) => event.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

fn check_token(t: MsgType, path: &str, token: &str) -> Result<()> {
    XsPath::validate_request(path).map_err(|e| Error::for_request(t, Some(path), e))?;
    if token.as_bytes().contains(&0) {
        return Err(Error::for_request(
            t,
            Some(path),
            ErrorKind::InvalidArgument(format!("watch token {token:?} contains a NUL byte")),
        ));
    }
    Ok(())
}

/// Whether an event path belongs to a watch on `watch_path` (both written
/// the same way, absolute or relative).
fn event_is_under(event_path: &str, watch_path: &str) -> bool {
    event_path == watch_path
        || watch_path == "/"
        || event_path
            .strip_prefix(watch_path)
            .is_some_and(|rest| rest.starts_with('/'))
}

pub(crate) fn parse_event(payload: &[u8]) -> Option<WatchEvent> {
    let mut fields = wire::fields(payload);
    let path = std::str::from_utf8(fields.next()?).ok()?.to_owned();
    let token = std::str::from_utf8(fields.next()?).ok()?.to_owned();
    Some(WatchEvent { path, token })
}

pub(crate) fn bad_event(payload: &[u8]) -> ErrorKind {
    ErrorKind::Protocol(format!(
        "malformed watch event {:?}",
        String::from_utf8_lossy(payload)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_event_subtree_rule_for_queued_events() {
        assert!(event_is_under("/a", "/a"));
        assert!(event_is_under("/a/b", "/a"));
        assert!(!event_is_under("/ab", "/a"));
        assert!(event_is_under("/x", "/"));
        assert!(event_is_under("device/vbd", "device"));
        assert!(event_is_under("@releaseDomain", "@releaseDomain"));
    }
}
