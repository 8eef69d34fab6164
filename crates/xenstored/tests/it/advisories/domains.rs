//! The domain lifecycle classes: RELEASE and soft reset (XSA-417), watches
//! and domain cleanup (XSA-324/325), and what a new domain with a released
//! one's id may reach (XSA-419, XSA-322).

use std::time::{Duration, Instant};

use super::{Daemon, ATTACKER, MIB, PROBE_BOUND};
use crate::common::args;
use xenstore::wire::{Errno, MsgType};
use xenstore::{Client, Perms};

/// XSA-417 (RELEASE and soft reset): a guest holds watches and open
/// transactions when dom0 releases it and introduces it again (what a
/// soft reset does). RELEASE closes the guest's connections and frees its
/// watch quota with them; the re-introduced guest can set every watch
/// again, and nothing the old connections held stays reachable.
#[test]
fn xsa_417_release_and_soft_reset() {
    let daemon = Daemon::start();
    let mut dom0 = daemon.dom0();
    dom0.introduce(ATTACKER, 1, 1).unwrap();
    let mut old = daemon.raw_guest(ATTACKER);
    for w in 0..128 {
        assert_eq!(
            old.call(MsgType::Watch, 0, &args(&["data", &format!("w{w}")])),
            Ok(b"OK\0".to_vec())
        );
    }
    for _ in 0..5 {
        old.call(MsgType::TransactionStart, 0, b"\0").unwrap();
    }
    dom0.release(ATTACKER).unwrap();
    assert!(
        old.is_closed(),
        "RELEASE closes the released guest's connections"
    );
    dom0.introduce(ATTACKER, 1, 1).unwrap();
    let mut new = daemon.raw_guest(ATTACKER);
    for w in 0..128 {
        assert_eq!(
            new.call(MsgType::Watch, 0, &args(&["data", &format!("w{w}")])),
            Ok(b"OK\0".to_vec()),
            "watch {w}: the old connections' watches were freed"
        );
    }
    daemon.assert_serving("release and re-introduce");
}

/// XSA-324/325 (watches and domain cleanup): a guest sets every watch its
/// quota allows — on its home, on `@releaseDomain` (not readable to it)
/// and on a subtree of its own — and keeps many events unread; dom0 then
/// cleans the domain up as a toolstack does (RELEASE, RM of the home).
/// The cleanup completes within the probe bound, the guest's connections
/// are closed, and nothing is left of the domain.
#[test]
fn xsa_324_325_watches_and_domain_cleanup() {
    let daemon = Daemon::start();
    let mut dom0 = daemon.dom0();
    dom0.introduce(ATTACKER, 1, 1).unwrap();
    let mut guest = daemon.raw_guest(ATTACKER);
    let mut token = 0;
    for path in ["@releaseDomain", "/local/domain/5", "data"] {
        for _ in 0..42 {
            token += 1;
            guest
                .call(MsgType::Watch, 0, &args(&[path, &format!("t{token}")]))
                .unwrap();
        }
    }
    let mut writer = daemon.guest(ATTACKER);
    for i in 0..300 {
        writer.write(&format!("data/n{i}"), "v").unwrap();
    }
    let start = Instant::now();
    dom0.release(ATTACKER).unwrap();
    dom0.rm("/local/domain/5").unwrap();
    assert!(
        start.elapsed() < PROBE_BOUND,
        "cleanup took {:?}",
        start.elapsed()
    );
    assert!(guest.is_closed(), "the released guest's watcher is closed");
    assert!(!dom0.exists("/local/domain/5").unwrap());
    daemon.assert_serving("domain cleanup");
    daemon.assert_rss_below(64 * MIB, "domain cleanup");
}

/// The new domain dom0 (the toolstack) makes after a release, reusing the
/// domid: a home it owns, as `Daemon::start` made for the first one.
fn recreate_guest(dom0: &mut Client, domid: u32) {
    let home = format!("/local/domain/{domid}");
    dom0.mkdir(&home).unwrap();
    dom0.set_perms(&home, &Perms::owner_only(domid)).unwrap();
    dom0.introduce(domid, 1, 1).unwrap();
}

