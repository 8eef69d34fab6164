//! `xenstored::run` (what `diskseq xenstored` calls) in a child process:
//! the socket appears once it serves, SIGTERM and SIGINT stop it cleanly and
//! remove the socket and pid file.
//!
//! The child is this test binary re-executed with `XSD_FOREGROUND_SOCKET`
//! set, running only `foreground_child`.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use xenstore::Client;
use xenstored::Config;

const CHILD_ENV: &str = "XSD_FOREGROUND_SOCKET";

/// Runs the daemon in the foreground when re-executed as the child.
#[test]
fn foreground_child() {
    let Some(socket) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let socket = std::path::PathBuf::from(socket);
    let mut config = Config::new(&socket).domain_socket(5, socket.with_extension("guest"));
    config.pid_file = Some(socket.with_extension("pid"));
    xenstored::run(config).expect("run returns Ok after a signal");
}

fn spawn(socket: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "foreground::foreground_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, socket)
        .spawn()
        .expect("re-exec test binary")
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stop_with(signal: Signal) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("xenstored.sock");
    let mut child = spawn(&socket);
    wait_for(&socket);
    // Existing means serving: the first connection succeeds at once.
    let mut c = Client::connect_socket(&socket).unwrap();
    c.write("/alive", "1").unwrap();
    assert_eq!(c.read_string("/alive").unwrap(), "1");
    let pid_file = socket.with_extension("pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid as u32, child.id());
    assert!(socket.with_extension("guest").exists());

    kill_process(Pid::from_raw(pid).unwrap(), signal).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on {signal:?}: {status:?}");
    assert!(!socket.exists(), "socket removed");
    assert!(
        !socket.with_extension("guest").exists(),
        "guest socket removed"
    );
    assert!(!pid_file.exists(), "pid file removed");
}

#[test]
fn sigterm_stops_cleanly() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    stop_with(Signal::TERM);
}

#[test]
fn sigint_stops_cleanly() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    stop_with(Signal::INT);
}

#[test]
fn a_live_socket_is_not_stolen() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("xenstored.sock");
    let first = xenstored::Daemon::start(Config::new(&socket)).unwrap();
    let err = match xenstored::Daemon::start(Config::new(&socket)) {
        Ok(_) => panic!("second daemon on the same socket"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("already listening"), "{err}");
    assert!(
        err.to_string().contains("xenstored.sock"),
        "names the path: {err}"
    );
    Client::connect_socket(first.socket())
        .unwrap()
        .read("/tool")
        .unwrap();
    first.stop();
    assert!(!socket.exists());
    // A stale socket file (nobody listening) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(stale);
    let second = xenstored::Daemon::start(Config::new(&socket)).unwrap();
    Client::connect_socket(second.socket())
        .unwrap()
        .read("/tool")
        .unwrap();
}
