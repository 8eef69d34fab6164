//! The client against a xenstore daemon: every operation, watches,
//! transactions under contention, and a guest domain.
//!
//! By default the daemon is ours (crate `xenstored`), started in this
//! process for each test, over real Unix sockets. `XENSTORE_TEST_DAEMON`
//! points the suite at an external daemon instead — the Xen project's C
//! xenstored in a real dom0 (`tests/xen`, scenario `xs-suites-real`, over
//! its socket and over `/dev/xen/xenbus`), or ours in another process
//! (`suite_against_a_separate_daemon_process`, below, on every `cargo test`);
//! the variables are described in `testbed::daemon_under_test`.
//! Every test keeps to its own node prefix under `/local/domain/0`, in both
//! modes, and removes it when done.
//!
//! Tests that cannot run against every daemon say so by name, so a run
//! leaves them out explicitly (`--skip`) rather than having them skip:
//! - `guest_…` need a guest domain's endpoint (`XENSTORE_TEST_GUESTS`);
//! - `no_hypervisor_…` introduce domains that do not exist, which only a
//!   daemon without a hypervisor (ours) accepts;
//! - `own_connection_…` act on the whole connection (RESET_WATCHES drops
//!   its watches and transactions): over `/dev/xen/xenbus` that is the
//!   kernel's one connection, shared by every user of the device and by the
//!   kernel's own watches (blkback's, in dom0), so they run over sockets.

use std::path::Path;
use std::thread;
use std::time::Duration;

use testbed::daemon_under_test::{self, unique_prefix, DaemonUnderTest, Kind, DOM0_HOME};
use xenstore::{Client, Errno, Perms, WatchEvent};

/// The guest domain of the in-process daemon.
const GUEST: u32 = 5;
const EVENT_WAIT: Option<Duration> = Some(Duration::from_secs(5));
const NO_EVENT_WAIT: Option<Duration> = Some(Duration::from_millis(100));

/// A daemon under test and this test's own corner of its store.
struct Bed {
    daemon: DaemonUnderTest,
    /// Absolute, under dom0's home; created empty, owned by dom0 (`n0`).
    prefix: String,
}

impl Bed {
    fn start(name: &str) -> Self {
        let daemon = DaemonUnderTest::start(&[GUEST], xenstored::Quotas::default());
        let bed = Bed {
            daemon,
            prefix: unique_prefix(name),
        };
        let mut c = bed.dom0();
        c.mkdir(&bed.prefix).unwrap();
        c.set_perms(&bed.prefix, &"n0".parse().unwrap()).unwrap();
        bed
    }

