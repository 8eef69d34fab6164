//! Which xenstore daemon a differential suite talks to: ours, started in
//! this process (the default), or an external one named in the environment
//! — the Xen project's C xenstored inside a real dom0 (`tests/xen`,
//! scenario `xs-suites-real`), or ours run as a separate process.
//!
//! | variable | meaning |
//! |---|---|
//! | `XENSTORE_TEST_DAEMON` | dom0 endpoint of the external daemon: its Unix socket, or a xenbus device (`/dev/xen/xenbus`). Unset: our daemon in-process, one per test. |
//! | `XENSTORE_TEST_DAEMON_KIND` | which implementation that is: `diskseq` (ours) or `xen` (the C xenstored). Required with `XENSTORE_TEST_DAEMON`: it selects the documented differences a test accepts, nothing else. |
//! | `XENSTORE_TEST_GUESTS` | guest endpoints of the external daemon, `DOMID=PATH[,DOMID=PATH]`: connections there are those unprivileged domains. `DOMID=relay` reaches a real guest through the relay agent running in it (`guest_relay.rs`). Tests that need a guest fail without it (they never skip); select or skip them by name (`guest_`). |
//!
//! One external daemon is shared by every test of a run, and a real store is
//! never empty (`/local`, `/tool`, `/vm` …): tests keep to their own
//! [`unique_prefix`], in both modes, so one code path runs everywhere.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::guest_relay;
use xenstored::{Config, Daemon, DaemonHandle, Quotas};

pub const DAEMON_ENV: &str = "XENSTORE_TEST_DAEMON";
pub const KIND_ENV: &str = "XENSTORE_TEST_DAEMON_KIND";
pub const GUESTS_ENV: &str = "XENSTORE_TEST_GUESTS";

/// The implementation under test, for the differences that are documented
/// (docs/design/xenstored.md, "Differences from the C daemon").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Ours (crate `xenstored`).
    Diskseq,
    /// The Xen project's C xenstored.
    XenC,
}

impl Kind {
    /// Whether SET_PERMS accepts an owner domain that is not introduced.
    /// The C daemon asks the hypervisor and answers ENOENT; ours cannot
    /// know and accepts (deliberate: libxl sets a new domain's owner before
    /// introducing it).
    pub fn accepts_unintroduced_owner(self) -> bool {
        self == Kind::Diskseq
    }
}

/// A daemon to test: its dom0 endpoint, its guests' endpoints, and (when
/// in-process) the daemon itself, stopped on drop.
pub struct DaemonUnderTest {
    endpoint: PathBuf,
    kind: Kind,
    guests: Vec<(u32, PathBuf)>,
    external: bool,
    in_process: Option<(tempfile::TempDir, DaemonHandle)>,
    /// Relays started for `DOMID=relay` guests, kept for this daemon's life.
    relays: RefCell<Vec<tempfile::TempDir>>,
    /// This test's turn at the relay agents, taken with its first relay.
    relay_turn: RefCell<Option<guest_relay::RelayTurn>>,
}

/// The guest endpoint that means "through the relay agent in that guest".
pub const RELAY: &str = "relay";

impl DaemonUnderTest {
    /// The external daemon of the environment, else a fresh daemon of ours
    /// in this process with a socket for each of `guests`.
    ///
    /// Panics with the variable's name when the environment is malformed:
    /// a test run against the wrong daemon must not pass.
    pub fn start(guests: &[u32], quotas: Quotas) -> Self {
        match std::env::var_os(DAEMON_ENV) {
            Some(endpoint) => Self::external(PathBuf::from(endpoint)),
            None => Self::in_process(guests, quotas),
        }
    }

    fn external(endpoint: PathBuf) -> Self {
        let kind = match std::env::var(KIND_ENV).as_deref() {
            Ok("diskseq") => Kind::Diskseq,
            Ok("xen") => Kind::XenC,
            other => panic!(
                "{DAEMON_ENV}={} needs {KIND_ENV}=diskseq|xen (got {other:?})",
                endpoint.display()
            ),
        };
        let guests = match std::env::var(GUESTS_ENV) {
            Ok(list) => parse_guests(&list).unwrap_or_else(|e| panic!("{GUESTS_ENV}: {e}")),
            Err(_) => Vec::new(),
        };
        DaemonUnderTest {
            endpoint,
            kind,
            guests,
            external: true,
            in_process: None,
            relays: RefCell::default(),
            relay_turn: RefCell::default(),
        }
    }

