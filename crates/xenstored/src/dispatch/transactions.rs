//! TRANSACTION_START and TRANSACTION_END: the open-transactions quota and
//! the commit with its errno mapping (docs/design/xenstored.md,
//! "Transactions, rule by rule").

use xenstore::wire::{self, Errno};

use super::payload::{ack, one_arg};
use super::{Reply, Request};
use crate::config::TRANSACTION_NODES;
use crate::store::{CommitError, Overlay};

impl Request<'_> {
    pub(super) fn transaction_start(&mut self) -> Reply {
        if self.tx_id != 0 {
            return Err(Errno::EBUSY);
        }
        let session = &mut *self.session;
        // One more than the quota, as the C daemon of Xen 4.17 allows: it
        // refuses only once the count already exceeds it (measured on real
        // Xen: a guest opens 11 with the default of 10, `tests/xen`
        // `xs-suites-real`). The C daemon counts per connection, and a
        // guest has exactly one (its ring); ours counts all connections of
        // a guest's socket together, so that opening more connections does
        // not multiply what a guest's transactions may hold (XSA-326).
        if !session.privileged {
            let open = self
                .state
                .tx_counts
                .get(&session.domid)
                .copied()
                .unwrap_or(0);
            if open > self.state.quotas.transactions {
                return Err(Errno::ENOSPC);
            }
            self.state.count_transactions(session.domid, 1);
        }
        let mut id = session.last_tx_id;
        loop {
            id = id.wrapping_add(1);
            if id != 0 && !session.transactions.contains_key(&id) {
                break;
            }
        }
        session.last_tx_id = id;
        let node_limit = (!session.privileged).then_some(TRANSACTION_NODES);
        session.transactions.insert(id, Overlay::new(node_limit));
        Ok(wire::nul_terminated(&[id.to_string().as_bytes()]))
    }

    pub(super) fn transaction_end(&mut self, payload: &[u8]) -> Reply {
        let commit = match one_arg(payload)? {
            b"T" => true,
            b"F" => false,
            _ => return Err(Errno::EINVAL),
        };
        let overlay = self
            .session
            .transactions
            .remove(&self.tx_id)
            .ok_or(Errno::ENOENT)?;
        if !self.session.privileged {
            self.state.count_transactions(self.session.domid, -1);
        }
        if commit {
            let entries = self.state.quotas.entries;
            let mut changes = self
                .state
                .store
                .commit(overlay, entries)
                .map_err(|e| match e {
                    CommitError::Failed => Errno::ENOMEM,
                    CommitError::Quota { .. } => Errno::ENOSPC,
                    CommitError::Conflict { .. } => Errno::EAGAIN,
                })?;
            self.out.changes.append(&mut changes);
        }
        Ok(ack(()))
    }
}
