//! The node operations (READ, WRITE, MKDIR, RM, DIRECTORY, DIRECTORY_PART,
//! GET_PERMS, SET_PERMS) with the C daemon's permission, quota and watch
//! rules. They take resolved, validated paths and work on any [`Tree`], so
//! the same code serves plain requests and transactions.

use xenstore::perms::Perms;
use xenstore::wire::{Errno, PAYLOAD_MAX};

use crate::access::{Caller, Need};
use crate::config::Quotas;
use crate::store::{Node, Tree};
use crate::watch::Change;

/// The parent of a node path; special paths hang off `/` (as in the C
/// daemon's `get_parent`).
pub fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(cut) => &path[..cut],
    }
}

fn base_name(path: &str) -> &str {
    path.rfind('/').map_or(path, |cut| &path[cut + 1..])
}

/// The C daemon's `get_node`: the node must exist and grant `need`. When it
/// does not exist, the nearest existing ancestor decides whether the caller
/// may learn that (ENOENT) or not (EACCES).
fn check<T: Tree>(t: &mut T, caller: &Caller, path: &str, need: Need) -> Result<(), Errno> {
    match t.node(path).map(|node| caller.may(&node.perms, need)) {
        Some(true) => Ok(()),
        Some(false) => Err(Errno::EACCES),
        None => Err(errno_from_parents(t, caller, path, need)),
    }
}

fn errno_from_parents<T: Tree>(t: &mut T, caller: &Caller, path: &str, need: Need) -> Errno {
    let mut current = path;
    while current != "/" {
        current = parent_of(current);
        if let Some(node) = t.node(current) {
            let rights = caller.rights(&node.perms);
            let allowed = match need {
                Need::Read => rights.read,
                Need::Write => rights.write,
                Need::Own => rights.write || rights.owner,
            };
            return if allowed {
                Errno::ENOENT
            } else {
                Errno::EACCES
            };
        }
    }
    Errno::EACCES
}

/// The permission lists deciding who sees an event on `path`: the node's
/// own and its parent's.
fn readers<T: Tree>(t: &T, path: &str) -> Vec<Perms> {
    let mut out = Vec::with_capacity(2);
    out.extend(t.peek(path).map(|n| n.perms.clone()));
    if path != "/" {
        out.extend(t.peek(parent_of(path)).map(|n| n.perms.clone()));
    }
    out
}

fn record_change<T: Tree>(t: &mut T, path: &str, exact: bool, mut extra: Vec<Perms>) {
    extra.extend(readers(t, path));
    t.record(Change {
        path: path.into(),
        exact,
        readers: extra,
    });
}

fn too_big_for(caller: &Caller, quotas: &Quotas, size: usize) -> bool {
    !caller.privileged && size >= quotas.entry_size
}

/// READ: the value, raw.
pub fn read<T: Tree>(t: &mut T, caller: &Caller, path: &str) -> Result<Vec<u8>, Errno> {
    check(t, caller, path, Need::Read)?;
    Ok(t.node(path).map(|n| n.value.to_vec()).unwrap_or_default())
}

/// DIRECTORY: the children's names, each NUL-terminated.
pub fn directory<T: Tree>(t: &mut T, caller: &Caller, path: &str) -> Result<Vec<u8>, Errno> {
    check(t, caller, path, Need::Read)?;
    let payload = t.node(path).map(Node::children_payload).unwrap_or_default();
    if payload.len() > PAYLOAD_MAX {
        return Err(Errno::E2BIG);
    }
    Ok(payload)
}

