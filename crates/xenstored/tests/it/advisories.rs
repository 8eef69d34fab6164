//! The xenstore security advisories as attacks on our daemon, one test per
//! class, each named after its advisory (docs/reliability.md has the
//! table). A guest performs the attack through its domain socket while
//! dom0 and another guest keep using the daemon; each test asserts that
//!
//! - the daemon keeps serving them: every probe round trip (a dom0 WRITE
//!   and READ, the other guest's READ) finishes within [`PROBE_BOUND`] —
//!   10 s, generous on purpose: the bound catches a daemon that stops
//!   serving, not a slow one, on a loaded 2-core machine (speed is the
//!   benchmarks' job);
//! - its memory stays bounded: the daemon runs in its own process (this
//!   binary re-executed) and its resident set, read from /proc after the
//!   attack, stays below the ceiling each test states;
//! - it refuses what the C daemon refuses (the errno of each refusal).
//!
//! The classes that are pure protocol also run against the C daemon of Xen
//! 4.17 through the relay guest (`model.rs`, `guest_xsa_…`, scenario
//! `xs-suites-real`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{arg, args, Raw};
use xenstore::wire::{Errno, Message, MsgType};
use xenstore::{Client, Perms};

/// The attacking guest and a bystander guest.
const ATTACKER: u32 = 5;
const BYSTANDER: u32 = 6;
/// Longest a probe round trip may take while an attack runs (see above).
const PROBE_BOUND: Duration = Duration::from_secs(10);
const MIB: u64 = 1024 * 1024;

/// Set when this binary is re-executed to be the daemon.
const SERVE_ENV: &str = "XENSTORED_ADVISORY_SERVE_IN";

/// Our daemon in a process of its own, with sockets for dom0 and the two
/// guests; killed on drop.
struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
}

impl Daemon {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "advisories::serve_daemon_process", "--nocapture"])
            .env(SERVE_ENV, dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("re-execute the test binary as the daemon");
        let daemon = Daemon { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon.socket().exists() {
            assert!(Instant::now() < deadline, "the daemon never served");
            std::thread::sleep(Duration::from_millis(10));
        }
        for domid in [ATTACKER, BYSTANDER] {
            let mut dom0 = daemon.dom0();
            let home = format!("/local/domain/{domid}");
            dom0.mkdir(&home).unwrap();
            dom0.set_perms(&home, &Perms::owner_only(domid)).unwrap();
        }
        daemon
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    fn guest_socket(&self, domid: u32) -> PathBuf {
        self.dir.path().join(format!("guest-{domid}"))
    }

    fn dom0(&self) -> Client {
        Client::connect_socket(&self.socket()).unwrap()
    }

    fn guest(&self, domid: u32) -> Client {
        Client::connect_socket(&self.guest_socket(domid)).unwrap()
    }

    fn raw_guest(&self, domid: u32) -> Raw {
        Raw::connect(&self.guest_socket(domid))
    }

    /// The daemon's resident set, from /proc.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// dom0 and the bystander guest are served, each round trip within
    /// [`PROBE_BOUND`].
    fn assert_serving(&self, during: &str) {
        let probe = |what: &str, f: &mut dyn FnMut()| {
            let start = Instant::now();
            f();
            let took = start.elapsed();
            assert!(
                took < PROBE_BOUND,
                "{what} took {took:?} during {during} (bound {PROBE_BOUND:?})"
            );
        };
        let mut dom0 = self.dom0();
        probe("a dom0 WRITE and READ", &mut || {
            dom0.write("/local/domain/0/probe", "p").unwrap();
            assert_eq!(dom0.read("/local/domain/0/probe").unwrap(), b"p");
        });
        let mut bystander = self.guest(BYSTANDER);
        probe("the other guest's WRITE and READ", &mut || {
            bystander.write("data/probe", "p").unwrap();
            assert_eq!(bystander.read("data/probe").unwrap(), b"p");
        });
    }

    /// The resident set stays below `ceiling` bytes.
    fn assert_rss_below(&self, ceiling: u64, during: &str) {
        let rss = self.rss();
        eprintln!("daemon resident set during {during}: {} MiB", rss / MIB);
        assert!(
            rss < ceiling,
            "daemon resident set {} MiB during {during}, ceiling {} MiB",
            rss / MIB,
            ceiling / MIB
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves the daemon when this binary is re-executed by [`Daemon::start`];
/// passes at once otherwise.
#[test]
fn serve_daemon_process() {
    let Some(dir) = std::env::var_os(SERVE_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut config = xenstored::Config::new(dir.join("socket"));
    for domid in [ATTACKER, BYSTANDER] {
        config = config.domain_socket(domid, dir.join(format!("guest-{domid}")));
    }
    xenstored::run(config).expect("daemon runs");
}

/// A request frame, ready to send.
fn frame(t: MsgType, tx_id: u32, payload: Vec<u8>) -> Vec<u8> {
    Message::new(t, 0, tx_id, payload).encode()
}

/// Writes `bytes` to `stream` until done or until the daemon stops taking
/// them for a second (its back-pressure); returns how much was taken.
fn push(stream: &mut UnixStream, bytes: &[u8]) -> usize {
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut sent = 0;
    while sent < bytes.len() {
        match stream.write(&bytes[sent..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => sent += n,
        }
    }
    sent
}

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

/// [`push`], which decides the back-pressure assertions, stops when the
/// peer stops reading instead of hanging.
#[test]
fn push_stops_when_the_peer_stops_reading() {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let taken = push(&mut a, &vec![0u8; 64 * 1024 * 1024]);
    assert!(taken > 0 && taken < 64 * 1024 * 1024, "{taken}");
    let mut buf = [0u8; 16];
    b.read_exact(&mut buf).unwrap();
}
