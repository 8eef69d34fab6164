//! [`View`]: the live store or a transaction, as one [`Tree`], so a request
//! handler runs the same `ops` code on either.

use crate::store::{Direct, Node, Tree, TxView};
use crate::watch::Change;

/// Either view a node operation runs on.
pub(super) enum View<'a> {
    Direct(Direct<'a>),
    Tx(TxView<'a>),
}

impl Tree for View<'_> {
    fn node(&mut self, path: &str) -> Option<&Node> {
        match self {
            View::Direct(t) => t.node(path),
            View::Tx(t) => t.node(path),
        }
    }
    fn peek(&self, path: &str) -> Option<&Node> {
        match self {
            View::Direct(t) => t.peek(path),
            View::Tx(t) => t.peek(path),
        }
    }
    fn create(&mut self, path: &str, node: Node) {
        match self {
            View::Direct(t) => t.create(path, node),
            View::Tx(t) => t.create(path, node),
        }
    }
    fn delete(&mut self, path: &str) {
        match self {
            View::Direct(t) => t.delete(path),
            View::Tx(t) => t.delete(path),
        }
    }
    fn update(&mut self, path: &str, change: impl FnOnce(&mut Node)) {
        match self {
            View::Direct(t) => t.update(path, change),
            View::Tx(t) => t.update(path, change),
        }
    }
    fn entries_full(&self, domid: u32, new_nodes: usize, limit: usize) -> bool {
        match self {
            View::Direct(t) => t.entries_full(domid, new_nodes, limit),
            View::Tx(t) => t.entries_full(domid, new_nodes, limit),
        }
    }
    fn record(&mut self, change: Change) {
        match self {
            View::Direct(t) => t.record(change),
            View::Tx(t) => t.record(change),
        }
    }
}
