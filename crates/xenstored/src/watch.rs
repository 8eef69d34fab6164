//! Watches: who wants to hear about which paths, and which changes fire.
//!
//! The index maps each watched path to its subscribers, so a change to
//! `/a/b/c` costs one lookup per ancestor (`/a/b/c`, `/a/b`, `/a`, `/`)
//! however many watches exist — fan-out to thousands of connections stays
//! proportional to the number of events actually sent.

use std::collections::HashMap;

use xenstore::perms::Perms;

use crate::access::{Caller, Need};

/// Identifies a connection inside the daemon.
pub type ConnId = usize;

/// A change that may fire watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The absolute (or special) path that changed.
    pub path: Box<str>,
    /// Fire only watches set exactly on `path` (each node removed below
    /// the root of an RM, and the special domain paths); otherwise also
    /// watches on every ancestor.
    pub exact: bool,
    /// A watcher hears of the change if any of these permission lists lets
    /// it read: the node's permissions (old and new ones for SET_PERMS) and
    /// its parent's — the C daemon's `watch_permitted`.
    pub readers: Vec<Perms>,
}

impl Change {
    /// Whether a watcher with identity `caller` may be told of this change.
    pub fn visible_to(&self, caller: &Caller) -> bool {
        caller.privileged || self.readers.iter().any(|p| caller.may(p, Need::Read))
    }
}

/// One registered watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub conn: ConnId,
    pub token: Box<str>,
    /// Bytes to cut from event paths: the caller's home plus `/` when the
    /// watch was set with a relative path, else 0.
    pub prefix_len: usize,
}

/// Every watch of every connection, by watched path.
#[derive(Debug, Default)]
pub struct WatchIndex {
    by_path: HashMap<Box<str>, Vec<Subscriber>>,
}

impl WatchIndex {
    pub fn add(&mut self, path: &str, subscriber: Subscriber) {
        self.by_path
            .entry(path.into())
            .or_default()
            .push(subscriber);
    }

    /// Removes the watch `(path, token)` of `conn`; false if there was none.
    pub fn remove(&mut self, path: &str, conn: ConnId, token: &str) -> bool {
        let Some(subs) = self.by_path.get_mut(path) else {
            return false;
        };
        let Some(pos) = subs
            .iter()
            .position(|s| s.conn == conn && &*s.token == token)
        else {
            return false;
        };
        subs.remove(pos);
        if subs.is_empty() {
            self.by_path.remove(path);
        }
        true
    }

    /// Calls `fire` for every watch `change` fires, with the event path the
    /// watcher must be sent (relative for relative watches).
    pub fn matches<'a>(
        &'a self,
        change: &'a Change,
        mut fire: impl FnMut(&'a Subscriber, &'a str),
    ) {
        let path: &str = &change.path;
        let mut visit = |watched: &str| {
            if let Some(subs) = self.by_path.get(watched) {
                for sub in subs {
                    fire(sub, path.get(sub.prefix_len..).unwrap_or(path));
                }
            }
        };
        visit(path);
        if change.exact || !path.starts_with('/') || path == "/" {
            return;
        }
        let mut ancestor = path;
        while let Some(cut) = ancestor.rfind('/') {
            ancestor = if cut == 0 { "/" } else { &ancestor[..cut] };
            visit(ancestor);
            if cut == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(conn: ConnId, token: &str) -> Subscriber {
        Subscriber {
            conn,
            token: token.into(),
            prefix_len: 0,
        }
    }

    fn fired(index: &WatchIndex, path: &str, exact: bool) -> Vec<(ConnId, String, String)> {
        let change = Change {
            path: path.into(),
            exact,
            readers: vec![],
        };
        let mut out = Vec::new();
        index.matches(&change, |s, p| {
            out.push((s.conn, s.token.to_string(), p.to_owned()))
        });
        out.sort();
        out
    }

    #[test]
    fn subtree_matching_not_prefix_matching() {
        let mut index = WatchIndex::default();
        index.add("/a", sub(1, "t"));
        index.add("/ab", sub(2, "t"));
        index.add("/", sub(3, "root"));
        let got = fired(&index, "/a/b", false);
        assert_eq!(
            got,
            vec![
                (1, "t".into(), "/a/b".into()),
                (3, "root".into(), "/a/b".into())
            ]
        );
        assert_eq!(fired(&index, "/a/b", true), vec![]);
        assert_eq!(fired(&index, "/a", true).len(), 1);
    }

    #[test]
    fn relative_watches_get_relative_paths() {
        let mut index = WatchIndex::default();
        let home = "/local/domain/5/";
        index.add(
            "/local/domain/5/device",
            Subscriber {
                conn: 1,
                token: "t".into(),
                prefix_len: home.len(),
            },
        );
        assert_eq!(
            fired(&index, "/local/domain/5/device/vbd", false),
            vec![(1, "t".into(), "device/vbd".into())]
        );
    }

    #[test]
    fn remove_only_the_named_watch() {
        let mut index = WatchIndex::default();
        index.add("/a", sub(1, "x"));
        index.add("/a", sub(1, "y"));
        assert!(index.remove("/a", 1, "x"));
        assert!(!index.remove("/a", 1, "x"));
        assert_eq!(
            fired(&index, "/a", false),
            vec![(1, "y".into(), "/a".into())]
        );
    }
}