    /// `rel` (`/a/b`) below this test's prefix.
    fn path(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// The same node as [`Bed::path`], relative to dom0's home.
    fn relative(&self, rel: &str) -> String {
        let own = &self.prefix[DOM0_HOME.len() + 1..];
        format!("{own}{rel}")
    }

    fn endpoint(&self) -> &Path {
        self.daemon.endpoint()
    }

    /// Whether dom0 talks through a xenbus device (`/dev/xen/xenbus`), whose
    /// kernel driver answers some requests itself, rather than a socket.
    fn over_xenbus_device(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(self.endpoint()).is_ok_and(|m| m.file_type().is_char_device())
    }

    fn dom0(&self) -> Client {
        Client::connect_path(self.endpoint()).unwrap()
    }

    /// The guest domain this bed offers.
    fn guest_domid(&self) -> u32 {
        self.daemon.first_guest()
    }

    /// A connection of the guest domain, with its home present and owned by
    /// it, as a toolstack leaves it (on a real host the toolstack did it).
    fn guest(&self) -> Client {
        let domid = self.guest_domid();
        let mut dom0 = self.dom0();
        let home = format!("/local/domain/{domid}");
        if !dom0.exists(&home).unwrap() {
            dom0.mkdir(&home).unwrap();
            dom0.set_perms(&home, &Perms::owner_only(domid)).unwrap();
        }
        Client::connect_path(&self.daemon.guest_endpoint(domid)).unwrap()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Best effort: a failed test must still report its own failure.
        if let Ok(mut c) = Client::connect_path(self.endpoint()) {
            let _ = c.rm(&self.prefix);
        }
    }
}

fn event(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

#[test]
fn read_write_mkdir_rm_directory() {
    let bed = Bed::start("read-write");
    let mut c = bed.dom0();
    let abc = bed.path("/a/b/c");
    c.write(&abc, "value").unwrap();
    assert_eq!(c.read(&abc).unwrap(), b"value");
    assert_eq!(
        c.read(&bed.path("/a/b")).unwrap(),
        b"",
        "parents are created empty"
    );
    assert_eq!(c.read_string(&abc).unwrap(), "value");
    assert_eq!(c.directory(&bed.path("/a")).unwrap(), ["b"]);

    let binary = [0u8, 1, 2, 255, 0];
    c.write(&bed.path("/bin"), binary).unwrap();
    assert_eq!(
        c.read(&bed.path("/bin")).unwrap(),
        binary,
        "binary values, NULs included"
    );
    c.write(&bed.path("/ctl"), [0u8, 1, 2]).unwrap();
    assert_eq!(
        c.read_string(&bed.path("/ctl")).unwrap(),
        "\0\u{1}\u{2}",
        "NUL and control bytes are UTF-8"
    );
    c.write(&bed.path("/latin"), [0xe9u8]).unwrap();
    assert!(matches!(
        c.read_string(&bed.path("/latin")).unwrap_err().kind(),
        xenstore::ErrorKind::NotUtf8
    ));

    c.mkdir(&bed.path("/a/b")).unwrap();
    assert_eq!(
        c.read(&abc).unwrap(),
        b"value",
        "mkdir of an existing node keeps it"
    );
    c.mkdir(&bed.path("/d")).unwrap();
    assert!(c.exists(&bed.path("/d")).unwrap());

    c.rm(&bed.path("/a")).unwrap();
    assert!(!c.exists(&abc).unwrap());
    assert_eq!(c.read_opt(&bed.path("/a")).unwrap(), None);
    c.rm(&bed.path("/a")).unwrap(); // missing node, existing parent: fine
    let err = c.rm(&bed.path("/a/b")).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::ENOENT), "missing parent");
    let err = c.read(&bed.path("/nope")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("xenstore READ {}: ENOENT", bed.path("/nope"))
    );
    assert_eq!(c.rm("/").unwrap_err().errno(), Some(Errno::EINVAL));
}

#[test]
fn relative_paths_resolve_in_dom0_home() {
    let bed = Bed::start("relative");
    let mut c = bed.dom0();
    c.write(&bed.relative("/backend/vbd/5/51712/state"), "1")
        .unwrap();
    assert_eq!(
        c.read(&bed.path("/backend/vbd/5/51712/state")).unwrap(),
        b"1"
    );
    assert_eq!(c.get_domain_path(7).unwrap(), "/local/domain/7");
}

#[test]
fn large_directories_are_listed_through_directory_part() {
    let bed = Bed::start("large-dir");
    let mut c = bed.dom0();
    let names: Vec<String> = (0..400)
        .map(|i| format!("child-with-a-long-name-{i:04}"))
        .collect();
    let big = bed.path("/big");
    c.transaction(|tx| {
        for name in &names {
            tx.write(&format!("{big}/{name}"), "")?;
        }
        Ok::<_, xenstore::Error>(())
    })
    .unwrap();
    let mut listed = c.directory(&big).unwrap();
    listed.sort();
    assert_eq!(
        listed,
        names,
        "{} bytes of names need several parts",
        names.len() * 28
    );
}

#[test]
fn guest_permissions_round_trip_and_bind_a_guest() {
    let bed = Bed::start("guest-perms");
    let domid = bed.guest_domid();
    let mut dom0 = bed.dom0();
    let mut guest = bed.guest();

    let node = bed.path("/backend-node");
    dom0.write(&node, "secret").unwrap();
    assert_eq!(dom0.get_perms(&node).unwrap(), "n0".parse().unwrap());
    assert_eq!(guest.read(&node).unwrap_err().errno(), Some(Errno::EACCES));
    assert_eq!(
        guest.write(&node, "x").unwrap_err().errno(),
        Some(Errno::EACCES)
    );

    let readable: Perms = format!("n0 r{domid}").parse().unwrap();
    dom0.set_perms(&node, &readable).unwrap();
    assert_eq!(dom0.get_perms(&node).unwrap(), readable);
    assert_eq!(guest.read(&node).unwrap(), b"secret");
    assert_eq!(
        guest.write(&node, "x").unwrap_err().errno(),
        Some(Errno::EACCES)
    );

    // Relative paths of a guest resolve in its own home; what it creates
    // there (in `data`, which a toolstack leaves writable) it owns.
    let own = bed.relative("");
    let own = format!("data/{}", own.rsplit('/').next().unwrap());
    guest.write(&format!("{own}/feature"), "1").unwrap();
    let absolute = format!("/local/domain/{domid}/{own}/feature");
    assert_eq!(dom0.read(&absolute).unwrap(), b"1");
    assert_eq!(dom0.get_perms(&absolute).unwrap().owner(), domid);
    guest.rm(&own).unwrap();
}

