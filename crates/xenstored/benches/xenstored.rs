//! Throughput and latency of the daemon, each figure beside a floor: a
//! minimal server exchanging frames of the same sizes over the same kind of
//! Unix socket, measured in the same run with the same client code. The
//! ratio daemon/floor is what the daemon costs beyond the kernel.
//!
//! `cargo bench -p xenstored --bench xenstored` prints a Markdown table.
//! `XSD_BENCH_QUICK=1` runs shorter rounds (for smoke checks).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use xenstore::wire::{Header, Message, MsgType, HEADER_SIZE};
use xenstored::{Config, Daemon};

const VALUE_LEN: usize = 32;
const READ_PATH: &str = "/local/domain/0/backend/vbd/5/51712/physical-device";
const WATCHERS: usize = 1000;

fn quick() -> bool {
    std::env::var_os("XSD_BENCH_QUICK").is_some()
}

/// A blocking client speaking frames, used identically against the daemon
/// and the floor servers.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    next_req: u32,
}

impl Conn {
    fn connect(path: &Path) -> Conn {
        Conn {
            stream: UnixStream::connect(path).expect("connect"),
            buf: Vec::new(),
            next_req: 1,
        }
    }

    fn send(&mut self, t: MsgType, tx_id: u32, payload: &[u8]) {
        self.next_req = self.next_req.wrapping_add(1);
        let header = Header {
            msg_type: t as u32,
            req_id: self.next_req,
            tx_id,
            len: payload.len() as u32,
        };
        self.buf.clear();
        self.buf.extend_from_slice(&header.encode());
        self.buf.extend_from_slice(payload);
        self.stream.write_all(&self.buf).expect("send");
    }

    fn frame(&mut self) -> Message {
        let mut raw = [0u8; HEADER_SIZE];
        self.stream.read_exact(&mut raw).expect("header");
        let header = Header::decode(&raw);
        let mut payload = vec![0u8; header.len as usize];
        self.stream.read_exact(&mut payload).expect("payload");
        Message {
            msg_type: header.msg_type,
            req_id: header.req_id,
            tx_id: header.tx_id,
            payload,
        }
    }

    fn call(&mut self, t: MsgType, tx_id: u32, payload: &[u8]) -> Message {
        self.send(t, tx_id, payload);
        let reply = self.frame();
        assert_ne!(reply.msg_type, MsgType::Error as u32, "{t}: {reply:?}");
        reply
    }
}

fn path_arg(path: &str) -> Vec<u8> {
    let mut v = path.as_bytes().to_vec();
    v.push(0);
    v
}

fn write_arg(path: &str, value: &[u8]) -> Vec<u8> {
    let mut v = path_arg(path);
    v.extend_from_slice(value);
    v
}

