//! What the client costs on top of the socket, and what pipelining saves.
//!
//! - `round_trip/*`: one READ-sized exchange (24-byte request, 32-byte
//!   reply) through a raw Unix socket to an echo-style thread (the floor),
//!   through `Client::read` to a minimal responder thread (client overhead
//!   alone), and through `Client::read` to the real daemon.
//! - `tx_read_32/*`: 32 reads in one transaction against the real daemon,
//!   one request at a time versus `Transaction::read_many` (pipelined).
//!
//! Run: `cargo bench -p xenstore --bench client`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread;
use xenstore::wire::{self, Header, Message, MsgType, HEADER_SIZE};
use xenstore::Client;

const VALUE: &[u8] = b"0123456789abcdef0123456789abcdef"; // 32-byte value
const PATH: &str = "/bench/node-0001-abcdefghijklm"; // request payload: 32 bytes with NUL

/// Answers every frame with a reply of the same type and ids carrying
/// `VALUE`, without looking at the payload: the cheapest possible daemon.
fn spawn_responder(socket: &Path) {
    let listener = UnixListener::bind(socket).unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            thread::spawn(move || {
                while let Ok(m) = Message::read_from(&mut stream) {
                    let reply = Message {
                        payload: VALUE.to_vec(),
                        ..m
                    };
                    if stream.write_all(&reply.encode()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn round_trip(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let responder = dir.path().join("responder");
    spawn_responder(&responder);
    let daemon =
        xenstored::Daemon::start(xenstored::Config::new(dir.path().join("xenstored"))).unwrap();

    let mut group = c.benchmark_group("round_trip");
    group.throughput(Throughput::Elements(1));

    // Floor: the same bytes through the same kind of socket, no client.
    let mut raw = UnixStream::connect(&responder).unwrap();
    let request = Message::new(MsgType::Read, 1, 0, wire::path_payload(PATH)).encode();
    let mut reply = vec![0u8; HEADER_SIZE + VALUE.len()];
    group.bench_function("raw_socket_floor", |b| {
        b.iter(|| {
            raw.write_all(&request).unwrap();
            raw.read_exact(&mut reply).unwrap();
            let header = Header::decode(reply[..HEADER_SIZE].try_into().unwrap());
            assert_eq!(header.len as usize, VALUE.len());
        })
    });

    let mut client = Client::connect_socket(&responder).unwrap();
    group.bench_function("client_read_minimal_responder", |b| {
        b.iter(|| assert_eq!(client.read(PATH).unwrap().len(), VALUE.len()))
    });

    let mut client = Client::connect_socket(daemon.socket()).unwrap();
    client.write(PATH, VALUE).unwrap();
    group.bench_function("client_read_xenstored", |b| {
        b.iter(|| assert_eq!(client.read(PATH).unwrap().len(), VALUE.len()))
    });
    group.finish();
}

fn transaction_reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let daemon =
        xenstored::Daemon::start(xenstored::Config::new(dir.path().join("xenstored"))).unwrap();
    let mut client = Client::connect_socket(daemon.socket()).unwrap();
    let paths: Vec<String> = (0..32).map(|i| format!("/bench/tx/{i:02}")).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    for path in &paths {
        client.write(path, VALUE).unwrap();
    }

    let mut group = c.benchmark_group("tx_read_32");
    group.throughput(Throughput::Elements(32));
    group.bench_function("sequential", |b| {
        b.iter(|| {
            client
                .transaction(|tx| {
                    refs.iter()
                        .map(|p| tx.read(p))
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap()
        })
    });
    group.bench_function("pipelined", |b| {
        b.iter(|| client.transaction(|tx| tx.read_many(&refs)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, round_trip, transaction_reads);
criterion_main!(benches);