/// The daemon's limit on path length: 2048 bytes (`XENSTORE_REL_PATH_MAX`)
/// counted below a domain's home, or of the whole path elsewhere.
const PATH_LEN_MAX: usize = 2048;

/// `base/aaa…/aaa…` of exactly `len` bytes, `base` included. Names of at
/// most 101 bytes: a long child name would make its parent's record
/// exceed a guest's entry-size quota first.
fn path_of_len(base: &str, len: usize) -> String {
    let mut path = base.to_string();
    while path.len() < len {
        let room = len - path.len() - 1;
        path.push('/');
        path.push_str(&"a".repeat(if room > 101 { 100 } else { room }));
    }
    path
}

#[test]
fn path_length_limit_below_a_home_and_elsewhere() {
    let bed = Bed::start("path-len");
    let mut c = bed.dom0();
    let below_home = |len: usize| format!("{DOM0_HOME}/{}", path_of_len(&bed.relative(""), len));
    c.write(&below_home(PATH_LEN_MAX), "").unwrap();
    assert_eq!(
        c.write(&below_home(PATH_LEN_MAX + 1), "")
            .unwrap_err()
            .errno(),
        Some(Errno::EINVAL)
    );
    // Outside any home the whole path counts: a top-level node of its own.
    let top = format!("/diskseq-test-{}-path-len", std::process::id());
    c.write(&path_of_len(&top, PATH_LEN_MAX), "").unwrap();
    let err = c
        .write(&path_of_len(&top, PATH_LEN_MAX + 1), "")
        .unwrap_err();
    c.rm(&top).unwrap();
    assert_eq!(err.errno(), Some(Errno::EINVAL));
}

/// A guest hears a change only where it may read: the node, its parent,
/// or — for a permission change — the node's old permissions.
#[test]
fn guest_watch_events_only_for_what_the_guest_may_read() {
    let bed = Bed::start("guest-watch");
    let domid = bed.guest_domid();
    let mut dom0 = bed.dom0();
    let mut guest = bed.guest();
    let dom0_only: Perms = "n0".parse().unwrap();
    let readable: Perms = format!("n0 r{domid}").parse().unwrap();
    dom0.set_perms(&bed.prefix, &readable).unwrap();
    dom0.mkdir(&bed.path("/open")).unwrap(); // inherits: readable
    dom0.mkdir(&bed.path("/secret")).unwrap();
    dom0.set_perms(&bed.path("/secret"), &dom0_only).unwrap();

    guest.watch(&bed.prefix, "w").unwrap();
    assert_eq!(
        guest.next_event(EVENT_WAIT).unwrap(),
        Some(event(&bed.prefix, "w"))
    );
    let (open_a, secret_x) = (bed.path("/open/a"), bed.path("/secret/x"));
    dom0.write(&secret_x, "1").unwrap(); // node and parent unreadable
    dom0.write(&open_a, "1").unwrap(); // readable
    dom0.set_perms(&open_a, &dom0_only).unwrap(); // was readable
    dom0.write(&open_a, "2").unwrap(); // unreadable, parent readable
    dom0.write(&secret_x, "2").unwrap(); // node and parent unreadable
    let end = bed.path("/end");
    dom0.write(&end, "").unwrap();
    let mut heard = Vec::new();
    while heard.last() != Some(&end) {
        match guest.next_event(EVENT_WAIT).unwrap() {
            Some(e) => heard.push(e.path),
            None => break,
        }
    }
    guest.unwatch(&bed.prefix, "w").unwrap();
    assert_eq!(heard, [open_a.as_str(), &open_a, &open_a, &end]);
}

