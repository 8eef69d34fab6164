//! A guest domain's xenstore connection, reached from dom0's test process.
//!
//! On a real Xen host a guest's connection is its own ring, which only the
//! guest's kernel can drive (`/dev/xen/xenbus` inside the guest). A test in
//! dom0 that needs "a connection of guest N" gets one through two halves:
//!
//! - the **agent** ([`run_agent`]) runs inside the guest: it watches
//!   `data/xs-relay/req` in its own home, writes each request frame found
//!   there to a connection of its own (the guest's), stores the reply frame
//!   in `data/xs-relay/rep`, and each watch event that connection receives
//!   in a fresh `data/xs-relay/evt/<n>`;
//! - the **relay** ([`start_relay`]) runs in the test process in dom0: it
//!   serves a Unix socket for one connection; for each frame the client
//!   sends there it writes `req`, waits for the matching `rep` and passes
//!   the reply back, and it passes on (and removes) each `evt/<n>` in order.
//!
//! So the daemon sees the test's requests exactly as the guest's, with the
//! guest's privileges and quotas. What differs from a connection of its
//! own: the agent has one connection, so relayed connections take turns
//! ([`RelayTurn`]: one test at a time) and what a connection leaves behind
//! (watches, open transactions) stays for the next — a test unwatches what
//! it watched; and an event may reach the client after a reply the daemon
//! sent after it (events and replies travel by different nodes). Frames
//! carry an 8-byte sequence number in front, unique across connections and
//! processes, so a stale `rep` is never taken for a new one. A request frame must fit a node value dom0 may
//! write, a reply one a value the guest may write (its entry-size quota);
//! beyond that the relay answers E2BIG in the daemon's place.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use xenstore::wire::{Message, MsgType};
use xenstore::Client;

/// Set in the guest: the agent's connection (`/dev/xen/xenbus`, or for the
/// cargo suite a guest socket of our daemon).
pub const AGENT_ENV: &str = "XENSTORE_TEST_RELAY_AGENT";
/// The relay's nodes, relative to the guest's home (`data` is the subtree a
/// toolstack leaves writable to the guest).
const BASE: &str = "data/xs-relay";
/// Largest relayed request frame: a node value (4096 bytes) less the
/// sequence number.
const REQUEST_MAX: usize = 4096 - 8;
/// Largest relayed reply frame: the guest's record for `rep` (24-byte
/// header, 8 per permission, the value with its sequence number) must stay
/// below the default entry-size quota of 2048 bytes.
const REPLY_MAX: usize = 2000;
const REPLY_WAIT: Duration = Duration::from_secs(20);
/// How often the event pump looks for its stop flag.
const PUMP_TICK: Duration = Duration::from_millis(100);

type Reader = Box<dyn Read + Send>;
type Writer = Box<dyn Write + Send>;

/// Both halves of a stream to a xenstore daemon: a socket, or a device
/// opened read-write (one frame per `write`, as the xenbus device wants).
fn open_stream(path: &Path) -> io::Result<(Reader, Writer)> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::metadata(path)?.file_type().is_socket() {
        let stream = UnixStream::connect(path)?;
        Ok((Box::new(stream.try_clone()?), Box::new(stream)))
    } else {
        let file = File::options().read(true).write(true).open(path)?;
        Ok((Box::new(file.try_clone()?), Box::new(file)))
    }
}

/// An error frame (`errno` by name) answering `frame` (a request or its
/// reply: both carry the request's ids).
fn error_reply(frame: &[u8], errno: &str) -> Vec<u8> {
    let mut header = [0u8; xenstore::wire::HEADER_SIZE];
    header.copy_from_slice(&frame[..xenstore::wire::HEADER_SIZE]);
    let header = xenstore::wire::Header::decode(&header);
    let mut payload = errno.as_bytes().to_vec();
    payload.push(0);
    Message::new(MsgType::Error, header.req_id, header.tx_id, payload).encode()
}

/// The errno name a refused `write` stands for (the xenbus device refuses
/// a message it will not pass with EINVAL).
fn errno_name(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::INVAL.raw_os_error() => "EINVAL",
        _ => "EIO",
    }
}

