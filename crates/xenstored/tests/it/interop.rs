//! Debian's xenstore-utils (libxenstore 4.17) against this daemon through
//! `XENSTORED_PATH`. The expected outputs are what the C xenstored gives for
//! the same commands (its semantics as documented in
//! docs/misc/xenstore.txt and the notes): if these pass, the real tools
//! cannot tell the daemons apart for these operations.
//!
//! The tools are installed by `scripts/install-deps`; without them the tests
//! skip, unless DISKSEQ_REQUIRE_ALL=1, where they fail.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{require_all, Bed, GUEST};
use xenstore::{Errno, Perms};

/// Whether the tools are present; panics under DISKSEQ_REQUIRE_ALL=1 when
/// they are not.
fn tools_available() -> bool {
    match Command::new("xenstore-read").arg("-h").output() {
        Ok(_) => true,
        Err(e) => {
            assert!(
                !require_all(),
                "xenstore-utils missing ({e}) and DISKSEQ_REQUIRE_ALL=1: run scripts/install-deps"
            );
            eprintln!("skipping: xenstore-utils not installed ({e}); run scripts/install-deps");
            false
        }
    }
}

/// Runs one of the tools against `socket`.
fn tool(socket: &Path, name: &str, args: &[&str]) -> Output {
    Command::new(name)
        .args(args)
        .env("XENSTORED_PATH", socket)
        .env_remove("XENSTORED_RUNDIR")
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

fn ok_stdout(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {:?} stderr={}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn failed_stderr(out: Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what} should fail with status 1"
    );
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

#[test]
fn write_then_read_with_the_real_tools_and_the_client() {
    if !tools_available() {
        return;
    }
    let bed = Bed::start();
    let sock = bed.socket();
    let state = "/local/domain/0/backend/vbd/5/51712/state";
    ok_stdout(
        tool(
            &sock,
            "xenstore-write",
            &[state, "1", "/local/domain/0/name", "hello world"],
        ),
        "xenstore-write",
    );
    let out = ok_stdout(
        tool(&sock, "xenstore-read", &[state, "/local/domain/0/name"]),
        "xenstore-read",
    );
    assert_eq!(out, "1\nhello world\n");
    let mut dom0 = bed.dom0();
    assert_eq!(dom0.read_string(state).unwrap(), "1");
    // Parents were created with empty values.
    assert_eq!(dom0.read("/local/domain/0/backend/vbd").unwrap(), b"");
}

#[test]
fn relative_paths_are_below_dom0s_home() {
    if !tools_available() {
        return;
    }
    let bed = Bed::start();
    let sock = bed.socket();
    ok_stdout(tool(&sock, "xenstore-write", &["backend/x", "v"]), "write");
    assert_eq!(
        bed.dom0().read_string("/local/domain/0/backend/x").unwrap(),
        "v"
    );
    assert_eq!(
        ok_stdout(tool(&sock, "xenstore-read", &["backend/x"]), "read"),
        "v\n"
    );
}

#[test]
fn missing_nodes_fail_like_the_c_daemon() {
    if !tools_available() {
        return;
    }
    let bed = Bed::start();
    let sock = bed.socket();
    let err = failed_stderr(tool(&sock, "xenstore-read", &["/nope"]), "read");
    assert!(err.contains("couldn't read path /nope"), "{err}");
    let out = tool(&sock, "xenstore-exists", &["/nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(tool(&sock, "xenstore-exists", &["/tool/xenstored"])
        .status
        .success());
    // Missing node with an existing parent: fine. Missing parent: ENOENT.
    ok_stdout(tool(&sock, "xenstore-rm", &["/tool/nope"]), "rm missing");
    let err = failed_stderr(tool(&sock, "xenstore-rm", &["/nope/nope"]), "rm");
    assert!(err.contains("could not remove path /nope/nope"), "{err}");
}

#[test]
fn binary_values_survive_both_directions() {
    if !tools_available() {
        return;
    }
    let bed = Bed::start();
    let sock = bed.socket();
    let mut dom0 = bed.dom0();
    dom0.write("/bin", b"x\x01y\\z\x00w").unwrap();
    // Escaped by default, raw with -R; no trailing NUL from the daemon.
    assert_eq!(
        ok_stdout(tool(&sock, "xenstore-read", &["/bin"]), "read"),
        "x\\001y\\\\z\\000w\n"
    );
    let raw = tool(&sock, "xenstore-read", &["-R", "/bin"]);
    assert!(raw.status.success());
    assert_eq!(raw.stdout, b"x\x01y\\z\x00w");
    // xenstore-write expands escapes before sending.
    ok_stdout(tool(&sock, "xenstore-write", &["/esc", "a\\x02b"]), "write");
    assert_eq!(dom0.read("/esc").unwrap(), b"a\x02b");
}

#[test]
fn listing_follows_creation_order() {
    if !tools_available() {
        return;
    }
    let bed = Bed::start();
    let sock = bed.socket();
    let mut dom0 = bed.dom0();
    dom0.write("/t/zeta", "1").unwrap();
    dom0.write("/t/alpha/inner", "two words").unwrap();
    dom0.mkdir("/t/mid").unwrap();
    assert_eq!(
        ok_stdout(tool(&sock, "xenstore-ls", &["-f", "/t"]), "ls -f"),
        "/t/zeta = \"1\"\n/t/alpha = \"\"\n/t/alpha/inner = \"two words\"\n/t/mid = \"\"\n"
    );
    assert_eq!(
        ok_stdout(tool(&sock, "xenstore-ls", &["/t"]), "ls"),
        "zeta = \"1\"\nalpha = \"\"\n inner = \"two words\"\nmid = \"\"\n"
    );
    assert_eq!(
        ok_stdout(tool(&sock, "xenstore-list", &["/t"]), "list"),
        "zeta\nalpha\nmid\n"
    );
    // The initial tree of the C daemon.
    assert_eq!(
        ok_stdout(tool(&sock, "xenstore-ls", &["-f", "/tool"]), "ls /tool"),
        "/tool/xenstored = \"\"\n"
    );
}

#[test]
fn rm_removes_subtrees_and_empty_parents_with_t() {
    if !tools_available() {
        return;
    }
    let bed = Bed::start();
    let sock = bed.socket();
    let mut dom0 = bed.dom0();
    dom0.write("/r/a/x", "1").unwrap();
    dom0.write("/r/b/y/z", "2").unwrap();
    ok_stdout(tool(&sock, "xenstore-rm", &["/r/a"]), "rm");
    assert_eq!(dom0.read_opt("/r/a/x").unwrap(), None);
    assert_eq!(dom0.directory("/r").unwrap(), vec!["b"]);
    ok_stdout(tool(&sock, "xenstore-rm", &["-t", "/r/b/y/z"]), "rm -t");
    assert_eq!(dom0.read_opt("/r").unwrap(), None);
}

#[test]
fn chmod_sets_permission_lists_that_guests_obey() {
    if !tools_available() {
        return;
    }
    let bed = Bed::start();
    let sock = bed.socket();
    let guest_sock = bed.guest_socket(GUEST);
    let mut dom0 = bed.dom0();
    dom0.write("/p/child", "secret").unwrap();
    let err = failed_stderr(
        tool(&guest_sock, "xenstore-read", &["/p/child"]),
        "guest read",
    );
    assert!(err.contains("couldn't read path /p/child"), "{err}");

    ok_stdout(
        tool(&sock, "xenstore-chmod", &["-r", "/p", "n0", "r5"]),
        "chmod -r",
    );
    assert_eq!(
        dom0.get_perms("/p/child").unwrap(),
        "n0 r5".parse::<Perms>().unwrap()
    );
    let listing = ok_stdout(tool(&sock, "xenstore-ls", &["-p", "/p"]), "ls -p");
    assert!(listing.contains("(n0,r5)"), "{listing}");
    assert_eq!(
        ok_stdout(
            tool(&guest_sock, "xenstore-read", &["/p/child"]),
            "guest read"
        ),
        "secret\n"
    );
    let err = failed_stderr(
        tool(&guest_sock, "xenstore-write", &["/p/child", "mine"]),
        "guest write",
    );
    assert!(err.contains("could not write path /p/child"), "{err}");
}

#[test]
fn guests_write_below_their_home_and_own_it() {
    if !tools_available() {
        return;
    }
    let bed = Bed::start();
    let _guest = bed.guest(GUEST);
    let guest_sock = bed.guest_socket(GUEST);
    ok_stdout(
        tool(&guest_sock, "xenstore-write", &["data/x", "1"]),
        "guest write",
    );
    let mut dom0 = bed.dom0();
    assert_eq!(dom0.read_string("/local/domain/5/data/x").unwrap(), "1");
    assert_eq!(
        dom0.get_perms("/local/domain/5/data/x").unwrap(),
        Perms::owner_only(GUEST)
    );
    let err = failed_stderr(tool(&guest_sock, "xenstore-ls", &["/"]), "guest ls /");
    assert!(err.contains("Permission denied"), "{err}");
    let err = failed_stderr(
        tool(&guest_sock, "xenstore-write", &["/local/domain/0/x", "1"]),
        "guest write dom0",
    );
    assert!(err.contains("could not write path"), "{err}");
    assert_eq!(
        dom0.read_opt("/local/domain/0/x").unwrap(),
        None,
        "EACCES left nothing behind"
    );
    assert_eq!(
        dom0.read("/local/domain/0/x").unwrap_err().errno(),
        Some(Errno::ENOENT)
    );
}

/// Runs `xenstore-watch` and returns its stdout lines as they come.
fn spawn_watch(socket: &Path, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new("xenstore-watch")
        .args(args)
        .env("XENSTORED_PATH", socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn xenstore-watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn next_line(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("xenstore-watch printed a line in time")
}

#[test]
fn watch_prints_the_first_event_then_changes_in_order() {
    if !tools_available() {
        return;
    }
    let bed = Bed::start();
    let (mut child, rx) = spawn_watch(&bed.socket(), &["-n", "4", "/w"]);
    assert_eq!(next_line(&rx), "/w", "the immediate first event");
    let mut dom0 = bed.dom0();
    dom0.write("/w/x", "1").unwrap();
    dom0.write("/unrelated", "1").unwrap();
    dom0.write("/w", "2").unwrap();
    dom0.rm("/w/x").unwrap();
    assert_eq!(next_line(&rx), "/w/x");
    assert_eq!(next_line(&rx), "/w");
    assert_eq!(next_line(&rx), "/w/x");
    assert!(
        child.wait().unwrap().success(),
        "-n 4 exits after four events"
    );
}

#[test]
fn relative_watch_reports_relative_paths() {
    if !tools_available() {
        return;
    }
    let bed = Bed::start();
    let (mut child, rx) = spawn_watch(&bed.socket(), &["-n", "2", "backend"]);
    assert_eq!(next_line(&rx), "backend");
    bed.dom0().write("/local/domain/0/backend/vbd", "").unwrap();
    assert_eq!(next_line(&rx), "backend/vbd");
    assert!(child.wait().unwrap().success());
}

#[test]
fn transaction_writes_fire_watches_at_commit() {
    if !tools_available() {
        return;
    }
    let bed = Bed::start();
    let (mut child, rx) = spawn_watch(&bed.socket(), &["-n", "3", "/tx"]);
    assert_eq!(next_line(&rx), "/tx");
    // xenstore-write with several pairs writes them in one transaction.
    ok_stdout(
        tool(
            &bed.socket(),
            "xenstore-write",
            &["/tx/a", "1", "/tx/b", "2"],
        ),
        "write",
    );
    assert_eq!(next_line(&rx), "/tx/a");
    assert_eq!(next_line(&rx), "/tx/b");
    assert!(child.wait().unwrap().success());
}

#[test]
fn large_directories_are_listed_through_directory_part() {
    if !tools_available() {
        return;
    }
    let bed = Bed::start();
    let mut dom0 = bed.dom0();
    let names: Vec<String> = (0..300)
        .map(|i| format!("child-with-a-long-name-{i:03}"))
        .collect();
    for name in &names {
        dom0.write(&format!("/big/{name}"), "x").unwrap();
    }
    // More than 4096 bytes of names: DIRECTORY says E2BIG and libxenstore
    // pages through DIRECTORY_PART.
    let listed = ok_stdout(tool(&bed.socket(), "xenstore-list", &["/big"]), "list");
    assert_eq!(listed.lines().collect::<Vec<_>>(), names);
    let trace = std::fs::read_to_string(bed.dir.path().join("trace")).unwrap();
    assert!(
        trace.contains("DIRECTORY_PART"),
        "libxenstore used DIRECTORY_PART"
    );
}
