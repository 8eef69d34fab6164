//! `diskseq xs` end to end: the real binary against the real daemon.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A daemon on a socket in a private directory, removed afterwards.
struct Bed {
    dir: PathBuf,
    daemon: Option<xenstored::DaemonHandle>,
}

impl Bed {
    fn start() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "diskseq-xs-cli-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let daemon = xenstored::Daemon::start(xenstored::Config::new(dir.join("socket"))).unwrap();
        Bed {
            dir,
            daemon: Some(daemon),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("socket")
    }

    /// `diskseq xs ARGS` with the daemon found through XENSTORED_PATH.
    fn xs(&self, args: &[&str]) -> Output {
        xs_command(&self.socket(), args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.xs(args);
        assert!(
            out.status.success(),
            "diskseq xs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        drop(self.daemon.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn xs_command(socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diskseq"));
    cmd.arg("xs").args(args).env("XENSTORED_PATH", socket);
    cmd
}

#[test]
fn write_then_read_with_escapes() {
    let bed = Bed::start();
    bed.ok(&["write", "/vm/name", "guest one", "/vm/tab", "a\\tb\\x00c"]);
    assert_eq!(
        bed.ok(&["read", "/vm/name", "/vm/tab"]),
        "guest one\na\\tb\\000c\n"
    );
    assert_eq!(bed.ok(&["read", "--raw", "/vm/tab"]).as_bytes(), b"a\tb\0c");
    bed.ok(&["write", "--raw", "/vm/literal", "x\\ty"]);
    assert_eq!(bed.ok(&["read", "/vm/literal"]), "x\\\\ty\n");
}

#[test]
fn ls_prints_the_tree_with_full_paths_and_values() {
    let bed = Bed::start();
    bed.ok(&["write", "/ls/b", "2", "/ls/a/deep", "x\\ny", "/ls/c", ""]);
    let out = bed.ok(&["ls", "/ls"]);
    let mut lines: Vec<&str> = out.lines().collect();
    // Depth first: a node's subtree follows it directly.
    let a = lines
        .iter()
        .position(|l| *l == "/ls/a = \"\"")
        .expect("/ls/a listed");
    assert_eq!(lines[a + 1], "/ls/a/deep = \"x\\ny\"");
    lines.sort();
    assert_eq!(
        lines,
        [
            "/ls/a = \"\"",
            "/ls/a/deep = \"x\\ny\"",
            "/ls/b = \"2\"",
            "/ls/c = \"\""
        ]
    );

    let all = bed.ok(&["ls"]);
    assert!(all.lines().any(|l| l == "/tool/xenstored = \"\""), "{all}");
    let with_perms = bed.ok(&["ls", "-p", "/ls/a"]);
    assert_eq!(with_perms, "/ls/a/deep = \"x\\ny\"  (n0)\n");
}

#[test]
fn rm_and_errors() {
    let bed = Bed::start();
    bed.ok(&["write", "/gone/x", "1", "/kept", "1"]);
    bed.ok(&["rm", "/gone"]);
    let out = bed.xs(&["read", "/gone/x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/gone/x") && err.contains("ENOENT"), "{err}");
    assert_eq!(bed.ok(&["read", "/kept"]), "1\n");

    let out = bed.xs(&["write", "/bad//path", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/bad//path"));

    let out = bed.xs(&["rm", "/no/such/parent"]);
    assert_eq!(out.status.code(), Some(1));

    let out = xs_command(&bed.dir.join("absent"), &["read", "/kept"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "no daemon at XENSTORED_PATH");

    let out = xs_command(
        &bed.dir.join("absent"),
        &["--socket", bed.socket().to_str().unwrap(), "read", "/kept"],
    )
    .output()
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n",
        "--socket overrides the environment"
    );

    // A path that is not a socket is opened as a device, as libxenstore
    // treats /dev/xen/xenbus: /dev/null opens, and the failure is the
    // device's end of file on the first request, not a refused connect().
    let out = xs_command(&bed.socket(), &["--socket", "/dev/null", "read", "/kept"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("closed the connection") && !err.contains("connect /dev/null"),
        "{err}"
    );

    let out = bed.xs(&["write", "/odd"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
}

#[test]
fn watch_prints_event_paths_and_stops_after_count() {
    let bed = Bed::start();
    let mut child = xs_command(&bed.socket(), &["watch", "-n", "3", "/watched"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The first event fires at registration: once it is printed the watch
    // is in place and later changes cannot be missed.
    assert_eq!(lines.next().unwrap().unwrap(), "/watched");
    bed.ok(&["write", "/watched/a", "1"]);
    bed.ok(&["write", "/elsewhere", "1"]);
    bed.ok(&["rm", "/watched/a"]);
    assert_eq!(lines.next().unwrap().unwrap(), "/watched/a");
    assert_eq!(lines.next().unwrap().unwrap(), "/watched/a");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "watch did not stop after 3 events"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success());
}