/// A sequence number no other request to any agent has had: the process id
/// above a per-process count, so neither a later connection nor a later test
/// process can be answered with a reply meant for an earlier one.
fn next_seq() -> u64 {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    (u64::from(std::process::id()) << 32) | (COUNT.fetch_add(1, Ordering::Relaxed) + 1)
}

fn with_seq(seq: u64, frame: &[u8]) -> Vec<u8> {
    let mut value = seq.to_be_bytes().to_vec();
    value.extend_from_slice(frame);
    value
}

fn split_seq(value: &[u8]) -> Option<(u64, &[u8])> {
    let (seq, frame) = value.split_at_checked(8)?;
    Some((u64::from_be_bytes(seq.try_into().ok()?), frame))
}

fn agent_error(what: &str, e: &dyn std::fmt::Display) -> String {
    format!("relay agent: {what}: {e}")
}

/// The guest half: serves requests until the guest is destroyed. Its
/// errors name the node or the connection involved.
pub fn run_agent(endpoint: &Path) -> Result<(), String> {
    let fail = agent_error;
    let mut control = Client::connect_path(endpoint).map_err(|e| fail("connect", &e))?;
    let events = Client::connect_path(endpoint).map_err(|e| fail("connect", &e))?;
    let (reader, mut guest) =
        open_stream(endpoint).map_err(|e| fail(&endpoint.display().to_string(), &e))?;
    let (replies_to, replies) = mpsc::channel();
    thread::spawn(move || sort_guest_frames(reader, replies_to, events));

    let (req, rep) = (format!("{BASE}/req"), format!("{BASE}/rep"));
    control.write(&rep, "").map_err(|e| fail(&rep, &e))?;
    control.watch(&req, "req").map_err(|e| fail(&req, &e))?;
    control
        .write(&format!("{BASE}/ready"), "1")
        .map_err(|e| fail("ready", &e))?;
    let mut last = None;
    loop {
        control.next_event(None).map_err(|e| fail("watch", &e))?;
        let Some(value) = control.read_opt(&req).map_err(|e| fail(&req, &e))? else {
            continue;
        };
        let Some((seq, frame)) = split_seq(&value) else {
            continue;
        };
        if last == Some(seq) {
            continue;
        }
        last = Some(seq);
        // A request the connection refuses, or leaves unanswered, gets an
        // error reply naming what happened, and the agent carries on.
        let mut reply = match guest.write_all(frame) {
            Ok(()) => match replies.recv_timeout(REPLY_WAIT) {
                Ok(reply) => reply,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    eprintln!("{}", fail("no reply", &format!("request {seq}")));
                    error_reply(frame, "EIO")
                }
                Err(e) => return Err(fail("reply", &e)),
            },
            Err(e) => {
                eprintln!("{}", fail("forward", &e));
                error_reply(frame, errno_name(&e))
            }
        };
        if reply.len() > REPLY_MAX {
            reply = error_reply(&reply, "E2BIG");
        }
        control
            .write(&rep, with_seq(seq, &reply))
            .map_err(|e| fail(&rep, &e))?;
    }
}

/// Reads the guest connection: replies go to the agent's loop, watch events
/// to `evt/<n>` (numbered so that name order is arrival order).
fn sort_guest_frames(mut reader: Reader, replies: mpsc::Sender<Vec<u8>>, mut events: Client) {
    let mut n = 0u64;
    while let Ok(frame) = Message::read_from(&mut reader) {
        if frame.msg_type == MsgType::WatchEvent as u32 {
            n += 1;
            let node = format!("{BASE}/evt/{n:012}");
            if let Err(e) = events.write(&node, frame.encode()) {
                eprintln!("{}", agent_error(&node, &e));
            }
        } else if replies.send(frame.encode()).is_err() {
            return;
        }
    }
}

/// Holding this, a test has the agent of its process to itself: the agent
/// has one connection, so relayed connections take turns. The turn ends
/// when this is dropped (the guard is held for that alone).
pub struct RelayTurn {
    _held: MutexGuard<'static, ()>,
}

static TURN: Mutex<()> = Mutex::new(());

impl RelayTurn {
    pub fn take() -> Self {
        RelayTurn {
            _held: TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
        }
    }
}

