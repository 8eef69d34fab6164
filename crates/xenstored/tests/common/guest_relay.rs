//! A guest domain's xenstore connection, reached from dom0's test process.
//!
//! On a real Xen host a guest's connection is its own ring, which only the
//! guest's kernel can drive (`/dev/xen/xenbus` inside the guest). A test in
//! dom0 that needs "a connection of guest N" gets one through two halves:
//!
//! - the **agent** ([`run_agent`]) runs inside the guest: it watches
//!   `data/xs-relay/req` in its own home, writes each request frame found
//!   there to a connection of its own (the guest's), and stores the reply
//!   frame in `data/xs-relay/rep`;
//! - the **relay** ([`start_relay`]) runs in the test process in dom0: it
//!   serves a Unix socket, and for each frame a client sends there writes
//!   `req`, waits for the matching `rep` and passes the reply back.
//!
//! So the daemon sees the test's requests exactly as the guest's, with the
//! guest's privileges and quotas. What differs from a connection of its
//! own: watch events on the relayed connection are not passed on (no test
//! needs them there), and the relayed connections of one test process share
//! the agent's one connection (one request at a time), so per-connection
//! state — open transactions — is the sum of theirs. Frames carry an
//! 8-byte sequence number in front, so a stale `rep` is never taken for a
//! new one. A request frame must fit a node value dom0 may write, a reply
//! one a value the guest may write (its entry-size quota); beyond that the
//! relay answers E2BIG in the daemon's place.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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
const REPLY_WAIT: Duration = Duration::from_secs(60);

/// A stream to a xenstore daemon: a socket, or a device opened read-write
/// (one frame per `write`, as the xenbus device wants).
fn open_stream(path: &Path) -> io::Result<Box<dyn ReadWrite>> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::metadata(path)?.file_type().is_socket() {
        Ok(Box::new(UnixStream::connect(path)?))
    } else {
        Ok(Box::new(File::options().read(true).write(true).open(path)?))
    }
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// An E2BIG error frame answering `frame` (a request or its reply: both
/// carry the request's ids).
fn e2big(frame: &[u8]) -> Vec<u8> {
    let mut header = [0u8; xenstore::wire::HEADER_SIZE];
    header.copy_from_slice(&frame[..xenstore::wire::HEADER_SIZE]);
    let header = xenstore::wire::Header::decode(&header);
    Message::new(
        MsgType::Error,
        header.req_id,
        header.tx_id,
        b"E2BIG\0".to_vec(),
    )
    .encode()
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

/// The guest half: serves requests until the guest is destroyed. Its
/// errors name the node or the connection involved.
pub fn run_agent(endpoint: &Path) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("relay agent: {what}: {e}");
    let mut control = Client::connect_path(endpoint).map_err(|e| fail("connect", &e))?;
    let mut guest = open_stream(endpoint).map_err(|e| fail(&endpoint.display().to_string(), &e))?;
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
        guest.write_all(frame).map_err(|e| fail("forward", &e))?;
        let mut reply = loop {
            let reply = Message::read_from(&mut guest).map_err(|e| fail("reply", &e))?;
            if reply.msg_type != MsgType::WatchEvent as u32 {
                break reply.encode();
            }
        };
        if reply.len() > REPLY_MAX {
            reply = e2big(&reply);
        }
        control
            .write(&rep, with_seq(seq, &reply))
            .map_err(|e| fail(&rep, &e))?;
    }
}

/// The dom0 half for guest `domid`, whose agent runs: a socket in a fresh
/// directory whose connections are relayed to the guest's (one at a time).
/// Waits for the agent to be ready first.
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
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join(format!("guest-{domid}"));
    let listener = UnixListener::bind(&socket).expect("relay socket");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // A failed relay ends that connection; the test sees it closed.
            let _ = relay_connection(&mut dom0, &base, &mut stream);
        }
    });
    (dir, socket)
}

/// The last sequence number used, and the right to use the one agent:
/// tests running side by side each have a relay, and their exchanges must
/// not interleave on the agent's single pair of nodes.
static EXCHANGE: Mutex<u64> = Mutex::new(0);

fn relay_connection(dom0: &mut Client, base: &str, stream: &mut UnixStream) -> Result<(), String> {
    let (req, rep) = (format!("{base}/req"), format!("{base}/rep"));
    dom0.watch(&rep, "rep").map_err(|e| e.to_string())?;
    let result = (|| loop {
        let request = match Message::read_from(stream) {
            Ok(m) => m,
            Err(_) => return Ok(()), // the test closed its connection
        };
        let frame = request.encode();
        if frame.len() > REQUEST_MAX {
            stream
                .write_all(&e2big(&frame))
                .map_err(|e| e.to_string())?;
            continue;
        }
        let mut seq = EXCHANGE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *seq += 1;
        dom0.write(&req, with_seq(*seq, &frame))
            .map_err(|e| e.to_string())?;
        let reply = loop {
            let value = dom0.read_opt(&rep).map_err(|e| e.to_string())?;
            if let Some((got, reply)) = value.as_deref().and_then(split_seq) {
                if got == *seq {
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
        drop(seq);
        stream.write_all(&reply).map_err(|e| e.to_string())?;
    })();
    let _ = dom0.unwatch(&rep, "rep");
    result
}
