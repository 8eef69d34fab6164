//! The tree-shape and visibility classes: deep trees (XSA-418), orphaned
//! nodes (XSA-415) and watch events about unreadable nodes (XSA-115).

use super::{Daemon, ATTACKER, BYSTANDER};
use crate::common::{arg, args};
use xenstore::wire::MsgType;

/// XSA-418 (deep trees): removal and listing of the deepest tree the path
/// quota allows must not recurse on the daemon's stack. dom0 builds a
/// chain 1,016 deep in the guest's home (2 bytes per level under the
/// 2,048-byte path quota; dom0, as the guest's 1,000 entries would not
/// reach it), the guest lists it level by level and removes it.
#[test]
fn xsa_418_deep_trees_removal_and_listing() {
    let daemon = Daemon::start();
    let deep = format!("data/{}x", "a/".repeat(1015));
    daemon
        .dom0()
        .write(&format!("/local/domain/5/{deep}"), "v")
        .unwrap();
    let mut guest = daemon.guest(ATTACKER);
    let mut path = "data".to_string();
    for _ in 0..1015 {
        assert_eq!(guest.directory(&path).unwrap(), vec!["a".to_string()]);
        path.push_str("/a");
    }
    guest.rm("data/a").unwrap();
    assert!(!guest.exists(&deep).unwrap());
    daemon.assert_serving("deep tree removal");
}

/// XSA-415 (orphaned nodes): a node created in a transaction below a
/// parent that is removed outside it before the commit must not be left
/// without its parent. The commit conflicts (the parent was used) and
/// nothing remains.
#[test]
fn xsa_415_no_orphans_when_a_parent_is_removed() {
    let daemon = Daemon::start();
    let mut guest = daemon.raw_guest(ATTACKER);
    let mut dom0 = daemon.dom0();
    dom0.write("/local/domain/5/data/p/q", "").unwrap();
    let reply = guest.call(MsgType::TransactionStart, 0, b"\0").unwrap();
    let id: u32 = String::from_utf8_lossy(&reply)
        .trim_end_matches('\0')
        .parse()
        .unwrap();
    let mut payload = arg("data/p/q/child/grandchild");
    payload.push(b'v');
    guest.call(MsgType::Write, id, &payload).unwrap();
    dom0.rm("/local/domain/5/data/p").unwrap();
    assert_eq!(
        guest.call(MsgType::TransactionEnd, id, b"T\0"),
        Err("EAGAIN".to_string())
    );
    assert!(!dom0.exists("/local/domain/5/data/p/q/child").unwrap());
    assert_eq!(
        dom0.directory("/local/domain/5/data").unwrap(),
        Vec::<String>::new()
    );
}

/// XSA-115 (watch events about nodes the watcher may not read): a guest
/// watching `/` hears about changes it may read and about none it may not
/// (nodes of dom0 and of the other guest).
#[test]
fn xsa_115_no_events_about_unreadable_nodes() {
    let daemon = Daemon::start();
    let mut watcher = daemon.raw_guest(ATTACKER);
    assert_eq!(
        watcher.call(MsgType::Watch, 0, &args(&["/", "all"])),
        Ok(b"OK\0".to_vec())
    );
    let mut dom0 = daemon.dom0();
    dom0.write("/secret/a", "x").unwrap();
    daemon.guest(BYSTANDER).write("data/private", "x").unwrap();
    dom0.mkdir("/public").unwrap();
    dom0.set_perms("/public", &"n0 r5".parse().unwrap())
        .unwrap();
    dom0.write("/public/x", "x").unwrap();
    // A request after the writes: every event they caused came before it.
    watcher.call(MsgType::Read, 0, &arg("/public/x")).unwrap();
    let paths: Vec<&str> = watcher.events.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"/public/x"), "{paths:?}");
    for path in &paths {
        assert!(
            *path == "/" || path.starts_with("/public"),
            "event about {path}, which the guest may not read: {paths:?}"
        );
    }
}