/// The dom0 half for guest `domid`, whose agent runs: a socket in a fresh
/// directory whose first connection is relayed to the guest's. Waits for
/// the agent to be ready first. The caller holds a [`RelayTurn`] for as
/// long as that connection is used.
pub fn start_relay(dom0_endpoint: &Path, domid: u32) -> (tempfile::TempDir, PathBuf) {
    let base = format!("/local/domain/{domid}/{BASE}");
    let mut dom0 = Client::connect_path(dom0_endpoint).expect("dom0 connects");
    let ready = format!("{base}/ready");
    let deadline = std::time::Instant::now() + REPLY_WAIT;
    while dom0.read_opt(&ready).unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no relay agent in guest {domid}: {ready} never appeared"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join(format!("guest-{domid}"));
    let listener = UnixListener::bind(&socket).expect("relay socket");
    let dom0_endpoint = dom0_endpoint.to_owned();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        // A failed relay ends the connection; the test sees it closed.
        if let Err(e) = relay_connection(&mut dom0, &dom0_endpoint, &base, &mut stream) {
            eprintln!("guest relay: {e}");
        }
    });
    (dir, socket)
}

fn relay_connection(
    dom0: &mut Client,
    dom0_endpoint: &Path,
    base: &str,
    stream: &mut UnixStream,
) -> Result<(), String> {
    let (req, rep, evt) = (
        format!("{base}/req"),
        format!("{base}/rep"),
        format!("{base}/evt"),
    );
    // Events of an earlier connection's watches are not this one's.
    dom0.rm(&evt).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let pump = {
        let out = stream.try_clone().map_err(|e| e.to_string())?;
        let (endpoint, evt, stop) = (dom0_endpoint.to_owned(), evt.clone(), Arc::clone(&stop));
        thread::spawn(move || pump_events(&endpoint, &evt, out, &stop))
    };
    dom0.watch(&rep, "rep").map_err(|e| e.to_string())?;
    let result = (|| loop {
        let request = match Message::read_from(stream) {
            Ok(m) => m,
            Err(_) => return Ok(()), // the test closed its connection
        };
        let frame = request.encode();
        if frame.len() > REQUEST_MAX {
            stream
                .write_all(&error_reply(&frame, "E2BIG"))
                .map_err(|e| e.to_string())?;
            continue;
        }
        let seq = next_seq();
        dom0.write(&req, with_seq(seq, &frame))
            .map_err(|e| e.to_string())?;
        let reply = loop {
            let value = dom0.read_opt(&rep).map_err(|e| e.to_string())?;
            if let Some((got, reply)) = value.as_deref().and_then(split_seq) {
                if got == seq {
                    break reply.to_vec();
                }
            }
            if dom0
                .next_event(Some(REPLY_WAIT))
                .map_err(|e| e.to_string())?
                .is_none()
            {
                return Err(format!("no reply in {rep} to request {seq}"));
            }
        };
        stream.write_all(&reply).map_err(|e| e.to_string())?;
    })();
    let _ = dom0.unwatch(&rep, "rep");
    stop.store(true, Ordering::Relaxed);
    let pumped = pump
        .join()
        .unwrap_or_else(|_| Err("event pump panicked".into()));
    result.and(pumped)
}

/// Passes `evt/<n>` frames on to the client in name order, removing each,
/// until told to stop.
fn pump_events(
    dom0_endpoint: &Path,
    evt: &str,
    mut out: UnixStream,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut dom0 = Client::connect_path(dom0_endpoint).map_err(|e| e.to_string())?;
    dom0.watch(evt, "evt").map_err(|e| e.to_string())?;
    while !stop.load(Ordering::Relaxed) {
        let mut names = match dom0.directory(evt) {
            Ok(names) => names,
            Err(e) if e.errno() == Some(xenstore::Errno::ENOENT) => Vec::new(),
            Err(e) => return Err(e.to_string()),
        };
        names.sort();
        for name in names {
            let node = format!("{evt}/{name}");
            if let Some(frame) = dom0.read_opt(&node).map_err(|e| e.to_string())? {
                if out.write_all(&frame).is_err() {
                    return Ok(()); // the client has gone
                }
            }
            dom0.rm(&node).map_err(|e| e.to_string())?;
        }
        dom0.next_event(Some(PUMP_TICK))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