    fn in_process(guests: &[u32], quotas: Quotas) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let guests: Vec<(u32, PathBuf)> = guests
            .iter()
            .map(|&domid| (domid, dir.path().join(format!("guest-{domid}"))))
            .collect();
        let mut config = Config::new(dir.path().join("socket"));
        for (domid, socket) in &guests {
            config = config.domain_socket(*domid, socket);
        }
        config.quotas = quotas;
        config.trace = Some(dir.path().join("trace"));
        let daemon = Daemon::start(config).expect("daemon starts");
        DaemonUnderTest {
            endpoint: dir.path().join("socket"),
            kind: Kind::Diskseq,
            guests,
            external: false,
            in_process: Some((dir, daemon)),
            relays: RefCell::default(),
            relay_turn: RefCell::default(),
        }
    }

    /// Where dom0 connects: a socket or a xenbus device.
    pub fn endpoint(&self) -> &Path {
        &self.endpoint
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn is_external(&self) -> bool {
        self.external
    }

    /// The first guest domain offered. Panics, naming the variable, when
    /// there is none.
    pub fn first_guest(&self) -> u32 {
        match self.guests.first() {
            Some((domid, _)) => *domid,
            None => panic!(
                "this test needs a guest domain: set {GUESTS_ENV}=DOMID=PATH, or leave out the guest_ tests"
            ),
        }
    }

    /// Where guest `domid` connects: its socket, or for a `relay` guest a
    /// relay socket started now. Panics, naming the variable, when the
    /// external daemon has no endpoint for it.
    pub fn guest_endpoint(&self, domid: u32) -> PathBuf {
        let Some((_, path)) = self.guests.iter().find(|(d, _)| *d == domid) else {
            panic!(
                "no endpoint for guest domain {domid}: set {GUESTS_ENV}={domid}=PATH \
                 (a guest's socket of our daemon, or `{RELAY}` for a real guest running \
                 the relay agent), or leave out the guest_ tests"
            )
        };
        if path.as_os_str() != RELAY {
            return path.clone();
        }
        self.relay_turn
            .borrow_mut()
            .get_or_insert_with(guest_relay::RelayTurn::take);
        let (dir, socket) = guest_relay::start_relay(&self.endpoint, domid);
        self.relays.borrow_mut().push(dir);
        socket
    }
}

impl Drop for DaemonUnderTest {
    fn drop(&mut self) {
        if let Some((_dir, daemon)) = self.in_process.take() {
            daemon.stop();
        }
    }
}

/// `DOMID=PATH[,DOMID=PATH]`.
fn parse_guests(list: &str) -> Result<Vec<(u32, PathBuf)>, String> {
    list.split(',')
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (domid, path) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected DOMID=PATH"))?;
            let domid = domid
                .parse()
                .map_err(|_| format!("{item:?}: domid {domid:?} is not a number"))?;
            Ok((domid, PathBuf::from(path)))
        })
        .collect()
}

/// Where dom0's relative paths resolve; unique prefixes live below it, so a
/// test can use the same node by an absolute and by a relative path.
pub const DOM0_HOME: &str = "/local/domain/0";

/// A node path no other test of any run uses: `DOM0_HOME/diskseq-test/
/// <pid>-<n>-<name>`. Under dom0's home, away from what a real host's
/// drivers watch (`backend`, `device`).
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{DOM0_HOME}/diskseq-test/{}-{n}-{name}", std::process::id())
}

/// Set in a re-executed test binary: serve our daemon in the foreground
/// with its sockets in this directory (see [`serve_if_asked`]).
const SERVE_ENV: &str = "XENSTORE_TEST_SERVE_IN";