/// XSA-419 (a released domain's nodes reachable by a new domain with its
/// id): guest 5 writes a secret and 300 nodes in its home and 300 nodes in
/// a directory of dom0's that it may write to (nodes outside its home,
/// which no cleanup of the home would find); then dom0 releases it and
/// makes a new domain 5. The C daemon removes every node a released domain
/// owns, wherever it is (`domain_tree_remove`); so does ours at RELEASE.
/// The new guest finds none of them (ENOENT in its home; in dom0's
/// directory EACCES, as the grant named the old domain: XSA-322) and its
/// entries quota starts from nothing: 900 new nodes fit, where the old 601 would have left room
/// for 399. Ceiling: 64 MiB.
#[test]
fn xsa_419_released_domains_nodes_are_not_reachable_by_a_new_domain() {
    let daemon = Daemon::start();
    let mut dom0 = daemon.dom0();
    dom0.introduce(ATTACKER, 1, 1).unwrap();
    dom0.mkdir("/local/domain/0/drop").unwrap();
    dom0.set_perms("/local/domain/0/drop", &"n0 w5".parse().unwrap())
        .unwrap();
    let mut old = daemon.guest(ATTACKER);
    old.write("data/secret", "the old domain's").unwrap();
    for i in 0..300 {
        old.write(&format!("data/n{i}"), "v").unwrap();
        old.write(&format!("/local/domain/0/drop/n{i}"), "v")
            .unwrap();
    }
    assert_eq!(
        dom0.get_perms("/local/domain/0/drop/n0").unwrap().owner(),
        ATTACKER,
        "the guest owns what it created outside its home"
    );
    let start = Instant::now();
    dom0.release(ATTACKER).unwrap();
    assert!(
        start.elapsed() < PROBE_BOUND,
        "RELEASE took {:?}",
        start.elapsed()
    );
    assert!(
        old.read("data/secret").is_err(),
        "RELEASE closes the old guest's connections"
    );
    assert!(
        !dom0.exists("/local/domain/5").unwrap(),
        "the home the guest owned is gone"
    );
    assert_eq!(
        dom0.directory("/local/domain/0/drop").unwrap(),
        Vec::<String>::new(),
        "the guest's nodes outside its home are gone"
    );
    recreate_guest(&mut dom0, ATTACKER);
    let mut new = daemon.guest(ATTACKER);
    for path in ["data/secret", "data/n0"] {
        assert_eq!(
            new.read(path).unwrap_err().errno(),
            Some(Errno::ENOENT),
            "{path}: the new domain 5 finds nothing of the old one"
        );
    }
    // dom0's directory no longer grants domain 5 anything either (XSA-322):
    // the new guest may not even learn whether something is there.
    assert_eq!(
        new.read("/local/domain/0/drop/n0").unwrap_err().errno(),
        Some(Errno::EACCES)
    );
    for i in 0..900 {
        new.write(&format!("data/fresh/{}/{}", i / 100, i % 100), "v")
            .expect("the new domain's quota holds none of the old one's nodes");
    }
    daemon.assert_serving("release of a domain with nodes inside and outside its home");
    daemon.assert_rss_below(64 * MIB, "release of a domain with nodes");
}

/// XSA-322 (a new domain inheriting permissions that named a released
/// one): dom0 grants guest 5 read access to a backend directory and write
/// access to another node; guest 5 is released and a new domain 5 made.
/// The C daemon makes an entry naming a domain younger than the node grant
/// nothing (`domain_adjust_node_perms`); ours drops such entries at
/// RELEASE. The new guest may not read (EACCES, as the node exists), may
/// not write, and hears no watch event about the node (XSA-115's rule:
/// only what it may read); a grant dom0 makes after the release applies.
/// Ceiling: 64 MiB.
#[test]
fn xsa_322_new_domain_does_not_inherit_a_released_domains_permissions() {
    let daemon = Daemon::start();
    let mut dom0 = daemon.dom0();
    dom0.introduce(ATTACKER, 1, 1).unwrap();
    let backend = "/local/domain/0/backend/vbd/5/768";
    let shared = "/local/domain/0/shared";
    dom0.mkdir(backend).unwrap();
    dom0.set_perms(backend, &"n0 r5".parse().unwrap()).unwrap();
    dom0.write(&format!("{backend}/params"), "the old domain's disk")
        .unwrap();
    dom0.mkdir(shared).unwrap();
    dom0.set_perms(shared, &"n0 b5".parse().unwrap()).unwrap();
    let mut old = daemon.guest(ATTACKER);
    assert_eq!(
        old.read_string(&format!("{backend}/params")).unwrap(),
        "the old domain's disk",
        "the grant works for the domain it was made for"
    );
    old.write(shared, "from the old domain").unwrap();
    dom0.release(ATTACKER).unwrap();
    recreate_guest(&mut dom0, ATTACKER);
    let mut new = daemon.guest(ATTACKER);
    assert_eq!(
        new.read(&format!("{backend}/params")).unwrap_err().errno(),
        Some(Errno::EACCES)
    );
    assert_eq!(new.read(backend).unwrap_err().errno(), Some(Errno::EACCES));
    assert_eq!(
        new.write(shared, "x").unwrap_err().errno(),
        Some(Errno::EACCES)
    );
    assert_eq!(
        dom0.get_perms(backend).unwrap().to_string(),
        "n0",
        "the entry naming the released domain is gone"
    );
    new.watch(backend, "b").unwrap();
    let first = new.next_event(Some(PROBE_BOUND)).unwrap();
    assert!(first.is_some(), "a watch fires once when it is set");
    dom0.write(&format!("{backend}/params"), "another domain's disk")
        .unwrap();
    assert_eq!(
        new.next_event(Some(Duration::from_millis(300))).unwrap(),
        None,
        "no event about a node the new domain may not read"
    );
    dom0.set_perms(backend, &"n0 r5".parse().unwrap()).unwrap();
    assert!(
        new.read(backend).is_ok(),
        "a grant made for the new domain applies"
    );
    daemon.assert_serving("a new domain with a released domain's id");
    daemon.assert_rss_below(64 * MIB, "a new domain with a released domain's id");
}
