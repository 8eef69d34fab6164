//! The node tree and the two ways of changing it.
//!
//! Nodes live in one hash map keyed by their full path; each node also keeps
//! its children's names in creation order, as the C daemon does (DIRECTORY
//! and `xenstore-ls` list children in that order). The map gives O(1)
//! lookups for the hot READ/WRITE path; the child lists give DIRECTORY
//! without scanning.
//!
//! Operations are written once, against [`Tree`], and run either
//! [`Direct`]ly on the store (plain requests: changed in place, no copies) or
//! inside a transaction through a [`TxView`] over an [`Overlay`]: written
//! nodes are copied into the overlay, every node looked at is remembered with
//! the generation it had, and [`Store::commit`] refuses (EAGAIN) when any of
//! those changed meanwhile — the C daemon's rule.

use std::collections::HashMap;

use xenstore::path::{INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use xenstore::perms::Perms;

use crate::watch::Change;

/// Size of the C daemon's node record header (`struct xs_tdb_record_hdr`),
/// part of the size the entry-size quota limits.
const RECORD_HEADER: usize = 24;
/// Size of one permission entry in the C daemon's node record.
const RECORD_PERM: usize = 8;

/// The part of [`Node::record_size`] a permission list takes.
pub fn record_perms_size(perms: &Perms) -> usize {
    RECORD_PERM * perms.0.len()
}

/// One xenstore node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub value: Box<[u8]>,
    pub perms: Perms,
    /// Changes whenever the node is written; transactions compare it.
    pub generation: u64,
    /// Names of the children, in creation order.
    pub children: Vec<Box<str>>,
}

impl Node {
    /// A node with a value and permissions, no children yet.
    pub fn new(value: &[u8], perms: Perms) -> Self {
        Node {
            value: value.into(),
            perms,
            generation: 0,
            children: Vec::new(),
        }
    }

    /// The size the C daemon accounts for this node's record (header,
    /// permissions, value, NUL-terminated child names): what the
    /// entry-size quota limits.
    pub fn record_size(&self) -> usize {
        RECORD_HEADER
            + record_perms_size(&self.perms)
            + self.value.len()
            + self.children.iter().map(|c| c.len() + 1).sum::<usize>()
    }

    /// The children as a DIRECTORY reply: each name followed by a NUL.
    pub fn children_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.children.iter().map(|c| c.len() + 1).sum());
        for child in &self.children {
            out.extend_from_slice(child.as_bytes());
            out.push(0);
        }
        out
    }
}

/// A transaction could not commit: a node it used changed meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub path: String,
}

/// The whole database.
#[derive(Debug)]
pub struct Store {
    nodes: HashMap<Box<str>, Node>,
    next_generation: u64,
    /// How many nodes each domain owns (first permission entry), for the
    /// entries quota.
    owned: HashMap<u32, usize>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// The C daemon's initial tree: `/`, `/tool`, `/tool/xenstored`, plus
    /// the special nodes whose permissions decide who sees domain events.
    pub fn new() -> Self {
        let mut store = Store {
            nodes: HashMap::new(),
            next_generation: 0,
            owned: HashMap::new(),
        };
        let dom0 = || Perms::owner_only(0);
        for (path, child) in [
            ("/", Some("tool")),
            ("/tool", Some("xenstored")),
            ("/tool/xenstored", None),
            (INTRODUCE_DOMAIN, None),
            (RELEASE_DOMAIN, None),
        ] {
            let mut node = Node::new(b"", dom0());
            node.children.extend(child.map(Box::from));
            store.insert(path, node);
        }
        store
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Number of nodes, the special ones included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Nodes owned by `domid`.
    pub fn owned_by(&self, domid: u32) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    fn bump_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn count_owner(&mut self, domid: u32, delta: isize) {
        let count = self.owned.entry(domid).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.owned.remove(&domid);
        }
    }

    fn insert(&mut self, path: &str, mut node: Node) {
        node.generation = self.bump_generation();
        self.count_owner(node.perms.owner(), 1);
        if let Some(old) = self.nodes.insert(path.into(), node) {
            self.count_owner(old.perms.owner(), -1);
        }
    }

    fn remove(&mut self, path: &str) {
        if let Some(old) = self.nodes.remove(path) {
            self.count_owner(old.perms.owner(), -1);
        }
    }