/// DIRECTORY_PART: `generation\0` then as many whole child names from byte
/// `offset` of the child list as fit; a final empty string marks the end.
pub fn directory_part<T: Tree>(
    t: &mut T,
    caller: &Caller,
    path: &str,
    offset: usize,
) -> Result<Vec<u8>, Errno> {
    check(t, caller, path, Need::Read)?;
    let (generation, children) = t
        .node(path)
        .map(|n| (n.generation, n.children_payload()))
        .ok_or(Errno::ENOENT)?;
    let mut out = generation.to_string().into_bytes();
    out.push(0);
    if offset >= children.len() {
        out.push(0);
        return Ok(out);
    }
    let room = PAYLOAD_MAX - out.len() - 1;
    let rest = &children[offset..];
    let mut taken = 0;
    while taken < rest.len() {
        let name_len = rest[taken..]
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(rest.len() - taken);
        if taken + name_len >= room {
            break;
        }
        taken += name_len + 1;
    }
    out.extend_from_slice(&rest[..taken.min(rest.len())]);
    if offset + taken >= children.len() {
        out.push(0);
    }
    Ok(out)
}

/// GET_PERMS: the permission list, each entry NUL-terminated.
pub fn get_perms<T: Tree>(t: &mut T, caller: &Caller, path: &str) -> Result<Vec<u8>, Errno> {
    check(t, caller, path, Need::Read)?;
    Ok(t.node(path)
        .map(|n| n.perms.to_payload())
        .unwrap_or_default())
}

/// WRITE: sets the value, creating the node and missing parents.
pub fn write<T: Tree>(
    t: &mut T,
    caller: &Caller,
    quotas: &Quotas,
    path: &str,
    value: &[u8],
) -> Result<(), Errno> {
    match check(t, caller, path, Need::Write) {
        Ok(()) => {
            let size = t.node(path).map_or(0, |n| n.record_size() - n.value.len()) + value.len();
            if too_big_for(caller, quotas, size) {
                return Err(Errno::ENOSPC);
            }
            t.update(path, |n| n.value = value.into());
        }
        Err(Errno::ENOENT) => create(t, caller, quotas, path, value)?,
        Err(e) => return Err(e),
    }
    record_change(t, path, false, Vec::new());
    Ok(())
}