/// The floor: answers every request at once with a frame of the size the
/// daemon's reply has, one blocking thread per connection.
fn start_floor(path: PathBuf) {
    let listener = UnixListener::bind(&path).expect("floor bind");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut out = Vec::new();
                loop {
                    let mut raw = [0u8; HEADER_SIZE];
                    if stream.read_exact(&mut raw).is_err() {
                        return;
                    }
                    let header = Header::decode(&raw);
                    let mut payload = vec![0u8; header.len as usize];
                    if stream.read_exact(&mut payload).is_err() {
                        return;
                    }
                    let reply_len = match MsgType::from_u32(header.msg_type) {
                        Some(MsgType::Read) => VALUE_LEN,
                        Some(MsgType::TransactionStart) => 2,
                        _ => 3,
                    };
                    out.clear();
                    out.extend_from_slice(
                        &Header {
                            len: reply_len as u32,
                            ..header
                        }
                        .encode(),
                    );
                    out.resize(HEADER_SIZE + reply_len, b'x');
                    if stream.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// The fan-out floor: the first connection is the writer; every request
/// it sends makes the server write one event frame (of the daemon's event
/// size) to each other connection, then the acknowledgement.
fn start_fanout_floor(path: PathBuf, watchers: usize, event_len: usize) {
    let listener = UnixListener::bind(&path).expect("fanout bind");
    thread::spawn(move || {
        let mut writer = listener.accept().expect("writer").0;
        let mut others: Vec<UnixStream> = (0..watchers)
            .map(|_| listener.accept().expect("watcher").0)
            .collect();
        let mut event = Header {
            msg_type: MsgType::WatchEvent as u32,
            req_id: 0,
            tx_id: 0,
            len: event_len as u32,
        }
        .encode()
        .to_vec();
        event.resize(HEADER_SIZE + event_len, b'x');
        loop {
            let mut raw = [0u8; HEADER_SIZE];
            if writer.read_exact(&mut raw).is_err() {
                return;
            }
            let header = Header::decode(&raw);
            let mut payload = vec![0u8; header.len as usize];
            if writer.read_exact(&mut payload).is_err() {
                return;
            }
            for other in &mut others {
                let _ = other.write_all(&event);
            }
            let mut ack = Header { len: 3, ..header }.encode().to_vec();
            ack.extend_from_slice(b"OK\0");
            let _ = writer.write_all(&ack);
        }
    });
}

/// Round trips per second of `op` over `clients` concurrent connections,
/// for the daemon and the floor. The machine is shared, so rounds are short
/// and alternate daemon, floor, daemon, floor...: each pair sees about the
/// same load. Returns the best rate of each and the median of the pairs'
/// daemon/floor ratios (the figure that matters; robust to load spikes).
fn compare(
    daemon: &Path,
    floor: &Path,
    clients: usize,
    per_client: usize,
    op: fn(&mut Conn, usize),
) -> Measured {
    let pairs = if quick() { 3 } else { 21 };
    let per_round = (per_client / 4).max(50);
    let mut best = (0.0f64, 0.0f64);
    let mut ratios = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let d = round(daemon, clients, per_round, op);
        let f = round(floor, clients, per_round, op);
        best = (best.0.max(d), best.1.max(f));
        ratios.push(d / f);
    }
    ratios.sort_by(f64::total_cmp);
    Measured {
        daemon: best.0,
        floor: best.1,
        median_ratio: ratios[ratios.len() / 2],
    }
}

struct Measured {
    daemon: f64,
    floor: f64,
    median_ratio: f64,
}

fn round(socket: &Path, clients: usize, per_client: usize, op: fn(&mut Conn, usize)) -> f64 {
    let mut conns: Vec<Conn> = (0..clients).map(|_| Conn::connect(socket)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        op(c, i); // warm up
    }
    if let [c] = conns.as_mut_slice() {
        // One client: run it here, no thread hand-off in the measurement.
        let start = Instant::now();
        for _ in 0..per_client {
            op(c, 0);
        }
        return per_client as f64 / start.elapsed().as_secs_f64();
    }
    let start = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            thread::spawn(move || {
                for _ in 0..per_client {
                    op(&mut c, i);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    (clients * per_client) as f64 / start.elapsed().as_secs_f64()
}

fn read_op(c: &mut Conn, _: usize) {
    c.call(MsgType::Read, 0, &path_arg(READ_PATH));
}

fn write_op(c: &mut Conn, i: usize) {
    let path = format!("/local/domain/0/backend/vbd/5/{i}/state");
    c.call(MsgType::Write, 0, &write_arg(&path, &[b'4'; VALUE_LEN]));
}

fn transaction_op(c: &mut Conn, i: usize) {
    let reply = c.call(MsgType::TransactionStart, 0, b"\0");
    let id: u32 = std::str::from_utf8(&reply.payload[..reply.payload.len() - 1])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let path = format!("/local/domain/0/backend/vbd/5/{i}/physical-device");
    c.call(MsgType::Write, id, &write_arg(&path, &[b'7'; VALUE_LEN]));
    c.call(MsgType::TransactionEnd, id, b"T\0");
}

/// One sample: the time from a write until every watcher has read its
/// event.
fn fanout_once(writer: &mut Conn, watchers: &mut [Conn], i: usize) -> Duration {
    let start = Instant::now();
    writer.send(
        MsgType::Write,
        0,
        &write_arg("/fan", i.to_string().as_bytes()),
    );
    for w in watchers.iter_mut() {
        let event = w.frame();
        debug_assert_eq!(event.msg_type, MsgType::WatchEvent as u32);
    }
    let elapsed = start.elapsed();
    let ack = writer.frame();
    assert_eq!(ack.payload, b"OK\0");
    elapsed
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn row(what: &str, m: Measured, unit: &str) {
    println!(
        "| {what} | {:.0} {unit} | {:.0} {unit} | {:.0}% | {:.0}% |",
        m.daemon,
        m.floor,
        100.0 * m.daemon / m.floor,
        100.0 * m.median_ratio
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("xenstored");
    let _daemon = Daemon::start(Config::new(&socket)).expect("daemon");
    let floor = dir.path().join("floor");
    start_floor(floor.clone());

    let mut setup = Conn::connect(&socket);
    setup.call(MsgType::Write, 0, &write_arg(READ_PATH, &[b'7'; VALUE_LEN]));

    let n = if quick() { 2_000 } else { 20_000 };
    println!(
        "| measurement | daemon (best round) | floor (best round) | best / best | median of paired rounds |"
    );
    println!("|---|---:|---:|---:|---:|");
    for clients in [1, 8] {
        let per = n / clients;
        row(
            &format!("READ round trips, {clients} client(s), {VALUE_LEN}-byte value"),
            compare(&socket, &floor, clients, per, read_op),
            "ops/s",
        );
        row(
            &format!("WRITE round trips, {clients} client(s), {VALUE_LEN}-byte value"),
            compare(&socket, &floor, clients, per, write_op),
            "ops/s",
        );
    }
    row(
        "transaction commits (START + WRITE + END), 1 client",
        compare(&socket, &floor, 1, n / 3, transaction_op),
        "tx/s",
    );
    row(
        "transaction commits (START + WRITE + END), 8 clients",
        compare(&socket, &floor, 8, n / 24, transaction_op),
        "tx/s",
    );

    // Watch fan-out: 1,000 connections watching /fan.
    let samples = if quick() { 20 } else { 200 };
    let mut watchers: Vec<Conn> = (0..WATCHERS).map(|_| Conn::connect(&socket)).collect();
    for (i, w) in watchers.iter_mut().enumerate() {
        let mut payload = path_arg("/fan");
        payload.extend(path_arg(&format!("tok{i:04}")));
        w.call(MsgType::Watch, 0, &payload);
        w.frame(); // the first event
    }
    let mut writer = Conn::connect(&socket);

    let fan_floor = dir.path().join("fan-floor");
    let event_len = "/fan\0tok0000\0".len();
    start_fanout_floor(fan_floor.clone(), WATCHERS, event_len);
    let mut floor_writer = Conn::connect(&fan_floor);
    thread::sleep(Duration::from_millis(50));
    let mut floor_watchers: Vec<Conn> = (0..WATCHERS).map(|_| Conn::connect(&fan_floor)).collect();

    // Samples alternate daemon, floor, daemon, ... (same load for both).
    let (mut daemon_times, mut floor_times) = (Vec::new(), Vec::new());
    for i in 0..samples {
        daemon_times.push(fanout_once(&mut writer, &mut watchers, i));
        floor_times.push(fanout_once(&mut floor_writer, &mut floor_watchers, i));
    }
    daemon_times.sort();
    floor_times.sort();
    let (daemon_p50, daemon_p99) = (percentile(&daemon_times, 50), percentile(&daemon_times, 99));
    let (floor_p50, floor_p99) = (percentile(&floor_times, 50), percentile(&floor_times, 99));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| watch fan-out to {WATCHERS} watchers, median (all events read) | {:.0} µs | {:.0} µs | {:.0}% | |",
        us(daemon_p50),
        us(floor_p50),
        100.0 * us(floor_p50) / us(daemon_p50)
    );
    println!(
        "| watch fan-out to {WATCHERS} watchers, 99th percentile | {:.0} µs | {:.0} µs | {:.0}% | |",
        us(daemon_p99),
        us(floor_p99),
        100.0 * us(floor_p99) / us(daemon_p99)
    );
    println!();
    println!("(fan-out rows: floor latency / daemon latency, so higher is better everywhere)");
}
