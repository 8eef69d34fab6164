//! A guest that floods requests, never reads, and then vanishes must be
//! closed — not leave the daemon spinning on a hung-up socket. The test
//! runs in a process of its own (the test binary re-executed for it alone),
//! so the only daemon thread whose CPU time it measures is its daemon's.

use std::io::Write;
use std::time::Duration;

use crate::common::{arg, Bed, GUEST};
use xenstore::wire::{Message, MsgType};
use xenstored::Quotas;

/// CPU time (user + system, in clock ticks) used so far by this process's
/// threads named `xenstored`.
fn daemon_cpu_ticks() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() != "xenstored" {
            continue;
        }
        let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3; utime and
        // stime are fields 14 and 15.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += ticks(14) + ticks(15);
    }
    total
}

/// Set in the re-executed test binary that runs the measurement.
const ALONE_ENV: &str = "XSD_VANISHING_PEER_ALONE";
const THIS_TEST: &str = "vanishing_peer::vanished_flooding_guest_is_closed_without_spinning";

#[test]
fn vanished_flooding_guest_is_closed_without_spinning() {
    if std::env::var_os(ALONE_ENV).is_none() {
        let run = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", THIS_TEST, "--nocapture", "--test-threads=1"])
            .env(ALONE_ENV, "1")
            .output()
            .expect("re-execute the test binary for this test alone");
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success() && stdout.contains("test result: ok. 1 passed"),
            "the measurement in a process of its own failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        return;
    }
    let bed = Bed::with_quotas(Quotas {
        outstanding: 4,
        ..Quotas::default()
    });
    let _home = bed.guest(GUEST);
    let mut guest = std::os::unix::net::UnixStream::connect(bed.guest_socket(GUEST)).unwrap();
    guest
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let request = Message::new(MsgType::Read, 1, 0, arg("/local/domain/5")).encode();
    // Write until the socket is full: the daemon is paused on this guest.
    let mut sent = 0;
    while sent < 4 * 1024 * 1024 && guest.write_all(&request).is_ok() {
        sent += request.len();
    }
    drop(guest);
    std::thread::sleep(Duration::from_millis(300));

    let before = daemon_cpu_ticks();
    std::thread::sleep(Duration::from_millis(1000));
    let used = daemon_cpu_ticks() - before;
    // Clock ticks are 10 ms: a spinning loop would use ~100 in a second.
    assert!(used < 30, "daemon used {used} ticks of CPU while idle");

    let trace = std::fs::read_to_string(bed.dir.path().join("trace")).unwrap();
    assert!(
        trace
            .lines()
            .any(|l| l.starts_with(char::is_numeric) && l.contains("CLOSE") && l.contains(" d5")),
        "the guest's connection was closed"
    );
    let mut dom0 = bed.dom0();
    dom0.write("/still", "serving").unwrap();
}
