//! The resource-exhaustion classes: unread replies (XSA-326, XSA-416),
//! watch-event floods and transactions that hold many nodes (XSA-326).

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::{frame, push, Daemon, ATTACKER, MIB, PROBE_BOUND};
use crate::common::{arg, args, Raw};
use xenstore::wire::{Message, MsgType};
use xenstore::Client;

/// XSA-326 (unread replies): a guest pipelines requests with large replies
/// and never reads them, on several connections. The daemon stops reading
/// a connection that has `outstanding` (1024) unread replies, so what it
/// holds is bounded per connection (1024 replies of ~2 KiB); the rest of
/// the flood waits in the guest's socket. Ceiling: 128 MiB for 8
/// connections (8 × 1024 × 2 KiB = 16 MiB of replies plus the daemon).
#[test]
fn xsa_326_unread_replies() {
    let daemon = Daemon::start();
    let mut guest = daemon.guest(ATTACKER);
    guest.write("data/big", vec![b'x'; 1900]).unwrap();
    let read = frame(MsgType::Read, 0, arg("data/big"));
    let flood: Vec<u8> = read
        .iter()
        .copied()
        .cycle()
        .take(read.len() * 20_000)
        .collect();
    let mut attackers: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(daemon.guest_socket(ATTACKER)).unwrap())
        .collect();
    for stream in &mut attackers {
        let taken = push(stream, &flood);
        assert!(
            taken < flood.len(),
            "the daemon read the whole flood: no back-pressure"
        );
    }
    daemon.assert_serving("unread replies");
    daemon.assert_rss_below(128 * MIB, "unread replies");
    // The attacker's replies are there when it reads.
    let stream = &mut attackers[0];
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reply = Message::read_from(stream).unwrap();
    assert_eq!(reply.msg_type, MsgType::Read as u32);
    assert_eq!(reply.payload.len(), 1900);
}

/// XSA-416 (temporary memory of unread replies): the replies a guest does
/// not read must not make the daemon keep their requests' temporary memory
/// too. Ours keeps only each reply's bytes (requests are handled to
/// completion and freed); a guest that stops reading gets its 16 MiB of
/// unread output, then is disconnected. The attack: DIRECTORY of a
/// directory whose listing is ~4 KiB, pipelined without reading.
/// Ceiling: 64 MiB.
#[test]
fn xsa_416_temporary_memory_of_unread_replies() {
    let daemon = Daemon::start();
    // dom0 makes the directory (a guest's own record would pass its
    // entry-size quota); the guest owns and may list it.
    let mut dom0 = daemon.dom0();
    for i in 0..120 {
        dom0.write(
            &format!("/local/domain/5/data/dir/child-with-a-longish-name-{i:04}"),
            "",
        )
        .unwrap();
    }
    let list = frame(MsgType::Directory, 0, arg("data/dir"));
    let flood: Vec<u8> = list
        .iter()
        .copied()
        .cycle()
        .take(list.len() * 50_000)
        .collect();
    let mut stream = UnixStream::connect(daemon.guest_socket(ATTACKER)).unwrap();
    push(&mut stream, &flood);
    daemon.assert_serving("unread DIRECTORY replies");
    daemon.assert_rss_below(64 * MIB, "unread DIRECTORY replies");
}

/// XSA-326 (watch-event floods from removing a large watched subtree): a
/// guest fills its quota with nodes, watches its subtree with every watch
/// its quota allows (128) and never reads. dom0 removes the subtree: each
/// removed node fires every watch. The events queued for the guest are
/// bounded (a connection whose unread output passes 16 MiB is dropped);
/// dom0's RM completes within the probe bound. Ceiling: 96 MiB.
#[test]
fn xsa_326_watch_event_flood_from_removing_a_large_watched_subtree() {
    let daemon = Daemon::start();
    let mut guest = daemon.guest(ATTACKER);
    for i in 0..30 {
        for j in 0..30 {
            guest.write(&format!("data/t/n{i}/m{j}"), "").unwrap();
        }
    }
    let mut watcher = daemon.raw_guest(ATTACKER);
    for w in 0..128 {
        let reply = watcher.call(MsgType::Watch, 0, &args(&["data/t", &format!("w{w}")]));
        assert_eq!(reply, Ok(b"OK\0".to_vec()), "watch {w}");
    }
    assert_eq!(
        watcher.call(MsgType::Watch, 0, &args(&["data/t", "one-too-many"])),
        Err("E2BIG".to_string()),
        "the watch quota"
    );
    let mut dom0 = daemon.dom0();
    let start = Instant::now();
    dom0.rm("/local/domain/5/data/t").unwrap();
    assert!(
        start.elapsed() < PROBE_BOUND,
        "RM took {:?}",
        start.elapsed()
    );
    daemon.assert_serving("a watch-event flood");
    daemon.assert_rss_below(96 * MIB, "a watch-event flood");
    // The flood happened: the watcher has events waiting (or, had it
    // passed 16 MiB unread, was disconnected).
    match watcher.frame() {
        Ok(frame) => assert_eq!(frame.msg_type, MsgType::WatchEvent as u32),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
    }
}

