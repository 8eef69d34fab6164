//! The in-memory model the daemon's replies are checked against: the store
//! as the C daemon keeps it, and a transaction as the C daemon keeps one
//! (copies at first use, a version per node for the commit's conflicts).

use std::collections::{BTreeMap, BTreeSet};

use crate::common::arg;

#[derive(Debug, Clone)]
pub(super) enum NodeOp {
    Write(String, Vec<u8>),
    Mkdir(String),
    Rm(String),
    Read(String),
    Directory(String),
    GetPerms(String),
    SetPerms(String, Vec<String>),
}

#[derive(Debug, Clone)]
pub(super) enum Step {
    Node(usize, NodeOp),
    Start(usize),
    End(usize, bool),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Node {
    pub(super) value: Vec<u8>,
    pub(super) perms: Vec<String>,
    pub(super) children: Vec<String>,
}

/// The model store: nodes plus a version per node, bumped on every change.
#[derive(Debug, Clone)]
pub(super) struct Model {
    pub(super) nodes: BTreeMap<String, Node>,
    pub(super) versions: BTreeMap<String, u64>,
    pub(super) clock: u64,
    /// Whether SET_PERMS takes an owner other than dom0 (no other domain
    /// exists in these runs): ours does, the C daemon answers ENOENT.
    pub(super) accepts_unintroduced_owner: bool,
}

/// What one operation looked at and what it changed.
#[derive(Debug, Default)]
pub(super) struct Access {
    pub(super) touched: Vec<String>,
    pub(super) changed: BTreeSet<String>,
}

pub(super) type Reply = Result<Vec<u8>, String>;

pub(super) fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

pub(super) fn base(path: &str) -> &str {
    &path[path.rfind('/').map_or(0, |i| i + 1)..]
}

impl Model {
    /// The tree [`run`] sets up below its prefix: `/`, `/tool`,
    /// `/tool/xenstored` (the shape of a fresh daemon's store), all `n0`.
    pub(super) fn new(accepts_unintroduced_owner: bool) -> Self {
        let mut m = Model {
            nodes: BTreeMap::new(),
            versions: BTreeMap::new(),
            clock: 0,
            accepts_unintroduced_owner,
        };
        for (path, child) in [
            ("/", Some("tool")),
            ("/tool", Some("xenstored")),
            ("/tool/xenstored", None),
        ] {
            m.nodes.insert(
                path.into(),
                Node {
                    value: vec![],
                    perms: vec!["n0".into()],
                    children: child.map(String::from).into_iter().collect(),
                },
            );
        }
        m
    }

    pub(super) fn version(&self, path: &str) -> Option<u64> {
        self.nodes
            .get(path)
            .map(|_| self.versions.get(path).copied().unwrap_or(0))
    }

    /// Marks `changed` as changed now.
    pub(super) fn bump(&mut self, changed: &BTreeSet<String>) {
        for path in changed {
            self.clock += 1;
            if self.nodes.contains_key(path) {
                self.versions.insert(path.clone(), self.clock);
            } else {
                self.versions.remove(path);
            }
        }
    }

    /// Looks at `path`; missing nodes make the daemon look up the parents
    /// until one exists (to choose ENOENT or EACCES).
    pub(super) fn look(&self, path: &str, access: &mut Access) -> bool {
        access.touched.push(path.into());
        if self.nodes.contains_key(path) {
            return true;
        }
        let mut current = path;
        while current != "/" {
            current = parent(current);
            access.touched.push(current.into());
            if self.nodes.contains_key(current) {
                break;
            }
        }
        false
    }

    pub(super) fn create(&mut self, path: &str, value: &[u8], access: &mut Access) {
        let mut missing = vec![path.to_string()];
        let mut anchor = parent(path).to_string();
        while !self.nodes.contains_key(&anchor) {
            missing.push(anchor.clone());
            anchor = parent(&anchor).to_string();
        }
        let perms = self.nodes[&anchor].perms.clone();
        let top = missing.last().unwrap().clone();
        self.nodes
            .get_mut(&anchor)
            .unwrap()
            .children
            .push(base(&top).into());
        access.changed.insert(anchor.clone());
        access.touched.push(anchor);
        for (i, p) in missing.iter().enumerate() {
            let children = if i > 0 {
                vec![base(&missing[i - 1]).to_string()]
            } else {
                vec![]
            };
            let value = if i == 0 { value.to_vec() } else { vec![] };
            self.nodes.insert(
                p.clone(),
                Node {
                    value,
                    perms: perms.clone(),
                    children,
                },
            );
            access.changed.insert(p.clone());
            access.touched.push(p.clone());
        }
    }

    /// Removes `path` and the nodes below it as the C daemon walks them:
    /// through the child lists (in a transaction those are its copies,
    /// which need not list a child created outside since), children first,
    /// each removed from its parent's list. A listed child that does not
    /// exist (removed outside since the copy) stops the walk, what was
    /// removed staying removed: false.
    pub(super) fn remove_subtree(&mut self, path: &str, a: &mut Access) -> bool {
        let children = self.nodes[path].children.clone();
        for child in children {
            let child_path = format!("{}/{child}", path.trim_end_matches('/'));
            if !self.nodes.contains_key(&child_path) {
                a.touched.push(child_path);
                return false;
            }
            if !self.remove_subtree(&child_path, a) {
                return false;
            }
            // The first entry only, as the C daemon's `delete_child`.
            let siblings = &mut self.nodes.get_mut(path).unwrap().children;
            if let Some(i) = siblings.iter().position(|c| *c == child) {
                siblings.remove(i);
            }
        }
        self.nodes.remove(path);
        a.touched.push(path.to_string());
        a.changed.insert(path.to_string());
        true
    }