    /// Applies a transaction's overlay unless a node it looked at or wrote
    /// changed since (then nothing is applied). Returns the transaction's
    /// watch events, to be delivered now.
    pub fn commit(&mut self, overlay: Overlay) -> Result<Vec<Change>, Conflict> {
        for (path, seen) in &overlay.seen {
            if self.nodes.get(path).map(|n| n.generation) != *seen {
                return Err(Conflict {
                    path: path.to_string(),
                });
            }
        }
        for (path, entry) in overlay.written {
            match entry {
                Some(node) => self.insert(&path, node),
                None => self.remove(&path),
            }
        }
        Ok(overlay.changes)
    }
}

/// The view an operation works on: the live store, or a transaction.
pub trait Tree {
    /// The node at `path`, remembering that this operation depended on it.
    fn node(&mut self, path: &str) -> Option<&Node>;
    /// The node at `path` without recording a dependency (for deciding who
    /// may see a watch event, which does not make the result depend on it).
    fn peek(&self, path: &str) -> Option<&Node>;
    /// Adds a node that does not exist yet.
    fn create(&mut self, path: &str, node: Node);
    /// Removes one node (its children and its parent's child list are the
    /// caller's business).
    fn delete(&mut self, path: &str);
    /// Changes an existing node in place; does nothing if it is missing.
    fn update(&mut self, path: &str, change: impl FnOnce(&mut Node));
    /// Nodes `domid` owns, as this view sees them.
    fn owned_by(&self, domid: u32) -> usize;
    /// Queues a watch event for this change.
    fn record(&mut self, change: Change);
}

/// Changes the store in place; events are collected for immediate delivery.
pub struct Direct<'a> {
    store: &'a mut Store,
    changes: &'a mut Vec<Change>,
}

impl<'a> Direct<'a> {
    pub fn new(store: &'a mut Store, changes: &'a mut Vec<Change>) -> Self {
        Direct { store, changes }
    }
}

impl Tree for Direct<'_> {
    fn node(&mut self, path: &str) -> Option<&Node> {
        self.store.get(path)
    }

    fn peek(&self, path: &str) -> Option<&Node> {
        self.store.get(path)
    }

    fn create(&mut self, path: &str, node: Node) {
        self.store.insert(path, node);
    }

    fn delete(&mut self, path: &str) {
        self.store.remove(path);
    }

    fn update(&mut self, path: &str, change: impl FnOnce(&mut Node)) {
        let generation = self.store.bump_generation();
        let Some(node) = self.store.nodes.get_mut(path) else {
            return;
        };
        let owner = node.perms.owner();
        change(node);
        node.generation = generation;
        let new_owner = node.perms.owner();
        if new_owner != owner {
            self.store.count_owner(owner, -1);
            self.store.count_owner(new_owner, 1);
        }
    }

    fn owned_by(&self, domid: u32) -> usize {
        self.store.owned_by(domid)
    }

    fn record(&mut self, change: Change) {
        self.changes.push(change);
    }
}

/// A transaction's private state: what it wrote, what it depended on, and
/// the events it will fire at commit.
#[derive(Debug, Default)]
pub struct Overlay {
    /// Nodes written (`Some`) or deleted (`None`) by the transaction.
    written: HashMap<Box<str>, Option<Node>>,
    /// Every node the transaction looked at or wrote, with the generation it
    /// had in the store the first time (`None`: it did not exist).
    seen: HashMap<Box<str>, Option<u64>>,
    /// Change in owned-node counts per domain relative to the store.
    owned_delta: HashMap<u32, isize>,
    changes: Vec<Change>,
}

/// A transaction's view: the store as seen through its overlay.
pub struct TxView<'a> {
    store: &'a Store,
    overlay: &'a mut Overlay,
}

impl<'a> TxView<'a> {
    pub fn new(store: &'a Store, overlay: &'a mut Overlay) -> Self {
        TxView { store, overlay }
    }

    fn note(&mut self, path: &str) {
        if !self.overlay.seen.contains_key(path) {
            let generation = self.store.get(path).map(|n| n.generation);
            self.overlay.seen.insert(path.into(), generation);
        }
    }

    fn count_owner(&mut self, domid: u32, delta: isize) {
        *self.overlay.owned_delta.entry(domid).or_insert(0) += delta;
    }
}