/// A guest's quotas at the daemons' defaults, where a real guest's count
/// does not depend on what its kernel and toolstack hold (entries and
/// watches do, so they stay in crates/xenstored/tests/isolation.rs).
#[test]
fn guest_quotas_entry_size_open_transactions_path_length() {
    let bed = Bed::start("guest-quotas");
    let mut guest = bed.guest();
    let own = format!("data/{}", bed.relative("").rsplit('/').next().unwrap());

    // Entry size: the C daemon's record — a 24-byte header, 8 bytes per
    // permission (one, inherited), the value — must stay below 2048 bytes.
    let v = format!("{own}/v");
    guest.write(&v, vec![b'x'; 2048 - 24 - 8 - 1]).unwrap();
    assert_eq!(
        guest
            .write(&v, vec![b'x'; 2048 - 24 - 8])
            .unwrap_err()
            .errno(),
        Some(Errno::ENOSPC)
    );

    // Open transactions per connection: the quota is 10, and the C daemon
    // refuses only once a connection has more than that open, so 11.
    let start = xenstore::MsgType::TransactionStart as u32;
    let mut open = Vec::new();
    let refused = loop {
        let reply = guest.send_raw(start, 0, b"\0").unwrap();
        if reply.msg_type == xenstore::MsgType::Error as u32 || open.len() > 20 {
            break reply;
        }
        let id = String::from_utf8_lossy(&reply.payload);
        open.push(id.trim_end_matches('\0').parse::<u32>().unwrap());
    };
    assert_eq!(
        xenstore::wire::parse_error_payload(&refused.payload),
        Some(Errno::ENOSPC),
        "after {} transactions",
        open.len()
    );
    assert_eq!(open.len(), 11, "open transactions a guest may have");
    for id in open {
        guest
            .send_raw(xenstore::MsgType::TransactionEnd as u32, id, b"F\0")
            .unwrap();
    }

    // Path length, counted below the guest's home.
    guest.write(&path_of_len(&own, PATH_LEN_MAX), "").unwrap();
    assert_eq!(
        guest
            .write(&path_of_len(&own, PATH_LEN_MAX + 1), "")
            .unwrap_err()
            .errno(),
        Some(Errno::EINVAL)
    );
    guest.rm(&own).unwrap();
}

#[test]
fn watches_fire_at_once_then_on_changes_below() {
    let bed = Bed::start("watch");
    let mut watcher = bed.dom0();
    let mut writer = bed.dom0();
    let w = bed.path("/w");
    watcher.watch(&w, "tok").unwrap();
    assert_eq!(
        watcher.next_event(EVENT_WAIT).unwrap(),
        Some(event(&w, "tok"))
    );

    writer.write(&bed.path("/w/x"), "1").unwrap();
    writer.write(&bed.path("/wx"), "1").unwrap(); // not below /w
    writer.write(&bed.path("/w/y"), "1").unwrap();
    assert_eq!(
        watcher.next_event(EVENT_WAIT).unwrap(),
        Some(event(&bed.path("/w/x"), "tok"))
    );
    assert_eq!(
        watcher.next_event(EVENT_WAIT).unwrap(),
        Some(event(&bed.path("/w/y"), "tok"))
    );
    assert_eq!(watcher.next_event(NO_EVENT_WAIT).unwrap(), None);

    if bed.over_xenbus_device() {
        // Linux's xenbus device answers WATCH and UNWATCH itself (the
        // daemon sees the kernel's own token): the same (path, token) again
        // is a second registration, with its own initial event, and UNWATCH
        // removes one registration, or none, and says OK either way.
        watcher.watch(&w, "tok").unwrap();
        assert_eq!(
            watcher.next_event(EVENT_WAIT).unwrap(),
            Some(event(&w, "tok"))
        );
        watcher.unwatch(&w, "tok").unwrap();
        watcher.unwatch(&w, "tok").unwrap();
        watcher.unwatch(&w, "tok").unwrap();
    } else {
        assert_eq!(
            watcher.watch(&w, "tok").unwrap_err().errno(),
            Some(Errno::EEXIST)
        );
        watcher.unwatch(&w, "tok").unwrap();
        assert_eq!(
            watcher.unwatch(&w, "tok").unwrap_err().errno(),
            Some(Errno::ENOENT)
        );
    }
    writer.write(&bed.path("/w/z"), "1").unwrap();
    assert_eq!(watcher.next_event(NO_EVENT_WAIT).unwrap(), None);
}

