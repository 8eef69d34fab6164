//! What RELEASE takes away from the store: the released domain's nodes and
//! every permission entry that names it.
//!
//! A domid is reused: once a domain is released, the next domain created
//! may get the same number. Without this cleanup that new domain would
//! find the old one's nodes owned by it (XSA-419: it could read and change
//! what the old domain left, and the old domain's nodes would stay in the
//! store, outside any quota, for ever) and would inherit every grant made
//! to the old one (XSA-322: a backend directory readable by "domain 5"
//! would be readable by whichever domain is 5 next).
//!
//! The C daemon of Xen 4.17 removes, when a domain goes away, every node
//! it owns together with the subtree below it (`domain_tree_remove`, a
//! walk of the whole tree that deletes each node owned by the domain as
//! `rm_node` does, watches firing), and makes permission entries that name
//! a domain younger than the node grant nothing (`domain_adjust_node_perms`
//! with the domain's creation generation, `chk_domain_generation`). Ours
//! has no hypervisor to say when a domain was created, but it knows when
//! one was released, so it does both at RELEASE: the nodes are removed as
//! a dom0 RM would remove them (same watch events, before `@releaseDomain`
//! fires, as in the C daemon), and the entries naming the domain are
//! dropped from every other node's list (what later Xen versions also do
//! in the same walk) — an entry that grants nothing need not be kept.
//! Docs: docs/design/xenstored.md, "Domains".

use xenstore::path::{INTRODUCE_DOMAIN, RELEASE_DOMAIN};

use crate::access::Caller;
use crate::ops;
use crate::store::Tree;

/// Removes every node `domid` owns (with its subtree) and every permission
/// entry naming `domid` from the lists of the nodes that stay. Nodes that
/// cannot be removed — `/` and the special nodes — are given to dom0
/// instead if `domid` owns them. Iterative: a deep tree cannot exhaust the
/// daemon's stack (XSA-418).
pub fn forget_domain<T: Tree>(t: &mut T, domid: u32) {
    let mut pending = vec![String::from("/")];
    while let Some(path) = pending.pop() {
        let Some(node) = t.peek(&path) else {
            continue;
        };
        let owned = node.perms.owner() == domid;
        if owned && path != "/" {
            // As a dom0 RM: the subtree goes with it and watchers hear of
            // each node. It cannot fail on the live store (the parent
            // exists: the walk came from it).
            let _ = ops::rm(t, &Caller::DOM0, &path);
            continue;
        }
        let children: Vec<String> = node
            .children
            .iter()
            .rev()
            .map(|child| match path.as_str() {
                "/" => format!("/{child}"),
                _ => format!("{path}/{child}"),
            })
            .collect();
        disown(t, &path, domid);
        pending.extend(children);
    }
    for special in [INTRODUCE_DOMAIN, RELEASE_DOMAIN] {
        disown(t, special, domid);
    }
}