    pub(super) fn apply(&mut self, op: &NodeOp) -> (Reply, Access) {
        let mut a = Access::default();
        let ok = || Ok(b"OK\0".to_vec());
        let enoent = || Err("ENOENT".to_string());
        let reply = match op {
            NodeOp::Read(p) => match self.look(p, &mut a) {
                true => Ok(self.nodes[p].value.clone()),
                false => enoent(),
            },
            NodeOp::Directory(p) => match self.look(p, &mut a) {
                true => Ok(self.nodes[p].children.iter().flat_map(|c| arg(c)).collect()),
                false => enoent(),
            },
            NodeOp::GetPerms(p) => match self.look(p, &mut a) {
                true => Ok(self.nodes[p].perms.iter().flat_map(|c| arg(c)).collect()),
                false => enoent(),
            },
            // Refused before the node is looked up, as the C daemon does.
            NodeOp::SetPerms(_, perms)
                if !self.accepts_unintroduced_owner && owner(perms) != Some(0) =>
            {
                enoent()
            }
            NodeOp::SetPerms(p, perms) => match self.look(p, &mut a) {
                true => {
                    self.nodes.get_mut(p).unwrap().perms = perms.clone();
                    a.changed.insert(p.clone());
                    ok()
                }
                false => enoent(),
            },
            NodeOp::Write(p, value) => {
                if self.look(p, &mut a) {
                    self.nodes.get_mut(p).unwrap().value = value.clone();
                    a.changed.insert(p.clone());
                } else {
                    self.create(p, value, &mut a);
                }
                ok()
            }
            NodeOp::Mkdir(p) => {
                if !self.look(p, &mut a) {
                    self.create(p, b"", &mut a);
                }
                ok()
            }
            NodeOp::Rm(p) => {
                if !self.look(p, &mut a) {
                    a.touched.push(parent(p).into());
                    if self.nodes.contains_key(parent(p)) {
                        ok()
                    } else {
                        enoent()
                    }
                } else if p == "/" {
                    Err("EINVAL".to_string())
                } else if !self.nodes.contains_key(parent(p)) {
                    // Only in a transaction: its copy of the parent is
                    // missing, the node is live. The C daemon's `rm_node`
                    // reads the parent first: EINVAL, nothing removed.
                    a.touched.push(parent(p).into());
                    Err("EINVAL".to_string())
                } else {
                    if !self.remove_subtree(p, &mut a) {
                        return (Err("EIO".to_string()), a);
                    }
                    let name = base(p).to_string();
                    a.touched.push(parent(p).into());
                    let siblings = &mut self.nodes.get_mut(parent(p)).unwrap().children;
                    // A transaction's copy of the parent may not list a
                    // child created outside since: the C daemon removes
                    // the subtree, then answers EIO (`delete_child`).
                    if !siblings.contains(&name) {
                        return (Err("EIO".to_string()), a);
                    }
                    let first = siblings.iter().position(|c| *c == name);
                    siblings.remove(first.expect("listed: checked above"));
                    a.changed.insert(parent(p).into());
                    ok()
                }
            }
        };
        (reply, a)
    }
}

/// A transaction in the model, as the C daemon keeps one: every node it
/// used, copied from the store at its first use (so later reads in the
/// transaction see that copy, whatever happened outside), with the version
/// the node had then; and which of them it changed.
#[derive(Debug, Default)]
pub(super) struct ModelTx {
    pub(super) ops: Vec<NodeOp>,
    pub(super) copies: BTreeMap<String, Option<Node>>,
    pub(super) seen: BTreeMap<String, Option<u64>>,
    pub(super) modified: BTreeSet<String>,
}

impl ModelTx {
    pub(super) fn conflicted(&self, live: &Model) -> bool {
        self.seen.iter().any(|(p, v)| live.version(p) != *v)
    }

    /// Runs `op` in the transaction: on the live store overlaid with the
    /// transaction's copies; every node the operation used becomes (or
    /// stays) the transaction's.
    pub(super) fn apply(&mut self, live: &Model, op: &NodeOp) -> Reply {
        let mut view = live.clone();
        for (path, copy) in &self.copies {
            match copy {
                Some(node) => view.nodes.insert(path.clone(), node.clone()),
                None => view.nodes.remove(path),
            };
        }
        let (reply, access) = view.apply(op);
        for path in access.touched.iter().chain(&access.changed) {
            self.seen
                .entry(path.clone())
                .or_insert_with(|| live.version(path));
            self.copies
                .insert(path.clone(), view.nodes.get(path).cloned());
        }
        self.modified.extend(access.changed);
        self.ops.push(op.clone());
        reply
    }

    /// The commit: the transaction's copies of what it changed replace the
    /// store's nodes.
    pub(super) fn commit(self, live: &mut Model) {
        for path in &self.modified {
            match &self.copies[path] {
                Some(node) => live.nodes.insert(path.clone(), node.clone()),
                None => live.nodes.remove(path),
            };
        }
        live.bump(&self.modified);
    }
}

/// The owner domain of a permission list (`r1` → 1).
fn owner(perms: &[String]) -> Option<u32> {
    perms.first()?.get(1..)?.parse().ok()
}