/// The body of a suite's `separate_daemon_process` test: when this binary
/// was re-executed to be the daemon, runs `xenstored::run` (what `diskseq
/// xenstored` runs) until killed; otherwise returns at once.
pub fn serve_if_asked(guests: &[u32]) {
    let Some(dir) = std::env::var_os(SERVE_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut config = Config::new(dir.join("socket"));
    for domid in guests {
        config = config.domain_socket(*domid, dir.join(format!("guest-{domid}")));
    }
    xenstored::run(config).expect("daemon runs");
}

/// Runs one suite of this test binary — the tests in module `suite`
/// (names starting `suite::`), the binary holding a crate's whole
/// integration test suite — in external mode against our daemon in a
/// separate process (this binary re-executed, running only `serve_test`),
/// and checks that every test of the suite ran and passed. What runs is the
/// code path the real-Xen harness uses against the C daemon. `serve_test`,
/// `self_test` and `agent_test` are full test names (module path included:
/// they are run with `--exact`); `env` lists further variables.
pub fn run_suite_against_separate_daemon(
    suite: &str,
    serve_test: &str,
    self_test: &str,
    agent_test: Option<&str>,
    guests: &[u32],
    env: &[(&str, &str)],
) {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut daemon = Command::new(&exe)
        .args(["--exact", serve_test, "--nocapture", "--test-threads=1"])
        .env(SERVE_ENV, dir.path())
        .env_remove(DAEMON_ENV)
        .stdout(Stdio::null())
        .spawn()
        .expect("re-exec test binary as the daemon");
    let socket = dir.path().join("socket");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline || daemon.try_wait().ok().flatten().is_some() {
            let _ = daemon.kill();
            panic!("the daemon process never served {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    // Guests are reached as on a real host: through a relay agent (this
    // binary re-executed again) on the guest's own connection, in a home
    // a toolstack made.
    let mut agents = Vec::new();
    let mut guest_list = Vec::new();
    for domid in guests {
        let guest_socket = dir.path().join(format!("guest-{domid}"));
        let Some(agent_test) = agent_test else {
            guest_list.push(format!("{domid}={}", guest_socket.display()));
            continue;
        };
        let mut dom0 = xenstore::Client::connect_path(&socket).expect("dom0 connects");
        let home = format!("/local/domain/{domid}");
        dom0.mkdir(&home).unwrap();
        dom0.set_perms(&home, &xenstore::Perms::owner_only(*domid))
            .unwrap();
        agents.push(
            Command::new(&exe)
                .args(["--exact", agent_test, "--nocapture", "--test-threads=1"])
                .env(guest_relay::AGENT_ENV, &guest_socket)
                .env_remove(DAEMON_ENV)
                .stdout(Stdio::null())
                .spawn()
                .expect("re-exec test binary as a relay agent"),
        );
        guest_list.push(format!("{domid}={RELAY}"));
    }
    let mut skips = vec!["--skip", serve_test, "--skip", self_test];
    if let Some(agent_test) = agent_test {
        skips.extend(["--skip", agent_test]);
    }
    let filter = format!("{suite}::");
    let suite = |extra: &[&str]| {
        let mut cmd = Command::new(&exe);
        cmd.args(extra)
            .arg(&filter)
            .args(&skips)
            .env(DAEMON_ENV, &socket)
            .env(KIND_ENV, "diskseq")
            .env(GUESTS_ENV, guest_list.join(","));
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd.output().expect("run the suite")
    };
    let listed = suite(&["--list"]);
    let run = suite(&[]);
    for mut child in agents.into_iter().chain([daemon]) {
        let _ = child.kill();
        let _ = child.wait();
    }

    let listed = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.ends_with(": test"))
        .count();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("test result:"))
        .unwrap_or("no summary");
    assert!(
        run.status.success(),
        "the suite failed against a separate daemon: {summary}\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(listed > 0, "no test listed");
    assert!(
        summary.contains(&format!(" {listed} passed; 0 failed; 0 ignored")),
        "every one of the {listed} tests must run and pass: {summary}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_parse() {
        assert_eq!(
            parse_guests("5=/a,6=/b/c").unwrap(),
            [(5, PathBuf::from("/a")), (6, PathBuf::from("/b/c"))]
        );
        assert!(parse_guests("5").unwrap_err().contains("DOMID=PATH"));
        assert!(parse_guests("x=/a").unwrap_err().contains("not a number"));
    }
}