/// XSA-326 (nodes in many transactions), with more connections than the
/// relay allows: 11 connections of one guest (its whole transaction quota)
/// each create 701 nodes in a transaction and commit. Only commits that
/// leave the guest below its quota (1000) succeed — the C daemon re-checks
/// at commit — so the guest ends with fewer than 1000 nodes instead of
/// 7,700.
#[test]
fn xsa_326_nodes_in_many_transactions_on_many_connections() {
    let daemon = Daemon::start();
    let mut conns: Vec<Raw> = (0..11).map(|_| daemon.raw_guest(ATTACKER)).collect();
    let mut ids = Vec::new();
    for (c, conn) in conns.iter_mut().enumerate() {
        let reply = conn.call(MsgType::TransactionStart, 0, b"\0").unwrap();
        let id: u32 = String::from_utf8_lossy(&reply)
            .trim_end_matches('\0')
            .parse()
            .unwrap();
        for k in 0..7 {
            let path = format!("data/c{c}/k{k}/{}x", "a/".repeat(98));
            let mut payload = arg(&path);
            payload.push(b'v');
            assert_eq!(
                conn.call(MsgType::Write, id, &payload),
                Ok(b"OK\0".to_vec())
            );
        }
        ids.push(id);
    }
    let mut committed = 0;
    for (conn, id) in conns.iter_mut().zip(ids) {
        match conn.call(MsgType::TransactionEnd, id, b"T\0") {
            Ok(_) => committed += 1,
            Err(e) => assert_eq!(e, "ENOSPC"),
        }
    }
    assert_eq!(
        committed, 1,
        "one 701-node transaction fits the quota, two do not"
    );
    let mut dom0 = daemon.dom0();
    let count = count_nodes(&mut dom0, "/local/domain/5");
    assert!(count < 1000, "the guest owns {count} nodes");
    daemon.assert_serving("transactions past the quota");
}

fn count_nodes(client: &mut Client, path: &str) -> usize {
    1 + client
        .directory(path)
        .unwrap()
        .iter()
        .map(|child| count_nodes(client, &format!("{path}/{child}")))
        .sum::<usize>()
}

/// XSA-326 (accessing many nodes in one transaction): a guest's
/// transaction may use at most 1024 nodes (ENOSPC past that), so what it
/// copies is bounded; and a guest may have 11 open transactions however
/// many connections it opens (ours counts them per domain: a real guest
/// has one ring). The attack: 10 connections each try to open 11
/// transactions, each transaction reads 1,100 nodes of ~1 KiB. At most
/// 11 × 1024 copies of ~1 KiB are held. Ceiling: 48 MiB.
#[test]
fn xsa_326_accessing_many_nodes_in_one_transaction() {
    let daemon = Daemon::start();
    let mut dom0 = daemon.dom0();
    // 1,100 readable nodes with ~1 KiB values, written by dom0.
    dom0.mkdir("/pool").unwrap();
    dom0.set_perms("/pool", &"n0 r5".parse().unwrap()).unwrap();
    for i in 0..1100 {
        dom0.write(&format!("/pool/n{i}"), vec![b'v'; 1000])
            .unwrap();
    }
    let (mut opened, mut refused_starts, mut refused_reads) = (0, 0, 0);
    let mut conns = Vec::new();
    for _ in 0..10 {
        let mut conn = daemon.raw_guest(ATTACKER);
        for _ in 0..11 {
            let id: u32 = match conn.call(MsgType::TransactionStart, 0, b"\0") {
                Ok(reply) => String::from_utf8_lossy(&reply)
                    .trim_end_matches('\0')
                    .parse()
                    .unwrap(),
                Err(e) => {
                    assert_eq!(e, "ENOSPC");
                    refused_starts += 1;
                    continue;
                }
            };
            opened += 1;
            for i in 0..1100 {
                if conn.call(MsgType::Read, id, &arg(&format!("/pool/n{i}")))
                    == Err("ENOSPC".into())
                {
                    refused_reads += 1;
                    break;
                }
            }
        }
        conns.push(conn); // every transaction stays open
    }
    assert_eq!(
        opened, 11,
        "open transactions of one guest, all connections together"
    );
    assert_eq!(refused_starts, 110 - 11);
    assert_eq!(
        refused_reads, 11,
        "every transaction reached its node quota"
    );
    daemon.assert_serving("transactions reading many nodes");
    daemon.assert_rss_below(48 * MIB, "transactions reading many nodes");
}
