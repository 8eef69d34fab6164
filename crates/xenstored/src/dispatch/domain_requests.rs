//! The domain requests: INTRODUCE, RELEASE (with what it takes away,
//! module `release`), SET_TARGET, and the domain checks and special-path
//! events they share with the simple ones in the dispatch table.

use xenstore::path::{INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use xenstore::wire::Errno;

use super::payload::{ack, one_arg, parse_domid, strings};
use super::{Reply, Request, State};
use crate::release;
use crate::store::{Direct, Store};
use crate::watch::Change;

impl Request<'_> {
    pub(super) fn introduce(&mut self, payload: &[u8]) -> Reply {
        let args = strings(payload);
        let [domid, _mfn, port, ..] = args.as_slice() else {
            return Err(Errno::EINVAL);
        };
        let domid = parse_domid(domid)?;
        if parse_domid(port)? == 0 {
            return Err(Errno::EINVAL);
        }
        if self.state.domains.introduce(domid) {
            self.out
                .changes
                .push(special_change(&self.state.store, INTRODUCE_DOMAIN));
        }
        Ok(ack(()))
    }

    pub(super) fn release(&mut self, payload: &[u8]) -> Reply {
        let domid = parse_domid(one_arg(payload)?)?;
        known_domain(self.state, domid)?;
        self.state.domains.release(domid);
        self.out.released = Some(domid);
        // The domid may be given to a new domain: it must find neither the
        // old one's nodes nor its grants (XSA-419, XSA-322). Their removal
        // events come before `@releaseDomain`, as in the C daemon.
        let mut changes = Vec::new();
        release::forget_domain(&mut Direct::new(&mut self.state.store, &mut changes), domid);
        self.out.changes.append(&mut changes);
        self.out
            .changes
            .push(special_change(&self.state.store, RELEASE_DOMAIN));
        Ok(ack(()))
    }

    pub(super) fn set_target(&mut self, payload: &[u8]) -> Reply {
        let args = strings(payload);
        let [domid, target] = args.as_slice() else {
            return Err(Errno::EINVAL);
        };
        let (domid, target) = (parse_domid(domid)?, parse_domid(target)?);
        known_domain(self.state, domid)?;
        known_domain(self.state, target)?;
        self.state.domains.set_target(domid, target);
        Ok(ack(()))
    }
}

/// The event for a special path; who may see it is decided by the special
/// node's permissions (dom0 only unless the toolstack granted more).
fn special_change(store: &Store, path: &str) -> Change {
    let readers = [path, "/"]
        .into_iter()
        .filter_map(|p| store.get(p).map(|n| n.perms.clone()))
        .collect();
    Change {
        path: path.into(),
        exact: true,
        readers,
    }
}

pub(super) fn known_domain(state: &State, domid: u32) -> Result<(), Errno> {
    if domid == 0 {
        Err(Errno::EINVAL)
    } else if state.domains.is_introduced(domid) {
        Ok(())
    } else {
        Err(Errno::ENOENT)
    }
}

pub(super) fn control(payload: &[u8]) -> Reply {
    let args = strings(payload);
    match args.first().copied() {
        Some(b"help") => Ok(b"help\nprint <text>\n\0".to_vec()),
        Some(b"print") => Ok(ack(())),
        _ => Err(Errno::EINVAL),
    }
}