#[test]
fn events_arriving_during_requests_are_kept_in_order() {
    let bed = Bed::start("busy");
    let mut watcher = bed.dom0();
    let busy = bed.path("/busy");
    watcher.watch(&busy, "t").unwrap();
    let endpoint = bed.endpoint().to_owned();
    let writer = {
        let busy = busy.clone();
        thread::spawn(move || {
            let mut writer = Client::connect_path(&endpoint).unwrap();
            for i in 0..200 {
                writer.write(&format!("{busy}/{i}"), "x").unwrap();
            }
        })
    };
    // Keep the watcher busy with requests while events pour in.
    for _ in 0..200 {
        watcher.read_opt(&format!("{busy}/0")).unwrap();
    }
    writer.join().unwrap();
    let mut paths = Vec::new();
    while paths.len() < 201 {
        let e = watcher.next_event(EVENT_WAIT).unwrap().expect("event");
        paths.push(e.path);
    }
    let expected: Vec<String> = std::iter::once(busy.clone())
        .chain((0..200).map(|i| format!("{busy}/{i}")))
        .collect();
    assert_eq!(paths, expected);
}

#[test]
fn relative_watches_report_relative_paths() {
    let bed = Bed::start("relative-watch");
    let mut c = bed.dom0();
    let device = bed.relative("/device");
    c.watch(&device, "rel").unwrap();
    assert_eq!(
        c.next_event(EVENT_WAIT).unwrap(),
        Some(event(&device, "rel"))
    );
    c.write(&bed.path("/device/vbd"), "1").unwrap();
    assert_eq!(
        c.next_event(EVENT_WAIT).unwrap(),
        Some(event(&bed.relative("/device/vbd"), "rel"))
    );
}

/// A domain id no domain has during the suite (below Xen's reserved ids).
const ABSENT_DOMAIN: u32 = 32000;

#[test]
fn special_watches_fire_at_once() {
    let bed = Bed::start("special-watch");
    let mut c = bed.dom0();
    c.watch("@introduceDomain", "in").unwrap();
    c.watch("@releaseDomain", "out").unwrap();
    assert_eq!(
        c.next_event(EVENT_WAIT).unwrap(),
        Some(event("@introduceDomain", "in"))
    );
    assert_eq!(
        c.next_event(EVENT_WAIT).unwrap(),
        Some(event("@releaseDomain", "out"))
    );
    assert!(!c.is_domain_introduced(ABSENT_DOMAIN).unwrap());
    // Event channel port 0 is invalid, whatever the domain.
    assert_eq!(
        c.introduce(ABSENT_DOMAIN, 0, 0).unwrap_err().errno(),
        Some(Errno::EINVAL)
    );
}

#[test]
fn own_connection_reset_watches_drops_all() {
    let bed = Bed::start("reset-watches");
    let mut c = bed.dom0();
    let r = bed.path("/r");
    c.watch(&r, "r").unwrap();
    assert_eq!(c.next_event(EVENT_WAIT).unwrap(), Some(event(&r, "r")));
    c.reset_watches().unwrap();
    bed.dom0().write(&bed.path("/r/x"), "1").unwrap();
    assert_eq!(c.next_event(NO_EVENT_WAIT).unwrap(), None);
    // The watches are gone, not only silenced: registering again works.
    c.watch(&r, "r").unwrap();
    assert_eq!(c.next_event(EVENT_WAIT).unwrap(), Some(event(&r, "r")));
}

#[test]
fn no_hypervisor_introduce_and_release_fire_special_watches() {
    let bed = Bed::start("introduce");
    assert_eq!(
        bed.daemon.kind(),
        Kind::Diskseq,
        "introduces a domain that does not exist: only a daemon without a hypervisor accepts that"
    );
    let mut c = bed.dom0();
    c.watch("@introduceDomain", "in").unwrap();
    c.watch("@releaseDomain", "out").unwrap();
    c.next_event(EVENT_WAIT).unwrap().expect("initial event");
    c.next_event(EVENT_WAIT).unwrap().expect("initial event");
    assert!(!c.is_domain_introduced(9).unwrap());
    c.introduce(9, 0, 1).unwrap();
    assert!(c.is_domain_introduced(9).unwrap());
    assert_eq!(
        c.next_event(EVENT_WAIT).unwrap(),
        Some(event("@introduceDomain", "in"))
    );
    c.release(9).unwrap();
    assert_eq!(
        c.next_event(EVENT_WAIT).unwrap(),
        Some(event("@releaseDomain", "out"))
    );
    c.reset_watches().unwrap();
    c.introduce(10, 0, 1).unwrap();
    assert_eq!(c.next_event(NO_EVENT_WAIT).unwrap(), None);
    c.release(10).unwrap();
}