/// Drops the entries naming `domid` from the permission list of the node
/// at `path`, and gives the node to dom0 if `domid` owns it (only for the
/// nodes RELEASE does not remove). Changes nothing — not even the node's
/// generation — when the list does not name `domid`.
fn disown<T: Tree>(t: &mut T, path: &str, domid: u32) {
    let Some(node) = t.peek(path) else {
        return;
    };
    if !node.perms.0.iter().any(|p| p.domid == domid) {
        return;
    }
    t.update(path, |node| {
        let entries = &mut node.perms.0;
        if let Some(owner) = entries.first_mut().filter(|owner| owner.domid == domid) {
            owner.domid = 0;
        }
        let mut index = 0;
        entries.retain(|p| {
            index += 1;
            index == 1 || p.domid != domid
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Direct, Store};
    use xenstore::perms::Perms;

    fn perms(s: &str) -> Perms {
        s.parse().unwrap()
    }

    /// A store with `nodes` (path, permissions) written by dom0, parents
    /// created as needed with dom0's permissions.
    fn store_with(nodes: &[(&str, &str)]) -> Store {
        let mut store = Store::new();
        let mut changes = Vec::new();
        let mut t = Direct::new(&mut store, &mut changes);
        let quotas = crate::config::Quotas::default();
        for (path, p) in nodes {
            ops::write(&mut t, &Caller::DOM0, &quotas, path, b"v").unwrap();
            ops::set_perms(&mut t, &Caller::DOM0, &quotas, path, perms(p)).unwrap();
        }
        store
    }

    #[test]
    fn removes_the_domains_nodes_and_their_subtrees() {
        let mut store = store_with(&[
            ("/local/domain/5", "n0 r5"),
            ("/local/domain/5/device", "n5"),
            ("/local/domain/5/device/vbd/768", "n5"),
            ("/local/domain/5/device/vbd/768/state", "n0"),
            ("/elsewhere/left-by-5", "b5"),
            ("/local/domain/6/data", "n6"),
        ]);
        let mut changes = Vec::new();
        forget_domain(&mut Direct::new(&mut store, &mut changes), 5);
        assert!(
            store.get("/local/domain/5").is_some(),
            "dom0's home node stays"
        );
        assert!(store.get("/local/domain/5/device").is_none());
        assert!(
            store.get("/local/domain/5/device/vbd/768/state").is_none(),
            "a subtree goes with its owner, whoever owns its nodes"
        );
        assert!(store.get("/elsewhere/left-by-5").is_none());
        assert!(store.get("/local/domain/6/data").is_some());
        assert_eq!(store.owned_by(5), 0);
        store.check().unwrap();
        let paths: Vec<&str> = changes.iter().map(|c| &*c.path).collect();
        assert!(paths.contains(&"/local/domain/5/device"));
        assert!(paths.contains(&"/elsewhere/left-by-5"));
    }

    #[test]
    fn drops_the_entries_naming_the_domain_elsewhere() {
        let mut store = store_with(&[
            ("/backend/vbd/5/768", "n0 r5 w6"),
            ("/backend/vbd/6/768", "n0 r6"),
        ]);
        store_with_special_grant(&mut store);
        let mut changes = Vec::new();
        forget_domain(&mut Direct::new(&mut store, &mut changes), 5);
        let perms_of = |store: &Store, p: &str| store.get(p).unwrap().perms.to_string();
        assert_eq!(perms_of(&store, "/backend/vbd/5/768"), "n0 w6");
        assert_eq!(perms_of(&store, "/backend/vbd/6/768"), "n0 r6");
        assert_eq!(perms_of(&store, "/"), "n0");
        assert_eq!(perms_of(&store, RELEASE_DOMAIN), "n0 r6");
        assert!(
            changes.is_empty(),
            "dropping grants fires nothing: {changes:?}"
        );
        store.check().unwrap();
    }

    fn store_with_special_grant(store: &mut Store) {
        let mut changes = Vec::new();
        let mut t = Direct::new(store, &mut changes);
        let quotas = crate::config::Quotas::default();
        ops::set_perms(
            &mut t,
            &Caller::DOM0,
            &quotas,
            RELEASE_DOMAIN,
            perms("n0 r5 r6"),
        )
        .unwrap();
    }

    #[test]
    fn nodes_that_cannot_go_are_given_to_dom0() {
        let mut store = store_with(&[]);
        let mut changes = Vec::new();
        let mut t = Direct::new(&mut store, &mut changes);
        let quotas = crate::config::Quotas::default();
        ops::set_perms(
            &mut t,
            &Caller::DOM0,
            &quotas,
            INTRODUCE_DOMAIN,
            perms("n5"),
        )
        .unwrap();
        forget_domain(&mut t, 5);
        assert_eq!(store.get(INTRODUCE_DOMAIN).unwrap().perms.to_string(), "n0");
        store.check().unwrap();
    }
}
