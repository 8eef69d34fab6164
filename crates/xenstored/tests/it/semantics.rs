//! The daemon's protocol semantics against the C xenstored's: watches,
//! transactions, domains, directory paging — over real sockets.

use std::time::Duration;

use crate::common::{arg, args, Bed, Raw, GUEST};
use xenstore::wire::MsgType;
use xenstore::{Errno, WatchEvent};

const WAIT: Option<Duration> = Some(Duration::from_secs(5));
const QUIET: Option<Duration> = Some(Duration::from_millis(100));

fn event(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

#[test]
fn watch_fires_once_immediately_and_duplicates_are_eexist() {
    let bed = Bed::start();
    let mut raw = bed.raw();
    let req = raw.send(MsgType::Watch as u32, 0, &args(&["/w", "tok"]));
    let reply = raw.reply(req);
    assert_eq!(reply.payload, b"OK\0");
    // The first event follows the acknowledgement at once.
    let first = raw.frame().unwrap();
    assert_eq!(first.msg_type, MsgType::WatchEvent as u32);
    assert_eq!((first.req_id, first.tx_id), (0, 0));
    assert_eq!(first.payload, b"/w\0tok\0");
    assert_eq!(
        raw.call(MsgType::Watch, 0, &args(&["/w", "tok"])),
        Err("EEXIST".into())
    );
    // Same path, other token: a second watch.
    raw.call(MsgType::Watch, 0, &args(&["/w", "tok2"])).unwrap();
    assert_eq!(
        raw.call(MsgType::Unwatch, 0, &args(&["/w", "nope"])),
        Err("ENOENT".into())
    );
    raw.call(MsgType::Unwatch, 0, &args(&["/w", "tok"]))
        .unwrap();
}

#[test]
fn watches_match_subtrees_not_prefixes() {
    let bed = Bed::start();
    let mut watcher = bed.dom0();
    watcher.watch("/a", "a").unwrap();
    watcher.watch("/", "root").unwrap();
    assert_eq!(watcher.next_event(WAIT).unwrap(), Some(event("/a", "a")));
    assert_eq!(watcher.next_event(WAIT).unwrap(), Some(event("/", "root")));
    let mut writer = bed.dom0();
    writer.write("/ab", "x").unwrap();
    writer.write("/a/b", "y").unwrap();
    let mut got = Vec::new();
    while let Some(e) = watcher.next_event(QUIET).unwrap() {
        got.push(e);
    }
    got.sort_by(|x, y| (&x.token, &x.path).cmp(&(&y.token, &y.path)));
    assert_eq!(
        got,
        vec![
            event("/a/b", "a"),
            event("/a/b", "root"),
            event("/ab", "root")
        ]
    );
}

#[test]
fn rm_fires_removed_nodes_and_ancestors_like_the_c_daemon() {
    let bed = Bed::start();
    let mut dom0 = bed.dom0();
    dom0.write("/r/a/deep", "1").unwrap();
    let mut w = bed.dom0();
    for (path, token) in [
        ("/r/a/deep", "deep"),
        ("/r/a", "a"),
        ("/", "root"),
        ("/r/a/never", "never"),
    ] {
        w.watch(path, token).unwrap();
        assert_eq!(w.next_event(WAIT).unwrap(), Some(event(path, token)));
    }
    dom0.rm("/r/a").unwrap();
    let mut got = Vec::new();
    while let Some(e) = w.next_event(QUIET).unwrap() {
        got.push(e);
    }
    // The removed root fires its own and its ancestors' watches; then each
    // removed node, deepest first, fires watches set exactly on it (so the
    // watch on the root hears twice, as with the C daemon). A watch on a
    // node that never existed hears nothing.
    assert_eq!(
        got,
        vec![
            event("/r/a", "a"),
            event("/r/a", "root"),
            event("/r/a/deep", "deep"),
            event("/r/a", "a"),
        ]
    );
}

#[test]
fn relative_watches_hear_relative_paths() {
    let bed = Bed::start();
    let mut guest = bed.guest(GUEST);
    guest.watch("device", "dev").unwrap();
    assert_eq!(
        guest.next_event(WAIT).unwrap(),
        Some(event("device", "dev"))
    );
    bed.dom0()
        .write("/local/domain/5/device/vbd/51712", "x")
        .unwrap();
    assert_eq!(
        guest.next_event(WAIT).unwrap(),
        Some(event("device/vbd/51712", "dev"))
    );
}

#[test]
fn transaction_events_come_at_commit_and_never_on_abort() {
    let bed = Bed::start();
    let mut w = bed.dom0();
    w.watch("/tx", "t").unwrap();
    assert!(w.next_event(WAIT).unwrap().is_some());
    let mut raw = bed.raw();
    let id = tx_start(&mut raw);
    raw.call(MsgType::Write, id, b"/tx/a\0v").unwrap();
    assert_eq!(w.next_event(QUIET).unwrap(), None, "nothing before commit");
    assert_eq!(
        bed.dom0().read_opt("/tx/a").unwrap(),
        None,
        "invisible outside"
    );
    raw.call(MsgType::TransactionEnd, id, b"T\0").unwrap();
    assert_eq!(w.next_event(WAIT).unwrap(), Some(event("/tx/a", "t")));

    let id = tx_start(&mut raw);
    raw.call(MsgType::Write, id, b"/tx/b\0v").unwrap();
    raw.call(MsgType::TransactionEnd, id, b"F\0").unwrap();
    assert_eq!(w.next_event(QUIET).unwrap(), None);
    assert_eq!(bed.dom0().read_opt("/tx/b").unwrap(), None);
}

fn tx_start(raw: &mut Raw) -> u32 {
    let reply = raw.call(MsgType::TransactionStart, 0, b"\0").unwrap();
    std::str::from_utf8(reply.strip_suffix(b"\0").unwrap())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn commit_fails_with_eagain_only_when_a_used_node_changed() {
    let bed = Bed::start();
    let mut dom0 = bed.dom0();
    dom0.write("/c/x", "0").unwrap();
    dom0.write("/c/y", "0").unwrap();
    let mut raw = bed.raw();

    // Read /c/x, someone changes it: EAGAIN, and the transaction is gone.
    let id = tx_start(&mut raw);
    assert_eq!(raw.call(MsgType::Read, id, &arg("/c/x")).unwrap(), b"0");
    raw.call(MsgType::Write, id, b"/c/y\x001").unwrap();
    dom0.write("/c/x", "changed").unwrap();
    assert_eq!(
        raw.call(MsgType::TransactionEnd, id, b"T\0"),
        Err("EAGAIN".into())
    );
    assert_eq!(dom0.read_string("/c/y").unwrap(), "0", "nothing applied");
    assert_eq!(
        raw.call(MsgType::Read, id, &arg("/c/x")),
        Err("ENOENT".into())
    );

    // A change to a node the transaction never used does not conflict.
    let id = tx_start(&mut raw);
    raw.call(MsgType::Write, id, b"/c/y\x002").unwrap();
    dom0.write("/c/x", "again").unwrap();
    raw.call(MsgType::TransactionEnd, id, b"T\0").unwrap();
    assert_eq!(dom0.read_string("/c/y").unwrap(), "2");

    // Two transactions writing the same node: the second commit loses.
    let mut other = bed.raw();
    let a = tx_start(&mut raw);
    let b = tx_start(&mut other);
    raw.call(MsgType::Write, a, b"/c/y\x00a").unwrap();
    other.call(MsgType::Write, b, b"/c/y\x00b").unwrap();
    raw.call(MsgType::TransactionEnd, a, b"T\0").unwrap();
    assert_eq!(
        other.call(MsgType::TransactionEnd, b, b"T\0"),
        Err("EAGAIN".into())
    );
    assert_eq!(dom0.read_string("/c/y").unwrap(), "a");
}

#[test]
fn transaction_errors() {
    let bed = Bed::start();
    let mut raw = bed.raw();
    assert_eq!(
        raw.call(MsgType::Read, 4242, &arg("/tool")),
        Err("ENOENT".into())
    );
    assert_eq!(
        raw.call(MsgType::TransactionEnd, 0, b"T\0"),
        Err("ENOENT".into())
    );
    let id = tx_start(&mut raw);
    assert_eq!(
        raw.call(MsgType::TransactionStart, id, b"\0"),
        Err("EBUSY".into())
    );
    assert_eq!(
        raw.call(MsgType::TransactionEnd, id, b"maybe\0"),
        Err("EINVAL".into())
    );
    // Watches ignore the transaction id.
    raw.call(MsgType::Watch, 999, &args(&["/x", "t"])).unwrap();
}

#[test]
fn client_transaction_retries_until_it_commits() {
    let bed = Bed::start();
    let mut dom0 = bed.dom0();
    dom0.write("/counter", "0").unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let socket = bed.socket();
            std::thread::spawn(move || {
                let mut c = xenstore::Client::connect_socket(&socket).unwrap();
                for _ in 0..50 {
                    c.transaction(|tx| {
                        let n: u64 = tx.read_string("/counter")?.parse().unwrap();
                        tx.write("/counter", (n + 1).to_string())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        dom0.read_string("/counter").unwrap(),
        "200",
        "no lost update"
    );
}

#[test]
fn introduce_and_release_fire_special_watches() {
    let bed = Bed::start();
    let mut w = bed.dom0();
    w.watch("@introduceDomain", "intro").unwrap();
    w.watch("@releaseDomain", "rel").unwrap();
    assert!(w.next_event(WAIT).unwrap().is_some());
    assert!(w.next_event(WAIT).unwrap().is_some());
    let mut guest = bed.guest(GUEST);
    let mut dom0 = bed.dom0();
    assert!(!dom0.is_domain_introduced(GUEST).unwrap());
    dom0.introduce(GUEST, 0x1234, 3).unwrap();
    assert_eq!(
        w.next_event(WAIT).unwrap(),
        Some(event("@introduceDomain", "intro"))
    );
    assert!(dom0.is_domain_introduced(GUEST).unwrap());
    // Introducing again is fine and quiet.
    dom0.introduce(GUEST, 0x1234, 3).unwrap();
    assert_eq!(guest.read_string("/local/domain/5").unwrap(), "");
    dom0.release(GUEST).unwrap();
    assert_eq!(
        w.next_event(WAIT).unwrap(),
        Some(event("@releaseDomain", "rel"))
    );
    assert_eq!(w.next_event(QUIET).unwrap(), None);
    assert!(!dom0.is_domain_introduced(GUEST).unwrap());
    // The released domain's connections are gone; dom0 is untouched.
    assert!(guest.read("/local/domain/5").is_err());
    assert_eq!(
        dom0.release(GUEST).unwrap_err().errno(),
        Some(Errno::ENOENT)
    );
    assert_eq!(dom0.release(0).unwrap_err().errno(), Some(Errno::EINVAL));
    assert_eq!(dom0.read_string("/tool/xenstored").unwrap(), "");
}

#[test]
fn guests_do_not_see_domain_events_without_permission() {
    let bed = Bed::start();
    let mut guest = bed.guest(GUEST);
    guest.watch("@introduceDomain", "intro").unwrap();
    assert!(guest.next_event(WAIT).unwrap().is_some());
    let mut dom0 = bed.dom0();
    dom0.introduce(9, 1, 1).unwrap();
    assert_eq!(guest.next_event(QUIET).unwrap(), None);
    // The toolstack may open the special node to a guest.
    dom0.set_perms("@introduceDomain", &"n0 r5".parse().unwrap())
        .unwrap();
    dom0.introduce(10, 1, 1).unwrap();
    assert_eq!(
        guest.next_event(WAIT).unwrap(),
        Some(event("@introduceDomain", "intro"))
    );
}

#[test]
fn reset_watches_drops_watches_and_transactions() {
    let bed = Bed::start();
    let mut raw = bed.raw();
    raw.call(MsgType::Watch, 0, &args(&["/rw", "t"])).unwrap();
    let id = tx_start(&mut raw);
    raw.call(MsgType::ResetWatches, 0, b"").unwrap();
    raw.events.clear();
    bed.dom0().write("/rw", "1").unwrap();
    assert_eq!(
        raw.call(MsgType::Read, id, &arg("/tool")),
        Err("ENOENT".into())
    );
    assert!(
        raw.events.is_empty(),
        "no events after reset: {:?}",
        raw.events
    );
    // The same watch can be set again.
    raw.call(MsgType::Watch, 0, &args(&["/rw", "t"])).unwrap();
}

#[test]
fn events_reach_every_watcher_in_change_order() {
    let bed = Bed::start();
    let mut watchers: Vec<_> = (0..4)
        .map(|i| {
            let mut c = bed.dom0();
            c.watch("/order", &format!("w{i}")).unwrap();
            assert!(c.next_event(WAIT).unwrap().is_some());
            c
        })
        .collect();
    let writers: Vec<_> = (0..2)
        .map(|n| {
            let socket = bed.socket();
            std::thread::spawn(move || {
                let mut c = xenstore::Client::connect_socket(&socket).unwrap();
                for i in 0..200 {
                    c.write(&format!("/order/{n}/{i}"), "").unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let mut sequences = Vec::new();
    for w in &mut watchers {
        let mut seen = Vec::new();
        while seen.len() < 400 {
            let e = w.next_event(WAIT).unwrap().expect("event");
            seen.push(e.path);
        }
        // Each writer's events arrive in the order it wrote.
        for n in 0..2 {
            let mine: Vec<_> = seen
                .iter()
                .filter(|p| p.starts_with(&format!("/order/{n}/")))
                .cloned()
                .collect();
            let expected: Vec<_> = (0..200).map(|i| format!("/order/{n}/{i}")).collect();
            assert_eq!(mine, expected);
        }
        sequences.push(seen);
    }
    // And every watcher saw the same interleaving: the daemon's order.
    assert!(sequences.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn directory_pages_large_child_lists() {
    let bed = Bed::start();
    let mut dom0 = bed.dom0();
    let names: Vec<String> = (0..300)
        .map(|i| format!("child-with-a-long-name-{i:05}"))
        .collect();
    dom0.transaction(|tx| {
        for name in &names {
            tx.write(&format!("/big/{name}"), "")?;
        }
        Ok::<_, xenstore::client::Error>(())
    })
    .unwrap();
    let mut raw = bed.raw();
    assert_eq!(
        raw.call(MsgType::Directory, 0, &arg("/big")),
        Err("E2BIG".into())
    );
    assert_eq!(dom0.directory("/big").unwrap(), names);
}

#[test]
fn domain_paths_and_control() {
    let bed = Bed::start();
    let mut dom0 = bed.dom0();
    assert_eq!(dom0.get_domain_path(7).unwrap(), "/local/domain/7");
    let mut guest = bed.guest(GUEST);
    assert_eq!(guest.get_domain_path(3).unwrap(), "/local/domain/3");
    assert_eq!(
        guest.is_domain_introduced(GUEST).unwrap_err().errno(),
        Some(Errno::EACCES)
    );
}