#[test]
fn transactions_are_isolated_until_commit() {
    let bed = Bed::start("tx-isolation");
    let mut a = bed.dom0();
    let mut b = bed.dom0();
    let (x, y) = (bed.path("/t/x"), bed.path("/t/y"));
    a.write(&x, "old").unwrap();
    let mut tx = a.start_transaction().unwrap();
    tx.write(&x, "new").unwrap();
    tx.write(&y, "added").unwrap();
    assert_eq!(
        tx.read(&x).unwrap(),
        b"new",
        "a transaction sees its own writes"
    );
    assert_eq!(b.read(&x).unwrap(), b"old", "others do not, before commit");
    assert_eq!(b.read_opt(&y).unwrap(), None);
    tx.commit().unwrap();
    assert_eq!(b.read(&x).unwrap(), b"new");

    let mut tx = a.start_transaction().unwrap();
    tx.write(&x, "discarded").unwrap();
    tx.abort().unwrap();
    assert_eq!(b.read(&x).unwrap(), b"new");

    {
        let mut tx = a.start_transaction().unwrap();
        tx.write(&x, "dropped").unwrap();
    }
    assert_eq!(
        b.read(&x).unwrap(),
        b"new",
        "dropping a transaction aborts it"
    );

    let mut payload = x.clone().into_bytes();
    payload.push(0);
    let err = a
        .send_raw(xenstore::MsgType::Read as u32, 4242, &payload)
        .unwrap();
    assert_eq!(
        xenstore::wire::parse_error_payload(&err.payload),
        Some(Errno::ENOENT),
        "unknown tx id"
    );
}

#[test]
fn conflicting_commit_gets_eagain_and_the_closure_reruns() {
    let bed = Bed::start("tx-conflict");
    let mut a = bed.dom0();
    let mut b = bed.dom0();
    let node = bed.path("/c");
    a.write(&node, "0").unwrap();
    let mut runs = 0;
    let seen = a
        .transaction(|tx| {
            runs += 1;
            let value = tx.read_string(&node)?;
            if runs == 1 {
                b.write(&node, "changed").unwrap(); // someone else, meanwhile
            }
            tx.write(&format!("{node}/child"), "x")?;
            Ok::<_, xenstore::Error>(value)
        })
        .unwrap();
    assert_eq!(runs, 2);
    assert_eq!(seen, "changed");
}

