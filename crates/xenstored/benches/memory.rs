//! Resident memory of the daemon holding 100,000 nodes of 32-byte values.
//!
//! `cargo bench -p xenstored --bench memory` starts the daemon in this
//! process, fills it over a socket (pipelined writes), and prints the
//! process's resident set before and after, from /proc/self/status. The
//! client side holds almost nothing, so the growth is the daemon's.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use xenstore::wire::{Header, Message, MsgType, HEADER_SIZE};
use xenstored::{Config, Daemon};

const NODES: usize = 100_000;
const VALUE_LEN: usize = 32;
const BATCH: usize = 500;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("xenstored");
    let daemon = Daemon::start(Config::new(&socket)).expect("daemon");
    let mut stream = UnixStream::connect(&socket).expect("connect");
    let before = status_kib("VmRSS:");

    let value = [b'v'; VALUE_LEN];
    let mut out = Vec::new();
    let mut written = 0;
    while written < NODES {
        out.clear();
        let batch = BATCH.min(NODES - written);
        for i in written..written + batch {
            // 100 domains x 1,000 nodes: a realistic spread of directories.
            let path = format!("/local/domain/{}/data/node-{:05}\0", i / 1000, i);
            let mut payload = path.into_bytes();
            payload.extend_from_slice(&value);
            out.extend(Message::new(MsgType::Write, i as u32, 0, payload).encode());
        }
        stream.write_all(&out).expect("send batch");
        for _ in 0..batch {
            let mut raw = [0u8; HEADER_SIZE];
            stream.read_exact(&mut raw).expect("reply header");
            let header = Header::decode(&raw);
            let mut payload = vec![0u8; header.len as usize];
            stream.read_exact(&mut payload).expect("reply payload");
            assert_eq!(payload, b"OK\0", "write failed");
        }
        written += batch;
    }
    let after = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    println!("| measurement | value |");
    println!("|---|---:|");
    println!("| nodes written | {NODES} × {VALUE_LEN}-byte values |");
    println!(
        "| process RSS before filling | {:.1} MiB |",
        before as f64 / 1024.0
    );
    println!(
        "| process RSS after filling | {:.1} MiB |",
        after as f64 / 1024.0
    );
    println!(
        "| growth (the daemon's store) | {:.1} MiB |",
        (after - before) as f64 / 1024.0
    );
    println!("| peak RSS (VmHWM) | {:.1} MiB |", peak as f64 / 1024.0);
    drop(stream);
    daemon.stop();
}
