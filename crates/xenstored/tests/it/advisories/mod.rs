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
//!
//! This module is the harness (the daemon in its own process, the probes);
//! the classes are in `resources`, `domains` and `trees`.

mod domains;
mod resources;
mod trees;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Raw;
use xenstore::wire::{Message, MsgType};
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