#[test]
fn concurrent_increments_lose_nothing() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 25;
    let bed = Bed::start("increments");
    let counter = bed.path("/counter");
    bed.dom0().write(&counter, "0").unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let endpoint = bed.endpoint().to_owned();
            let counter = counter.clone();
            thread::spawn(move || {
                let mut c = Client::connect_path(&endpoint).unwrap();
                for _ in 0..PER_THREAD {
                    c.transaction(|tx| {
                        let n: usize = tx.read_string(&counter)?.parse().unwrap();
                        tx.write(&counter, (n + 1).to_string())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let total: usize = bed.dom0().read_string(&counter).unwrap().parse().unwrap();
    assert_eq!(total, THREADS * PER_THREAD);
}

#[test]
fn pipelined_batches_in_a_transaction() {
    let bed = Bed::start("batches");
    let mut c = bed.dom0();
    let paths: Vec<String> = (0..150).map(|i| bed.path(&format!("/many/{i}"))).collect();
    let values: Vec<Vec<u8>> = (0..150).map(|i| format!("v{i}").into_bytes()).collect();
    let items: Vec<(&str, &[u8])> = paths
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(Vec::as_slice))
        .collect();
    c.transaction(|tx| tx.write_many(&items)).unwrap();

    let missing = bed.path("/many/missing");
    let mut query: Vec<&str> = paths.iter().map(String::as_str).collect();
    query.push(&missing);
    let read = c.transaction(|tx| tx.read_many(&query)).unwrap();
    assert_eq!(read.len(), 151);
    for (got, want) in read.iter().zip(&values) {
        assert_eq!(got.as_deref(), Some(want.as_slice()));
    }
    assert_eq!(read[150], None);

    let bad = bed.path("/many/bad//path");
    let with_bad = [paths[0].as_str(), &bad];
    let err = c.transaction(|tx| tx.read_many(&with_bad)).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EINVAL));
}

#[test]
fn store_trait_runs_inside_and_outside_transactions() {
    // Code generic over a client and a transaction takes a `Session` of
    // either scope (the node operations are written once, on `Session`).
    fn publish(
        store: &mut xenstore::Session<impl xenstore::Scope>,
        base: &str,
    ) -> xenstore::client::Result<Vec<String>> {
        store.write(&format!("{base}/physical-device"), "7:0")?;
        store.write(&format!("{base}/diskseq"), "2a")?;
        store.directory(base)
    }
    let bed = Bed::start("store-trait");
    let mut c = bed.dom0();
    assert_eq!(
        publish(&mut c, &bed.path("/plain")).unwrap(),
        ["physical-device", "diskseq"]
    );
    let in_tx = bed.path("/in-tx");
    let listed = c.transaction(|tx| publish(tx, &in_tx)).unwrap();
    assert_eq!(listed, ["physical-device", "diskseq"]);
    assert_eq!(c.read(&format!("{in_tx}/diskseq")).unwrap(), b"2a");
}

#[test]
fn connect_follows_xenstored_path() {
    let bed = Bed::start("xenstored-path");
    // Only this test reads the variable; the others connect explicitly.
    std::env::set_var("XENSTORED_PATH", bed.endpoint());
    let mut c = Client::connect().unwrap();
    std::env::remove_var("XENSTORED_PATH");
    c.write(&bed.path("/via-env"), "1").unwrap();
    assert_eq!(c.endpoint(), bed.endpoint());

    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("XENSTORED_PATH", dir.path().join("absent"));
    let err = Client::connect().unwrap_err();
    std::env::remove_var("XENSTORED_PATH");
    assert!(err.to_string().contains("absent"), "{err}");
}

#[test]
fn pipelined_read_then_commit_reports_a_conflict_and_the_atomic_read_retries() {
    let bed = Bed::start("pipelined-conflict");
    let mut a = bed.dom0();
    let mut b = bed.dom0();
    let (x, y, missing) = (bed.path("/p/x"), bed.path("/p/y"), bed.path("/p/missing"));
    a.write(&x, "1").unwrap();
    a.write(&y, "2").unwrap();
    assert_eq!(
        a.read_many_atomically(&[&x, &y, &missing]).unwrap(),
        vec![Some(b"1".to_vec()), Some(b"2".to_vec()), None]
    );

    // Another client changes a node the transaction has seen: the
    // pipelined commit must say so instead of passing a torn view.
    let mut tx = a.start_transaction().unwrap();
    assert_eq!(tx.read(&x).unwrap(), b"1");
    b.write(&x, "changed").unwrap();
    let err = tx.read_many_and_commit(&[&y]).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EAGAIN), "{err}");
    // The connection is still in step: the next request gets its own reply.
    assert_eq!(a.read(&x).unwrap(), b"changed");

    let err = a.read_many_atomically(&[&x, "bad//path"]).unwrap_err();
    assert!(err.to_string().contains("bad//path"), "{err}");
}

#[test]
fn pipelined_reads_see_the_state_before_the_writes_behind_them() {
    let bed = Bed::start("pipelined-order");
    let mut a = bed.dom0();
    let mut b = bed.dom0();
    let (flag, new) = (bed.path("/q/flag"), bed.path("/q/new"));
    a.write(&flag, "before").unwrap();

    let mut tx = a.start_transaction().unwrap();
    let values = tx
        .read_many_then_write(&[&flag, &new], &[(&flag, b"after"), (&new, b"n")])
        .unwrap();
    assert_eq!(values, vec![Some(b"before".to_vec()), None]);
    assert_eq!(b.read(&flag).unwrap(), b"before", "not committed yet");
    tx.abort().unwrap();
    assert_eq!(
        b.read(&flag).unwrap(),
        b"before",
        "abort discards the writes"
    );
    assert_eq!(b.read_opt(&new).unwrap(), None);

    let mut tx = a.start_transaction().unwrap();
    tx.read_many_then_write(&[&flag], &[(&flag, b"after")])
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(b.read(&flag).unwrap(), b"after");
}

/// The claim `Engine::likely_next_tx_id` rests on, checked against the C
/// daemon in `tests/xen` (`xs-suites-real`): transactions are numbered per
/// connection, from 1, one more each time. (Over `/dev/xen/xenbus` the
/// connection is the kernel's, shared, hence `own_connection_`.)
#[test]
fn own_connection_transaction_ids_count_up_from_one() {
    let bed = Bed::start("tx-ids");
    let mut a = bed.dom0();
    let x = bed.path("/ids/x");
    let tx = a.start_transaction().unwrap();
    assert_eq!(tx.id(), 1, "a fresh connection's first transaction");
    tx.abort().unwrap();
    let mut tx = a.start_transaction().unwrap();
    assert_eq!(tx.id(), 2);
    tx.write(&x, "1").unwrap();
    tx.commit().unwrap();
    // Another connection counts on its own.
    let mut b = bed.dom0();
    let (tx, values) = b.start_transaction_and_read(&[&x]).unwrap();
    assert_eq!((tx.id(), values), (1, vec![Some(b"1".to_vec())]));
    tx.abort().unwrap();
    let (tx, _) = a.start_transaction_and_read(&[&x]).unwrap();
    assert_eq!(tx.id(), 3);
}

