//! The client against the real daemon (crate `xenstored`), over real Unix
//! sockets: every operation, watches, transactions under contention, and a
//! simulated guest domain.

use std::path::PathBuf;
use std::thread;
use std::time::Duration;
use xenstore::{Client, Errno, Perms, WatchEvent};

const GUEST: u32 = 5;
const EVENT_WAIT: Option<Duration> = Some(Duration::from_secs(5));

/// A daemon with a dom0 socket and one guest socket, in a private directory.
struct Bed {
    dir: tempfile::TempDir,
    daemon: Option<xenstored::DaemonHandle>,
}

impl Bed {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = xenstored::Config::new(dir.path().join("socket"))
            .domain_socket(GUEST, dir.path().join("guest"));
        let daemon = xenstored::Daemon::start(config).expect("daemon starts");
        Bed {
            dir,
            daemon: Some(daemon),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    fn dom0(&self) -> Client {
        Client::connect_socket(&self.socket()).unwrap()
    }

    /// A guest connection, with its home created and owned by it as a
    /// toolstack would.
    fn guest(&self) -> Client {
        let mut dom0 = self.dom0();
        let home = format!("/local/domain/{GUEST}");
        dom0.mkdir(&home).unwrap();
        dom0.set_perms(&home, &Perms::owner_only(GUEST)).unwrap();
        Client::connect_socket(&self.dir.path().join("guest")).unwrap()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop();
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
    let bed = Bed::start();
    let mut c = bed.dom0();
    c.write("/a/b/c", "value").unwrap();
    assert_eq!(c.read("/a/b/c").unwrap(), b"value");
    assert_eq!(c.read("/a/b").unwrap(), b"", "parents are created empty");
    assert_eq!(c.read_string("/a/b/c").unwrap(), "value");
    assert_eq!(c.directory("/a").unwrap(), ["b"]);

    let binary = [0u8, 1, 2, 255, 0];
    c.write("/bin", binary).unwrap();
    assert_eq!(
        c.read("/bin").unwrap(),
        binary,
        "binary values, NULs included"
    );
    c.write("/ctl", [0u8, 1, 2]).unwrap();
    assert_eq!(
        c.read_string("/ctl").unwrap(),
        "\0\u{1}\u{2}",
        "NUL and control bytes are UTF-8"
    );
    c.write("/latin", [0xe9u8]).unwrap();
    assert!(matches!(
        c.read_string("/latin").unwrap_err().kind(),
        xenstore::ErrorKind::NotUtf8
    ));

    c.mkdir("/a/b").unwrap();
    assert_eq!(
        c.read("/a/b/c").unwrap(),
        b"value",
        "mkdir of an existing node keeps it"
    );
    c.mkdir("/d").unwrap();
    assert!(c.exists("/d").unwrap());

    c.rm("/a").unwrap();
    assert!(!c.exists("/a/b/c").unwrap());
    assert_eq!(c.read_opt("/a").unwrap(), None);
    c.rm("/a").unwrap(); // missing node, existing parent: fine
    let err = c.rm("/a/b").unwrap_err();
    assert_eq!(err.errno(), Some(Errno::ENOENT), "missing parent");
    let err = c.read("/nope").unwrap_err();
    assert_eq!(err.to_string(), "xenstore READ /nope: ENOENT");
    assert_eq!(c.rm("/").unwrap_err().errno(), Some(Errno::EINVAL));
}

#[test]
fn relative_paths_resolve_in_dom0_home() {
    let bed = Bed::start();
    let mut c = bed.dom0();
    c.write("backend/vbd/5/51712/state", "1").unwrap();
    assert_eq!(
        c.read("/local/domain/0/backend/vbd/5/51712/state").unwrap(),
        b"1"
    );
    assert_eq!(c.get_domain_path(7).unwrap(), "/local/domain/7");
}

#[test]
fn large_directories_are_listed_through_directory_part() {
    let bed = Bed::start();
    let mut c = bed.dom0();
    let names: Vec<String> = (0..400)
        .map(|i| format!("child-with-a-long-name-{i:04}"))
        .collect();
    c.transaction(|tx| {
        for name in &names {
            tx.write(&format!("/big/{name}"), "")?;
        }
        Ok::<_, xenstore::Error>(())
    })
    .unwrap();
    let mut listed = c.directory("/big").unwrap();
    listed.sort();
    assert_eq!(
        listed,
        names,
        "{} bytes of names need several parts",
        names.len() * 28
    );
}

#[test]
fn permissions_round_trip_and_bind_a_guest() {
    let bed = Bed::start();
    let mut dom0 = bed.dom0();
    let mut guest = bed.guest();

    dom0.write("/backend-node", "secret").unwrap();
    assert_eq!(
        dom0.get_perms("/backend-node").unwrap(),
        "n0".parse().unwrap()
    );
    assert_eq!(
        guest.read("/backend-node").unwrap_err().errno(),
        Some(Errno::EACCES)
    );
    assert_eq!(
        guest.write("/backend-node", "x").unwrap_err().errno(),
        Some(Errno::EACCES)
    );

    let readable: Perms = format!("n0 r{GUEST}").parse().unwrap();
    dom0.set_perms("/backend-node", &readable).unwrap();
    assert_eq!(dom0.get_perms("/backend-node").unwrap(), readable);
    assert_eq!(guest.read("/backend-node").unwrap(), b"secret");
    assert_eq!(
        guest.write("/backend-node", "x").unwrap_err().errno(),
        Some(Errno::EACCES)
    );

    // Relative paths of a guest resolve in its own home, which it owns.
    guest.write("data/feature", "1").unwrap();
    assert_eq!(
        dom0.read(&format!("/local/domain/{GUEST}/data/feature"))
            .unwrap(),
        b"1"
    );
    assert_eq!(
        dom0.get_perms(&format!("/local/domain/{GUEST}/data/feature"))
            .unwrap()
            .owner(),
        GUEST
    );
}

#[test]
fn watches_fire_at_once_then_on_changes_below() {
    let bed = Bed::start();
    let mut watcher = bed.dom0();
    let mut writer = bed.dom0();
    watcher.watch("/w", "tok").unwrap();
    assert_eq!(
        watcher.next_event(EVENT_WAIT).unwrap(),
        Some(event("/w", "tok"))
    );

    writer.write("/w/x", "1").unwrap();
    writer.write("/wx", "1").unwrap(); // not below /w
    writer.write("/w/y", "1").unwrap();
    assert_eq!(
        watcher.next_event(EVENT_WAIT).unwrap(),
        Some(event("/w/x", "tok"))
    );
    assert_eq!(
        watcher.next_event(EVENT_WAIT).unwrap(),
        Some(event("/w/y", "tok"))
    );
    assert_eq!(
        watcher
            .next_event(Some(Duration::from_millis(100)))
            .unwrap(),
        None
    );

    assert_eq!(
        watcher.watch("/w", "tok").unwrap_err().errno(),
        Some(Errno::EEXIST)
    );
    watcher.unwatch("/w", "tok").unwrap();
    assert_eq!(
        watcher.unwatch("/w", "tok").unwrap_err().errno(),
        Some(Errno::ENOENT)
    );
    writer.write("/w/z", "1").unwrap();
    assert_eq!(
        watcher
            .next_event(Some(Duration::from_millis(100)))
            .unwrap(),
        None
    );
}

#[test]
fn events_arriving_during_requests_are_kept_in_order() {
    let bed = Bed::start();
    let mut watcher = bed.dom0();
    watcher.watch("/busy", "t").unwrap();
    let socket = bed.socket();
    let writer = thread::spawn(move || {
        let mut writer = Client::connect_socket(&socket).unwrap();
        for i in 0..200 {
            writer.write(&format!("/busy/{i}"), "x").unwrap();
        }
    });
    // Keep the watcher busy with requests while events pour in.
    for _ in 0..200 {
        watcher.read_opt("/busy/0").unwrap();
    }
    writer.join().unwrap();
    let mut paths = Vec::new();
    while paths.len() < 201 {
        let e = watcher.next_event(EVENT_WAIT).unwrap().expect("event");
        paths.push(e.path);
    }
    let expected: Vec<String> = std::iter::once("/busy".to_owned())
        .chain((0..200).map(|i| format!("/busy/{i}")))
        .collect();
    assert_eq!(paths, expected);
}

#[test]
fn relative_watches_report_relative_paths() {
    let bed = Bed::start();
    let mut c = bed.dom0();
    c.watch("device", "rel").unwrap();
    assert_eq!(
        c.next_event(EVENT_WAIT).unwrap(),
        Some(event("device", "rel"))
    );
    c.write("/local/domain/0/device/vbd", "1").unwrap();
    assert_eq!(
        c.next_event(EVENT_WAIT).unwrap(),
        Some(event("device/vbd", "rel"))
    );
}

#[test]
fn domain_introduction_fires_special_watches() {
    let bed = Bed::start();
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
    assert!(!c.is_domain_introduced(9).unwrap());
    // Event channel port 0 is invalid, as on a real host.
    assert_eq!(
        c.introduce(9, 0, 0).unwrap_err().errno(),
        Some(Errno::EINVAL)
    );
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
    assert_eq!(
        c.next_event(Some(Duration::from_millis(100))).unwrap(),
        None
    );
}

#[test]
fn transactions_are_isolated_until_commit() {
    let bed = Bed::start();
    let mut a = bed.dom0();
    let mut b = bed.dom0();
    a.write("/t/x", "old").unwrap();
    let mut tx = a.start_transaction().unwrap();
    tx.write("/t/x", "new").unwrap();
    tx.write("/t/y", "added").unwrap();
    assert_eq!(
        tx.read("/t/x").unwrap(),
        b"new",
        "a transaction sees its own writes"
    );
    assert_eq!(
        b.read("/t/x").unwrap(),
        b"old",
        "others do not, before commit"
    );
    assert_eq!(b.read_opt("/t/y").unwrap(), None);
    tx.commit().unwrap();
    assert_eq!(b.read("/t/x").unwrap(), b"new");

    let mut tx = a.start_transaction().unwrap();
    tx.write("/t/x", "discarded").unwrap();
    tx.abort().unwrap();
    assert_eq!(b.read("/t/x").unwrap(), b"new");

    {
        let mut tx = a.start_transaction().unwrap();
        tx.write("/t/x", "dropped").unwrap();
    }
    assert_eq!(
        b.read("/t/x").unwrap(),
        b"new",
        "dropping a transaction aborts it"
    );

    let err = a
        .send_raw(xenstore::MsgType::Read as u32, 4242, b"/t/x\0")
        .unwrap();
    assert_eq!(
        xenstore::wire::parse_error_payload(&err.payload),
        Some(Errno::ENOENT),
        "unknown tx id"
    );
}

#[test]
fn conflicting_commit_gets_eagain_and_the_closure_reruns() {
    let bed = Bed::start();
    let mut a = bed.dom0();
    let mut b = bed.dom0();
    a.write("/c", "0").unwrap();
    let mut runs = 0;
    let seen = a
        .transaction(|tx| {
            runs += 1;
            let value = tx.read_string("/c")?;
            if runs == 1 {
                b.write("/c", "changed").unwrap(); // someone else, meanwhile
            }
            tx.write("/c/child", "x")?;
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
    let bed = Bed::start();
    bed.dom0().write("/counter", "0").unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let socket = bed.socket();
            thread::spawn(move || {
                let mut c = Client::connect_socket(&socket).unwrap();
                for _ in 0..PER_THREAD {
                    c.transaction(|tx| {
                        let n: usize = tx.read_string("/counter")?.parse().unwrap();
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
    let total: usize = bed.dom0().read_string("/counter").unwrap().parse().unwrap();
    assert_eq!(total, THREADS * PER_THREAD);
}

#[test]
fn pipelined_batches_in_a_transaction() {
    let bed = Bed::start();
    let mut c = bed.dom0();
    let paths: Vec<String> = (0..150).map(|i| format!("/many/{i}")).collect();
    let values: Vec<Vec<u8>> = (0..150).map(|i| format!("v{i}").into_bytes()).collect();
    let items: Vec<(&str, &[u8])> = paths
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(Vec::as_slice))
        .collect();
    c.transaction(|tx| tx.write_many(&items)).unwrap();

    let mut query: Vec<&str> = paths.iter().map(String::as_str).collect();
    query.push("/many/missing");
    let read = c.transaction(|tx| tx.read_many(&query)).unwrap();
    assert_eq!(read.len(), 151);
    for (got, want) in read.iter().zip(&values) {
        assert_eq!(got.as_deref(), Some(want.as_slice()));
    }
    assert_eq!(read[150], None);

    let guest_paths = ["/many/0", "/many/bad//path"];
    let err = c.transaction(|tx| tx.read_many(&guest_paths)).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EINVAL));
}

#[test]
fn store_trait_runs_inside_and_outside_transactions() {
    fn publish(
        store: &mut impl xenstore::Store,
        base: &str,
    ) -> xenstore::client::Result<Vec<String>> {
        store.write(&format!("{base}/physical-device"), "7:0")?;
        store.write(&format!("{base}/diskseq"), "2a")?;
        store.directory(base)
    }
    let bed = Bed::start();
    let mut c = bed.dom0();
    assert_eq!(
        publish(&mut c, "/plain").unwrap(),
        ["physical-device", "diskseq"]
    );
    let listed = c.transaction(|tx| publish(tx, "/in-tx")).unwrap();
    assert_eq!(listed, ["physical-device", "diskseq"]);
    assert_eq!(c.read("/in-tx/diskseq").unwrap(), b"2a");
}

#[test]
fn connect_follows_xenstored_path() {
    let bed = Bed::start();
    // Only this test reads the variable; the others connect explicitly.
    std::env::set_var("XENSTORED_PATH", bed.socket());
    let mut c = Client::connect().unwrap();
    std::env::remove_var("XENSTORED_PATH");
    c.write("/via-env", "1").unwrap();
    assert_eq!(c.endpoint(), bed.socket());

    std::env::set_var("XENSTORED_PATH", bed.dir.path().join("absent"));
    let err = Client::connect().unwrap_err();
    std::env::remove_var("XENSTORED_PATH");
    assert!(err.to_string().contains("absent"), "{err}");
}

#[test]
fn pipelined_read_then_commit_reports_a_conflict_and_the_atomic_read_retries() {
    let bed = Bed::start();
    let mut a = bed.dom0();
    let mut b = bed.dom0();
    a.write("/p/x", "1").unwrap();
    a.write("/p/y", "2").unwrap();
    assert_eq!(
        a.read_many_atomically(&["/p/x", "/p/y", "/p/missing"])
            .unwrap(),
        vec![Some(b"1".to_vec()), Some(b"2".to_vec()), None]
    );

    // Another client changes a node the transaction has seen: the
    // pipelined commit must say so instead of passing a torn view.
    let mut tx = a.start_transaction().unwrap();
    assert_eq!(tx.read("/p/x").unwrap(), b"1");
    b.write("/p/x", "changed").unwrap();
    let err = tx.read_many_and_commit(&["/p/y"]).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EAGAIN), "{err}");
    // The connection is still in step: the next request gets its own reply.
    assert_eq!(a.read("/p/x").unwrap(), b"changed");

    let err = a.read_many_atomically(&["/p/x", "bad//path"]).unwrap_err();
    assert!(err.to_string().contains("bad//path"), "{err}");
}

#[test]
fn pipelined_reads_see_the_state_before_the_writes_behind_them() {
    let bed = Bed::start();
    let mut a = bed.dom0();
    let mut b = bed.dom0();
    a.write("/q/flag", "before").unwrap();

    let mut tx = a.start_transaction().unwrap();
    let values = tx
        .read_many_then_write(
            &["/q/flag", "/q/new"],
            &[("/q/flag", b"after"), ("/q/new", b"n")],
        )
        .unwrap();
    assert_eq!(values, vec![Some(b"before".to_vec()), None]);
    assert_eq!(b.read("/q/flag").unwrap(), b"before", "not committed yet");
    tx.abort().unwrap();
    assert_eq!(
        b.read("/q/flag").unwrap(),
        b"before",
        "abort discards the writes"
    );
    assert_eq!(b.read_opt("/q/new").unwrap(), None);

    let mut tx = a.start_transaction().unwrap();
    tx.read_many_then_write(&["/q/flag"], &[("/q/flag", b"after")])
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(b.read("/q/flag").unwrap(), b"after");
}

#[test]
fn watches_and_reads_in_one_batch() {
    let bed = Bed::start();
    let mut a = bed.dom0();
    let mut b = bed.dom0();
    a.write("/w/opened", "0").unwrap();
    let values = a
        .watch_and_read_many(
            &[("/w/opened", "t1"), ("/w/state", "t2")],
            &["/w/opened", "/w/state"],
        )
        .unwrap();
    assert_eq!(values, vec![Some(b"0".to_vec()), None]);
    // Both watches are registered: each fires once at once, then on change.
    let mut initial = vec![
        a.next_event(EVENT_WAIT).unwrap().unwrap(),
        a.next_event(EVENT_WAIT).unwrap().unwrap(),
    ];
    initial.sort_by(|x, y| x.token.cmp(&y.token));
    assert_eq!(
        initial,
        vec![event("/w/opened", "t1"), event("/w/state", "t2")]
    );
    b.write("/w/opened", "1").unwrap();
    assert_eq!(
        a.next_event(EVENT_WAIT).unwrap(),
        Some(event("/w/opened", "t1"))
    );
    let err = a
        .watch_and_read_many(&[("/w/x", "bad\0token")], &[])
        .unwrap_err();
    assert!(err.to_string().contains("/w/x"), "{err}");
}
