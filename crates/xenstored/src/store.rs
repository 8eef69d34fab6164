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

/// Why a transaction could not commit (nothing of it was applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// A request of the transaction went past the transaction-node quota:
    /// the transaction can only fail (the C daemon marks it failed and
    /// answers ENOMEM at commit).
    Failed,
    /// Committing would leave domain `domid` owning at least the entries
    /// quota (ENOSPC).
    Quota { domid: u32 },
    /// A node the transaction used changed meanwhile (EAGAIN).
    Conflict { path: String },
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

    /// Checks what every change must preserve: each node but `/` and the
    /// special nodes is listed by its parent, every listed child exists,
    /// and the per-domain counts are the nodes' owners. For tests and the
    /// fuzzer; O(nodes).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn check(&self) -> Result<(), String> {
        let mut owned: HashMap<u32, usize> = HashMap::new();
        for (path, node) in &self.nodes {
            *owned.entry(node.perms.owner()).or_insert(0) += 1;
            for child in &node.children {
                let child_path = match &**path {
                    "/" => format!("/{child}"),
                    _ => format!("{path}/{child}"),
                };
                if !self.nodes.contains_key(child_path.as_str()) {
                    return Err(format!("{path} lists {child}, which does not exist"));
                }
            }
            if &**path == "/" || path.starts_with('@') {
                continue;
            }
            let cut = path.rfind('/').unwrap_or(0);
            let (parent, name) = (if cut == 0 { "/" } else { &path[..cut] }, &path[cut + 1..]);
            match self.nodes.get(parent) {
                Some(p) if p.children.iter().filter(|c| &***c == name).count() == 1 => {}
                Some(_) => return Err(format!("{parent} does not list {name} exactly once")),
                None => return Err(format!("{path} has no parent")),
            }
        }
        if owned != self.owned {
            return Err(format!(
                "owner counts {:?}, nodes say {owned:?}",
                self.owned
            ));
        }
        Ok(())
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

    /// Applies a transaction's overlay, or nothing. The checks run in the
    /// C daemon's order (`do_transaction_end` of Xen 4.17): a transaction
    /// that went past its node quota fails; then every domain whose node
    /// count the transaction changed must stay below `entries` — the
    /// re-check that stops many transactions from each adding nodes within
    /// the quota (XSA-326); then every node it used must be unchanged.
    /// Returns the transaction's watch events, to be delivered now.
    pub fn commit(&mut self, overlay: Overlay, entries: usize) -> Result<Vec<Change>, CommitError> {
        if overlay.failed {
            return Err(CommitError::Failed);
        }
        for (&domid, &delta) in &overlay.owned_delta {
            // As `domain_entry_fix`: dom0 is never limited; the count is
            // checked even when the transaction's net change is zero.
            if domid != 0 && self.owned_by(domid).saturating_add_signed(delta) >= entries {
                return Err(CommitError::Quota { domid });
            }
        }
        for (path, access) in &overlay.accessed {
            if self.nodes.get(path).map(|n| n.generation) != access.generation {
                return Err(CommitError::Conflict {
                    path: path.to_string(),
                });
            }
        }
        for (path, access) in overlay.accessed {
            if !access.modified {
                continue;
            }
            match access.node {
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
    /// Whether the entries quota `limit` refuses `domid` `new_nodes` more
    /// nodes in this view.
    fn entries_full(&self, domid: u32, new_nodes: usize, limit: usize) -> bool;
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

    /// Plain requests: the domain's count after the request must not pass
    /// the limit (the C daemon checks before each new node that the count
    /// is below it).
    fn entries_full(&self, domid: u32, new_nodes: usize, limit: usize) -> bool {
        self.store.owned_by(domid) + new_nodes > limit
    }

    fn record(&mut self, change: Change) {
        self.changes.push(change);
    }
}

/// A transaction's private state: every node it used, the owner counts it
/// changed, and the events it will fire at commit.
#[derive(Debug)]
pub struct Overlay {
    /// Every node the transaction looked at or changed, keyed by path.
    accessed: HashMap<Box<str>, Accessed>,
    /// Change in owned-node counts per domain relative to the store; a
    /// domain stays listed once touched, even at a net change of zero.
    owned_delta: HashMap<u32, isize>,
    changes: Vec<Change>,
    /// Most nodes the transaction may use (`None`: no limit, dom0).
    node_limit: Option<usize>,
    /// A request went past `node_limit`: the commit fails.
    failed: bool,
}

/// One node as a transaction has it: copied at its first access, so every
/// later read in the transaction sees the same node — what the C daemon
/// does by writing a transaction-private copy at a read access
/// (`access_node`), which makes reads in a transaction repeatable.
#[derive(Debug)]
struct Accessed {
    /// The node's generation in the store at the first access (`None`: it
    /// did not exist); the commit needs it unchanged.
    generation: Option<u64>,
    /// The transaction's copy (`None`: missing or deleted).
    node: Option<Node>,
    /// Written or deleted by the transaction: applied at commit.
    modified: bool,
}

impl Overlay {
    /// A transaction that may use at most `node_limit` nodes (the C
    /// daemon's transaction-nodes quota, for unprivileged connections).
    pub fn new(node_limit: Option<usize>) -> Self {
        Overlay {
            accessed: HashMap::new(),
            owned_delta: HashMap::new(),
            changes: Vec::new(),
            node_limit,
            failed: false,
        }
    }
}

/// A transaction's view: the store as the transaction has seen it.
pub struct TxView<'a> {
    store: &'a Store,
    overlay: &'a mut Overlay,
    /// This request went past the transaction-node quota.
    refused: bool,
}

impl<'a> TxView<'a> {
    pub fn new(store: &'a Store, overlay: &'a mut Overlay) -> Self {
        TxView {
            store,
            overlay,
            refused: false,
        }
    }

    /// Whether this request needed a node beyond the transaction-node
    /// quota. Its reply must then be ENOSPC whatever the operation
    /// returned: past the quota the view records nothing more (reads see
    /// the live store, changes are dropped), so the result means nothing;
    /// the transaction is failed and will commit nothing.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// The transaction's entry for `path`, copied from the store at the
    /// first access; `None` past the node quota.
    fn access(&mut self, path: &str) -> Option<&mut Accessed> {
        if !self.overlay.accessed.contains_key(path) {
            if self
                .overlay
                .node_limit
                .is_some_and(|limit| self.overlay.accessed.len() >= limit)
            {
                self.refused = true;
                self.overlay.failed = true;
                return None;
            }
            let node = self.store.get(path);
            self.overlay.accessed.insert(
                path.into(),
                Accessed {
                    generation: node.map(|n| n.generation),
                    node: node.cloned(),
                    modified: false,
                },
            );
        }
        self.overlay.accessed.get_mut(path)
    }

    fn count_owner(&mut self, domid: u32, delta: isize) {
        *self.overlay.owned_delta.entry(domid).or_insert(0) += delta;
    }

    /// Replaces the transaction's copy of `path` (`None`: deleted).
    fn replace(&mut self, path: &str, node: Option<Node>) {
        let Some(access) = self.access(path) else {
            return;
        };
        access.modified = true;
        let old_owner = access.node.as_ref().map(|n| n.perms.owner());
        let new_owner = node.as_ref().map(|n| n.perms.owner());
        access.node = node;
        if let Some(owner) = old_owner {
            self.count_owner(owner, -1);
        }
        if let Some(owner) = new_owner {
            self.count_owner(owner, 1);
        }
    }
}

impl Tree for TxView<'_> {
    fn node(&mut self, path: &str) -> Option<&Node> {
        if self.access(path).is_none() {
            return self.store.get(path);
        }
        self.peek(path)
    }

    fn peek(&self, path: &str) -> Option<&Node> {
        match self.overlay.accessed.get(path) {
            Some(access) => access.node.as_ref(),
            None => self.store.get(path),
        }
    }

    fn create(&mut self, path: &str, node: Node) {
        self.replace(path, Some(node));
    }

    fn delete(&mut self, path: &str) {
        self.replace(path, None);
    }

    fn update(&mut self, path: &str, change: impl FnOnce(&mut Node)) {
        let Some(access) = self.access(path) else {
            return;
        };
        let Some(node) = access.node.as_mut() else {
            return;
        };
        access.modified = true;
        let owner = node.perms.owner();
        change(node);
        let new_owner = node.perms.owner();
        if new_owner != owner {
            self.count_owner(owner, -1);
            self.count_owner(new_owner, 1);
        }
    }

    /// Inside a transaction the C daemon compares the domain's count in
    /// the store — without the transaction's own new nodes — with the
    /// limit before each new node (`create_node`): the transaction's nodes
    /// are counted once, at commit ([`Store::commit`]).
    fn entries_full(&self, domid: u32, _new_nodes: usize, limit: usize) -> bool {
        self.store.owned_by(domid) >= limit
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
        assert!(t.entries_full(7, 1, 1));
        assert!(!t.entries_full(7, 1, 2));
        t.delete("/a");
        assert_eq!(store.owned_by(7), 0);
    }

    #[test]
    fn transaction_is_invisible_until_commit() {
        let mut store = Store::new();
        let mut overlay = Overlay::new(None);
        let mut tx = TxView::new(&store, &mut overlay);
        tx.create("/a", leaf("x"));
        assert_eq!(&*tx.node("/a").unwrap().value, b"x");
        assert!(store.get("/a").is_none());
        store.commit(overlay, 1000).unwrap();
        assert_eq!(&*store.get("/a").unwrap().value, b"x");
    }

    #[test]
    fn commit_conflicts_when_a_seen_node_changed() {
        let mut store = Store::new();
        let mut overlay = Overlay::new(None);
        TxView::new(&store, &mut overlay).node("/tool");
        let mut changes = Vec::new();
        Direct::new(&mut store, &mut changes)
            .update("/tool", |n| n.value = b"new".as_slice().into());
        assert_eq!(
            store.commit(overlay, 1000),
            Err(CommitError::Conflict {
                path: "/tool".into()
            })
        );
    }

    #[test]
    fn commit_conflicts_when_a_missing_node_appeared() {
        let mut store = Store::new();
        let mut overlay = Overlay::new(None);
        assert!(TxView::new(&store, &mut overlay).node("/x").is_none());
        let mut changes = Vec::new();
        Direct::new(&mut store, &mut changes).create("/x", leaf(""));
        assert!(store.commit(overlay, 1000).is_err());
    }

    fn set_value(store: &mut Store, path: &str, value: &str) {
        let mut changes = Vec::new();
        Direct::new(store, &mut changes).update(path, |n| n.value = value.as_bytes().into());
    }

    #[test]
    fn reads_in_a_transaction_are_repeatable() {
        let mut store = Store::new();
        let mut changes = Vec::new();
        Direct::new(&mut store, &mut changes).create("/a", leaf("a"));
        let mut overlay = Overlay::new(None);
        let first = TxView::new(&store, &mut overlay).node("/a").cloned();
        set_value(&mut store, "/a", "b");
        let again = TxView::new(&store, &mut overlay).node("/a").cloned();
        assert_eq!(first, again, "the transaction's copy, not the live node");
        assert_eq!(&*again.unwrap().value, b"a");
        assert!(matches!(
            store.commit(overlay, 1000),
            Err(CommitError::Conflict { .. })
        ));
    }

    #[test]
    fn commit_rechecks_each_changed_domains_entries() {
        let mut store = Store::new();
        let guest = |v: &str| Node::new(v.as_bytes(), Perms::owner_only(5));
        let (mut one, mut two) = (Overlay::new(None), Overlay::new(None));
        for (overlay, name) in [(&mut one, "/x"), (&mut two, "/y")] {
            let mut tx = TxView::new(&store, overlay);
            for i in 0..3 {
                tx.create(&format!("{name}{i}"), guest(""));
            }
        }
        // 3 nodes stay below a quota of 4; 6 would not.
        store.commit(one, 4).unwrap();
        assert_eq!(store.owned_by(5), 3);
        assert!(store.check().is_err(), "the test's nodes have no parent");
        assert_eq!(store.commit(two, 4), Err(CommitError::Quota { domid: 5 }));
        assert_eq!(store.owned_by(5), 3, "nothing of the refused one applied");
        // dom0 is never limited.
        let mut overlay = Overlay::new(None);
        TxView::new(&store, &mut overlay).create("/z", leaf(""));
        store.commit(overlay, 1).unwrap();
    }

    #[test]
    fn quota_is_checked_before_generations() {
        let mut store = Store::new();
        let mut overlay = Overlay::new(None);
        let mut tx = TxView::new(&store, &mut overlay);
        tx.node("/tool");
        tx.create("/g", Node::new(b"", Perms::owner_only(5)));
        set_value(&mut store, "/tool", "changed");
        assert_eq!(
            store.commit(overlay, 1),
            Err(CommitError::Quota { domid: 5 })
        );
    }

    #[test]
    fn a_transaction_past_its_node_limit_records_nothing_and_fails() {
        let mut store = Store::new();
        let mut overlay = Overlay::new(Some(2));
        let mut tx = TxView::new(&store, &mut overlay);
        tx.node("/tool");
        tx.create("/a", leaf("a"));
        assert!(!tx.refused());
        tx.create("/b", leaf("b"));
        assert!(tx.refused());
        assert!(tx.peek("/b").is_none(), "past the limit nothing is kept");
        // Nodes already used stay usable.
        let mut tx = TxView::new(&store, &mut overlay);
        assert_eq!(&*tx.node("/a").unwrap().value, b"a");
        assert!(!tx.refused());
        assert_eq!(store.commit(overlay, 1000), Err(CommitError::Failed));
        assert!(store.get("/a").is_none());
    }

    #[test]
    fn record_size_counts_like_the_c_daemon() {
        let mut node = leaf("abc");
        node.children = vec!["ab".into(), "c".into()];
        assert_eq!(node.record_size(), 24 + 8 + 3 + 3 + 2);
    }
}