/// The reads pipelined behind START are inside the transaction: a change
/// another client makes to one of them fails the commit, and `run_reading`
/// re-runs the body with the values read again.
#[test]
fn reads_behind_start_are_inside_the_transaction() {
    let bed = Bed::start("tx-read-behind");
    let mut a = bed.dom0();
    let mut b = bed.dom0();
    let (x, y, missing) = (
        bed.path("/rb/x"),
        bed.path("/rb/y"),
        bed.path("/rb/missing"),
    );
    a.write(&x, "1").unwrap();
    let paths = [x.as_str(), missing.as_str()];
    let (tx, values) = a.start_transaction_and_read(&paths).unwrap();
    assert_eq!(values, vec![Some(b"1".to_vec()), None]);
    b.write(&x, "changed").unwrap();
    let mut seen = Vec::new();
    let ran: Result<(), xenstore::Error> = tx.run_reading(&paths, values, |tx, values| {
        seen.push(values[0].clone());
        tx.write(&y, values[0].as_deref().unwrap_or_default())
    });
    ran.unwrap();
    assert_eq!(
        seen,
        vec![Some(b"1".to_vec()), Some(b"changed".to_vec())],
        "the first run's commit failed (EAGAIN) and the re-run read again"
    );
    assert_eq!(b.read(&y).unwrap(), b"changed");
    // The same through the one-call form, and the atomic read.
    let read_y = a.transaction_reading(&[&y], |_, values| Ok::<_, xenstore::Error>(values));
    assert_eq!(read_y.unwrap(), vec![Some(b"changed".to_vec())]);
    assert_eq!(
        a.read_many_atomically(&[&x, &y]).unwrap(),
        vec![Some(b"changed".to_vec()), Some(b"changed".to_vec())]
    );
}

#[test]
fn watches_and_reads_in_one_batch() {
    let bed = Bed::start("watch-batch");
    let mut a = bed.dom0();
    let mut b = bed.dom0();
    let (opened, state) = (bed.path("/w/opened"), bed.path("/w/state"));
    a.write(&opened, "0").unwrap();
    let values = a
        .watch_and_read_many(&[(&opened, "t1"), (&state, "t2")], &[&opened, &state])
        .unwrap();
    assert_eq!(values, vec![Some(b"0".to_vec()), None]);
    // Both watches are registered: each fires once at once, then on change.
    let mut initial = vec![
        a.next_event(EVENT_WAIT).unwrap().unwrap(),
        a.next_event(EVENT_WAIT).unwrap().unwrap(),
    ];
    initial.sort_by(|x, y| x.token.cmp(&y.token));
    assert_eq!(initial, vec![event(&opened, "t1"), event(&state, "t2")]);
    b.write(&opened, "1").unwrap();
    assert_eq!(
        a.next_event(EVENT_WAIT).unwrap(),
        Some(event(&opened, "t1"))
    );
    let err = a
        .watch_and_read_many(&[(&bed.path("/w/x"), "bad\0token")], &[])
        .unwrap_err();
    assert!(err.to_string().contains("/w/x"), "{err}");
}

/// Serves our daemon when this binary is re-executed for
/// [`suite_against_a_separate_daemon_process`]; passes at once otherwise.
#[test]
fn separate_daemon_process() {
    daemon_under_test::serve_if_asked(&[GUEST]);
}

/// The external mode on every `cargo test`: this whole suite, guest tests
/// included, against our daemon in another process.
#[test]
fn suite_against_a_separate_daemon_process() {
    if std::env::var_os(daemon_under_test::DAEMON_ENV).is_some() {
        return; // already the external run: no recursion
    }
    daemon_under_test::run_suite_against_separate_daemon(
        "client_daemon",
        "client_daemon::separate_daemon_process",
        "suite_against_a_separate_daemon_process",
        Some("relay_agent_process"),
        &[GUEST],
        &[],
    );
}