impl Tree for TxView<'_> {
    fn node(&mut self, path: &str) -> Option<&Node> {
        self.note(path);
        self.peek(path)
    }

    fn peek(&self, path: &str) -> Option<&Node> {
        match self.overlay.written.get(path) {
            Some(entry) => entry.as_ref(),
            None => self.store.get(path),
        }
    }

    fn create(&mut self, path: &str, node: Node) {
        self.note(path);
        if let Some(old) = self.peek(path) {
            let owner = old.perms.owner();
            self.count_owner(owner, -1);
        }
        self.count_owner(node.perms.owner(), 1);
        self.overlay.written.insert(path.into(), Some(node));
    }

    fn delete(&mut self, path: &str) {
        self.note(path);
        if let Some(old) = self.peek(path) {
            let owner = old.perms.owner();
            self.count_owner(owner, -1);
        }
        self.overlay.written.insert(path.into(), None);
    }

    fn update(&mut self, path: &str, change: impl FnOnce(&mut Node)) {
        self.note(path);
        if !self.overlay.written.contains_key(path) {
            let Some(node) = self.store.get(path) else {
                return;
            };
            self.overlay.written.insert(path.into(), Some(node.clone()));
        }
        let Some(Some(node)) = self.overlay.written.get_mut(path) else {
            return;
        };
        let owner = node.perms.owner();
        change(node);
        let new_owner = node.perms.owner();
        if new_owner != owner {
            self.count_owner(owner, -1);
            self.count_owner(new_owner, 1);
        }
    }

    fn owned_by(&self, domid: u32) -> usize {
        let delta = self.overlay.owned_delta.get(&domid).copied().unwrap_or(0);
        self.store.owned_by(domid).saturating_add_signed(delta)
    }

    fn record(&mut self, change: Change) {
        self.overlay.changes.push(change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(value: &str) -> Node {
        Node::new(value.as_bytes(), Perms::owner_only(0))
    }

    #[test]
    fn initial_tree_matches_the_c_daemon() {
        let store = Store::new();
        assert_eq!(store.get("/").unwrap().children, vec![Box::from("tool")]);
        assert!(store.get("/tool/xenstored").is_some());
        assert!(store.get(INTRODUCE_DOMAIN).is_some());
        assert_eq!(store.owned_by(0), 5);
    }

    #[test]
    fn direct_updates_bump_generation_and_count_owners() {
        let mut store = Store::new();
        let mut changes = Vec::new();
        let mut t = Direct::new(&mut store, &mut changes);
        t.create("/a", leaf("x"));
        let before = t.node("/a").unwrap().generation;
        t.update("/a", |n| n.perms = Perms::owner_only(7));
        assert!(t.node("/a").unwrap().generation > before);
        assert_eq!(t.owned_by(7), 1);
        t.delete("/a");
        assert_eq!(t.owned_by(7), 0);
    }

    #[test]
    fn transaction_is_invisible_until_commit() {
        let mut store = Store::new();
        let mut overlay = Overlay::default();
        let mut tx = TxView::new(&store, &mut overlay);
        tx.create("/a", leaf("x"));
        assert_eq!(&*tx.node("/a").unwrap().value, b"x");
        assert!(store.get("/a").is_none());
        store.commit(overlay).unwrap();
        assert_eq!(&*store.get("/a").unwrap().value, b"x");
    }

    #[test]
    fn commit_conflicts_when_a_seen_node_changed() {
        let mut store = Store::new();
        let mut overlay = Overlay::default();
        TxView::new(&store, &mut overlay).node("/tool");
        let mut changes = Vec::new();
        Direct::new(&mut store, &mut changes)
            .update("/tool", |n| n.value = b"new".as_slice().into());
        assert_eq!(
            store.commit(overlay),
            Err(Conflict {
                path: "/tool".into()
            })
        );
    }

    #[test]
    fn commit_conflicts_when_a_missing_node_appeared() {
        let mut store = Store::new();
        let mut overlay = Overlay::default();
        assert!(TxView::new(&store, &mut overlay).node("/x").is_none());
        let mut changes = Vec::new();
        Direct::new(&mut store, &mut changes).create("/x", leaf(""));
        assert!(store.commit(overlay).is_err());
    }

    #[test]
    fn record_size_counts_like_the_c_daemon() {
        let mut node = leaf("abc");
        node.children = vec!["ab".into(), "c".into()];
        assert_eq!(node.record_size(), 24 + 8 + 3 + 3 + 2);
    }
}