/// MKDIR: creates an empty node (and missing parents); an existing node the
/// caller may write is fine and changes nothing.
pub fn mkdir<T: Tree>(
    t: &mut T,
    caller: &Caller,
    quotas: &Quotas,
    path: &str,
) -> Result<(), Errno> {
    match check(t, caller, path, Need::Write) {
        Ok(()) => Ok(()),
        Err(Errno::ENOENT) => {
            create(t, caller, quotas, path, b"")?;
            record_change(t, path, false, Vec::new());
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Creates `path` and its missing ancestors. New nodes inherit the nearest
/// existing ancestor's permissions; a guest becomes the owner of what it
/// creates. Quotas are checked before anything changes, so a refused
/// request leaves no trace.
fn create<T: Tree>(
    t: &mut T,
    caller: &Caller,
    quotas: &Quotas,
    path: &str,
    value: &[u8],
) -> Result<(), Errno> {
    let mut missing = vec![path];
    let mut anchor = parent_of(path);
    while anchor != "/" && t.node(anchor).is_none() {
        missing.push(anchor);
        anchor = parent_of(anchor);
    }
    let Some((mut perms, anchor_size)) = t.node(anchor).map(|n| (n.perms.clone(), n.record_size()))
    else {
        return Err(Errno::EIO);
    };
    let top = missing[missing.len() - 1];
    if !caller.privileged {
        if let Some(owner) = perms.0.first_mut() {
            owner.domid = caller.domid;
        }
        if t.entries_full(caller.domid, missing.len(), quotas.entries) {
            return Err(Errno::ENOSPC);
        }
        let anchor_size = anchor_size + base_name(top).len() + 1;
        let leaf_size = Node::new(value, perms.clone()).record_size();
        let biggest_middle = missing[1..]
            .iter()
            .map(|p| Node::new(b"", perms.clone()).record_size() + base_name(p).len() + 1)
            .max()
            .unwrap_or(0);
        if [anchor_size, leaf_size, biggest_middle]
            .into_iter()
            .any(|size| too_big_for(caller, quotas, size))
        {
            return Err(Errno::ENOSPC);
        }
    }
    t.update(anchor, |n| n.children.push(base_name(top).into()));
    for (i, node_path) in missing.iter().enumerate().rev() {
        let mut node = Node::new(if i == 0 { value } else { b"" }, perms.clone());
        if i > 0 {
            node.children.push(base_name(missing[i - 1]).into());
        }
        t.create(node_path, node);
    }
    Ok(())
}

/// RM: removes the node and everything below it. A missing node is fine if
/// its parent exists. Fires the removed root's watches and its ancestors',
/// then — deepest first — the watches set exactly on each removed node.
pub fn rm<T: Tree>(t: &mut T, caller: &Caller, path: &str) -> Result<(), Errno> {
    match check(t, caller, path, Need::Write) {
        Ok(()) => {}
        Err(Errno::ENOENT) => {
            return match t.node(parent_of(path)) {
                Some(_) => Ok(()),
                None => Err(Errno::ENOENT),
            };
        }
        Err(e) => return Err(e),
    }
    if path == "/" || path.starts_with('@') {
        return Err(Errno::EINVAL);
    }
    // Only in a transaction can a node be there without its parent (the
    // parent missing in the transaction's copy, the node live and unused):
    // EINVAL before anything is removed, as the C daemon's `rm_node`.
    if t.node(parent_of(path)).is_none() {
        return Err(Errno::EINVAL);
    }
    record_change(t, path, false, Vec::new());
    let (doomed, complete) = post_order(t, path);
    for node_path in &doomed {
        record_change(t, node_path, true, Vec::new());
    }
    for node_path in &doomed {
        t.delete(node_path);
    }
    if !complete {
        // A transaction's copy listed a child that is gone (removed
        // outside after the copy was taken). The C daemon removes node by
        // node, each from its parent's list, and stops with EIO at the
        // missing child, leaving what it removed so far removed.
        for node_path in &doomed {
            let name = base_name(node_path);
            t.update(parent_of(node_path), |n| remove_first_child(n, name));
        }
        return Err(Errno::EIO);
    }
    let name = base_name(path);
    // In a transaction the parent is the transaction's copy, which need not
    // list a child created outside after the copy was taken. The C daemon
    // of Xen 4.17 removes the subtree first and then finds no entry to
    // remove from the parent: EIO (`delete_child`), with the subtree gone
    // from the transaction's view (measured on real Xen: `model`, scenario
    // `xs-suites-real`). Such a transaction cannot commit: the parent it
    // copied has changed since (EAGAIN).
    let listed = t
        .node(parent_of(path))
        .is_some_and(|parent| parent.children.iter().any(|c| &**c == name));
    if !listed {
        return Err(Errno::EIO);
    }
    t.update(parent_of(path), |n| remove_first_child(n, name));
    Ok(())
}

/// Removes the first entry `name` from `node`'s child list, as the C
/// daemon's `delete_child` does: a name listed twice (see [`post_order`])
/// stays listed once (measured on real Xen, `xs-suites-real`).
fn remove_first_child(node: &mut Node, name: &str) {
    if let Some(i) = node.children.iter().position(|c| &**c == name) {
        node.children.remove(i);
    }
}

/// `root` and every node below it, children before their parent, siblings
/// in creation order (the order the C daemon deletes and fires in), and
/// whether the walk was complete. It stops at a listed child that does not
/// exist — possible only in a transaction, whose copy of a node may list a
/// child removed outside since — returning the nodes finished before it.
fn post_order<T: Tree>(t: &mut T, root: &str) -> (Vec<String>, bool) {
    let children_of =
        |t: &mut T, p: &str| -> Option<Vec<Box<str>>> { t.node(p).map(|n| n.children.clone()) };
    let mut out = Vec::new();
    let mut stack = vec![(
        root.to_owned(),
        children_of(t, root).unwrap_or_default(),
        0usize,
    )];
    while let Some((path, children, next)) = stack.last_mut() {
        if let Some(child) = children.get(*next) {
            *next += 1;
            let child_path = if path == "/" {
                format!("/{child}")
            } else {
                format!("{path}/{child}")
            };
            // A name listed twice (a transaction's copy of the parent listed
            // it when the node was gone, and the node was created again:
            // the C daemon appends the name without looking) is met again
            // after its node was removed: as missing as a child removed
            // outside.
            let Some(grandchildren) =
                children_of(t, &child_path).filter(|_| !out.contains(&child_path))
            else {
                return (out, false);
            };
            stack.push((child_path, grandchildren, 0));
        } else if let Some((path, _, _)) = stack.pop() {
            out.push(path);
        }
    }
    (out, true)
}

/// The first domid Xen reserves for itself (`DOMID_SELF`, `DOMID_IO`, ...,
/// `DOMID_INVALID`): no guest can ever have it or anything above it.
pub const DOMID_FIRST_RESERVED: u32 = 0x7FF0;

/// SET_PERMS: replaces the permission list. The caller must own the node
/// (or be dom0); a guest may not give it away (EPERM).
///
/// An owner that cannot be a domain (a reserved domid or above) is ENOENT,
/// checked first, as the C daemon does for any owner the hypervisor does not
/// know. A free ordinary domid is accepted: without a hypervisor we cannot
/// tell whether it exists, and libxl writes a new domain's nodes, owned by
/// it, before it introduces the domain (docs/design/xenstored.md).
pub fn set_perms<T: Tree>(
    t: &mut T,
    caller: &Caller,
    quotas: &Quotas,
    path: &str,
    perms: Perms,
) -> Result<(), Errno> {
    if perms.owner() >= DOMID_FIRST_RESERVED {
        return Err(Errno::ENOENT);
    }
    check(t, caller, path, Need::Own)?;
    let (old, size) = t
        .node(path)
        .map(|n| (n.perms.clone(), n.record_size()))
        .ok_or(Errno::ENOENT)?;
    if !caller.privileged && perms.owner() != old.owner() {
        return Err(Errno::EPERM);
    }
    let new_size =
        size - crate::store::record_perms_size(&old) + crate::store::record_perms_size(&perms);
    if too_big_for(caller, quotas, new_size) {
        return Err(Errno::ENOSPC);
    }
    t.update(path, |n| n.perms = perms);
    if !path.starts_with('@') {
        record_change(t, path, false, vec![old]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Direct, Overlay, Store, TxView};

    struct Fixture {
        store: Store,
        changes: Vec<Change>,
        quotas: Quotas,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                store: Store::new(),
                changes: Vec::new(),
                quotas: Quotas::default(),
            }
        }
        fn t(&mut self) -> Direct<'_> {
            Direct::new(&mut self.store, &mut self.changes)
        }
        fn write(&mut self, c: &Caller, path: &str, value: &str) -> Result<(), Errno> {
            let q = self.quotas;
            write(&mut self.t(), c, &q, path, value.as_bytes())
        }
        fn read(&mut self, c: &Caller, path: &str) -> Result<String, Errno> {
            read(&mut self.t(), c, path).map(|v| String::from_utf8(v).unwrap())
        }
        fn set_perms(&mut self, c: &Caller, path: &str, perms: &str) -> Result<(), Errno> {
            let q = self.quotas;
            set_perms(&mut self.t(), c, &q, path, perms.parse().unwrap())
        }
        fn dir(&mut self, c: &Caller, path: &str) -> Result<Vec<u8>, Errno> {
            directory(&mut self.t(), c, path)
        }
        fn events(&mut self) -> Vec<(String, bool)> {
            self.changes
                .drain(..)
                .map(|c| (c.path.to_string(), c.exact))
                .collect()
        }
    }

    const DOM0: Caller = Caller::DOM0;

    #[test]
    fn write_creates_parents_with_empty_values() {
        let mut f = Fixture::new();
        f.write(&DOM0, "/a/b/c", "v").unwrap();
        assert_eq!(f.read(&DOM0, "/a/b/c").unwrap(), "v");
        assert_eq!(f.read(&DOM0, "/a/b").unwrap(), "");
        assert_eq!(f.dir(&DOM0, "/a").unwrap(), b"b\0");
        assert_eq!(f.dir(&DOM0, "/").unwrap(), b"tool\0a\0");
        assert_eq!(f.events(), vec![("/a/b/c".into(), false)]);
        f.store.check().unwrap();
    }

    #[test]
    fn missing_node_reports_enoent_or_eacces_by_parent() {
        let mut f = Fixture::new();
        let guest = Caller::guest(5);
        assert_eq!(f.read(&DOM0, "/nope"), Err(Errno::ENOENT));
        assert_eq!(f.read(&guest, "/nope"), Err(Errno::EACCES));
        f.write(&DOM0, "/pub", "").unwrap();
        f.set_perms(&DOM0, "/pub", "n0 r5").unwrap();
        assert_eq!(f.read(&guest, "/pub/nope"), Err(Errno::ENOENT));
        assert_eq!(f.read(&guest, "/pub").unwrap(), "");
        assert_eq!(f.write(&guest, "/pub", "x"), Err(Errno::EACCES));
    }

    #[test]
    fn guests_own_what_they_create_and_cannot_give_it_away() {
        let mut f = Fixture::new();
        let guest = Caller::guest(5);
        f.write(&DOM0, "/local/domain/5", "").unwrap();
        f.set_perms(&DOM0, "/local/domain/5", "n5").unwrap();
        f.write(&guest, "/local/domain/5/data/x", "1").unwrap();
        let perms = get_perms(&mut f.t(), &guest, "/local/domain/5/data/x").unwrap();
        assert_eq!(perms, b"n5\0");
        assert_eq!(
            f.set_perms(&guest, "/local/domain/5/data/x", "n6"),
            Err(Errno::EPERM)
        );
        f.set_perms(&guest, "/local/domain/5/data/x", "n5 r6")
            .unwrap();
        assert_eq!(
            f.read(&Caller::guest(6), "/local/domain/5/data/x").unwrap(),
            "1"
        );
    }

    #[test]
    fn an_owner_no_domain_can_have_is_refused_first() {
        let mut f = Fixture::new();
        f.write(&DOM0, "/p", "").unwrap();
        for owner in ["n32752", "b65535", "r70000"] {
            assert_eq!(
                f.set_perms(&DOM0, "/p", owner),
                Err(Errno::ENOENT),
                "{owner}"
            );
            // Before the node and access checks, as in the C daemon.
            assert_eq!(f.set_perms(&DOM0, "/missing", owner), Err(Errno::ENOENT));
            assert_eq!(
                f.set_perms(&Caller::guest(3), "/p", owner),
                Err(Errno::ENOENT)
            );
        }
        assert_eq!(get_perms(&mut f.t(), &DOM0, "/p").unwrap(), b"n0\0");
        // A domain not introduced (yet) may own a node: libxl's order.
        f.set_perms(&DOM0, "/p", "b32751 r32752").unwrap();
        f.set_perms(&DOM0, "/p", "n3").unwrap();
    }

    #[test]
    fn non_owner_with_write_access_cannot_set_perms() {
        let mut f = Fixture::new();
        f.write(&DOM0, "/shared", "").unwrap();
        f.set_perms(&DOM0, "/shared", "b0").unwrap();
        assert_eq!(
            f.set_perms(&Caller::guest(3), "/shared", "b0"),
            Err(Errno::EACCES)
        );
    }

    #[test]
    fn entries_quota_counts_owned_nodes() {
        let mut f = Fixture::new();
        f.quotas.entries = 3;
        let guest = Caller::guest(5);
        f.write(&DOM0, "/local/domain/5", "").unwrap();
        f.set_perms(&DOM0, "/local/domain/5", "n5").unwrap();
        // The home itself counts: two more nodes fit.
        f.write(&guest, "/local/domain/5/a", "").unwrap();
        assert_eq!(
            f.write(&guest, "/local/domain/5/b/c", ""),
            Err(Errno::ENOSPC)
        );
        assert_eq!(f.read(&guest, "/local/domain/5/b"), Err(Errno::ENOENT));
        f.write(&guest, "/local/domain/5/b", "").unwrap();
        rm(&mut f.t(), &guest, "/local/domain/5/a").unwrap();
        f.write(&guest, "/local/domain/5/c", "").unwrap();
        f.store.check().unwrap();
    }

    #[test]
    fn entry_size_quota() {
        let mut f = Fixture::new();
        f.write(&DOM0, "/local/domain/5", "").unwrap();
        f.set_perms(&DOM0, "/local/domain/5", "n5").unwrap();
        let guest = Caller::guest(5);
        let q = f.quotas;
        let fits = vec![b'x'; q.entry_size - 24 - 8 - 1];
        write(&mut f.t(), &guest, &q, "/local/domain/5/v", &fits).unwrap();
        let too_big = vec![b'x'; q.entry_size - 24 - 8];
        assert_eq!(
            write(&mut f.t(), &guest, &q, "/local/domain/5/v", &too_big),
            Err(Errno::ENOSPC)
        );
        write(&mut f.t(), &DOM0, &q, "/local/domain/5/v", &too_big).unwrap();
    }

    #[test]
    fn rm_fires_root_then_each_removed_node_deepest_first() {
        let mut f = Fixture::new();
        f.write(&DOM0, "/a/b/c", "").unwrap();
        f.write(&DOM0, "/a/d", "").unwrap();
        f.events();
        rm(&mut f.t(), &DOM0, "/a").unwrap();
        assert_eq!(
            f.events(),
            vec![
                ("/a".into(), false),
                ("/a/b/c".into(), true),
                ("/a/b".into(), true),
                ("/a/d".into(), true),
                ("/a".into(), true),
            ]
        );
        assert_eq!(f.dir(&DOM0, "/").unwrap(), b"tool\0");
        assert_eq!(f.store.len(), 5);
        f.store.check().unwrap();
    }

    #[test]
    fn rm_missing_needs_existing_parent_and_root_is_einval() {
        let mut f = Fixture::new();
        rm(&mut f.t(), &DOM0, "/tool/nope").unwrap();
        assert_eq!(rm(&mut f.t(), &DOM0, "/nope/nope"), Err(Errno::ENOENT));
        assert_eq!(rm(&mut f.t(), &DOM0, "/"), Err(Errno::EINVAL));
    }

    #[test]
    fn mkdir_existing_is_silent() {
        let mut f = Fixture::new();
        let q = f.quotas;
        mkdir(&mut f.t(), &DOM0, &q, "/tool").unwrap();
        assert!(f.events().is_empty());
        mkdir(&mut f.t(), &DOM0, &q, "/new").unwrap();
        assert_eq!(f.events(), vec![("/new".into(), false)]);
    }

    #[test]
    fn directory_part_pages_through_children() {
        let mut f = Fixture::new();
        for i in 0..600 {
            f.write(&DOM0, &format!("/big/child-{i:04}"), "").unwrap();
        }
        assert_eq!(f.dir(&DOM0, "/big"), Err(Errno::E2BIG));
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let part = directory_part(&mut f.t(), &DOM0, "/big", offset).unwrap();
            assert!(part.len() <= PAYLOAD_MAX);
            let mut fields: Vec<&[u8]> = part.split(|b| *b == 0).collect();
            fields.pop(); // after the final NUL
            let _generation = fields.remove(0);
            let done = fields.last() == Some(&&b""[..]);
            for name in fields.iter().filter(|n| !n.is_empty()) {
                offset += name.len() + 1;
                names.push(String::from_utf8(name.to_vec()).unwrap());
            }
            if done {
                break;
            }
        }
        assert_eq!(names.len(), 600);
        assert_eq!(names[599], "child-0599");
    }

    #[test]
    fn transaction_ops_see_own_writes_only() {
        let mut store = Store::new();
        let q = Quotas::default();
        let mut overlay = Overlay::new(None);
        let mut tx = TxView::new(&store, &mut overlay);
        write(&mut tx, &DOM0, &q, "/t/x", b"1").unwrap();
        assert_eq!(read(&mut tx, &DOM0, "/t/x").unwrap(), b"1");
        assert!(store.get("/t/x").is_none());
        let changes = store.commit(overlay, q.entries).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(&*store.get("/t/x").unwrap().value, b"1");
        assert_eq!(store.get("/").unwrap().children.len(), 2);
    }
}
