//! The request/reply engine under every [`Client`](super::Client): one
//! connection, request ids, frames out and replies in.
//!
//! Requests are answered in order on a connection, but watch events may
//! arrive at any time, including between a request and its reply. The
//! engine therefore reads frames in one place ([`Engine::await_reply`]),
//! which queues every event it meets on the connection's
//! [`EventQueue`]; the watch API drains that queue before it reads more,
//! so no event is lost and events keep their order. Once the stream loses
//! sync (an I/O or protocol error) every later request fails fast instead
//! of misreading replies.

use std::io;
use std::path::Path;
use std::time::Instant;

use super::conn::Connection;
use super::watches::{bad_event, parse_event, EventQueue, WatchEvent};
use super::{Error, ErrorKind, Result};
use crate::wire::{self, FrameError, Header, Message, MsgType, PAYLOAD_MAX};

/// Most requests sent back to back before their replies are read; keeps a
/// pipelined batch well inside the socket buffers and the daemon's
/// outstanding-request quota, so neither side can block the other.
const PIPELINE_DEPTH: usize = 64;

/// One pipelined request of a batch: its type, payload and the path it
/// names (for errors).
pub(crate) type BatchRequest<'p> = (MsgType, Vec<u8>, &'p str);

/// Each request's outcome in a pipelined batch, in order.
pub(crate) type Outcomes = Vec<Result<Vec<u8>>>;

/// The connection's request machinery; what a [`Client`](super::Client)
/// is made of. Not used directly: it appears in the public API only as the
/// [`Scope`](super::Scope) of a plain client.
#[derive(Debug)]
pub struct Engine {
    conn: Connection,
    next_req_id: u32,
    /// The id of the transaction most recently started on this connection
    /// (0: none yet), from which the next one's id is predicted.
    last_started_tx: u32,
    /// The frames of the request being sent, kept between requests so that
    /// each send reuses one allocation (musl's allocator returns a freed
    /// page to the kernel at once, and on a PV dom0 each mmap, munmap and
    /// first touch of a page is a trip through the hypervisor).
    send_buf: Vec<u8>,
    /// Set once a raw request went out: it may have started a transaction
    /// this engine does not know of, so ids are no longer predicted.
    raw_used: bool,
    /// Events read while waiting for replies, oldest first.
    pub(crate) events: EventQueue,
    /// Set once the stream lost sync; every later request fails fast.
    broken: Option<String>,
}

impl Engine {
    pub(crate) fn new(conn: Connection) -> Self {
        Engine {
            conn,
            next_req_id: 1,
            last_started_tx: 0,
            send_buf: Vec::new(),
            raw_used: false,
            events: EventQueue::default(),
            broken: None,
        }
    }

    /// The socket or device this engine talks through.
    pub(crate) fn endpoint(&self) -> &Path {
        self.conn.path()
    }

    /// One request, one reply: the reply payload, or the daemon's errno as
    /// an error naming the operation and `path`.
    pub(crate) fn request(
        &mut self,
        t: MsgType,
        tx_id: u32,
        payload: Vec<u8>,
        path: Option<&str>,
    ) -> Result<Vec<u8>> {
        let op = t.name();
        self.check_usable(op)?;
        check_size(op, path, &payload)?;
        let req_id = self.take_req_id();
        let mut frames = std::mem::take(&mut self.send_buf);
        frames.clear();
        push_frame(&mut frames, t as u32, req_id, tx_id, &payload);
        let sent = self.send_bytes(op, path, &frames);
        self.send_buf = frames;
        sent?;
        let reply = self.await_reply(op, path, req_id)?;
        self.interpret(t, path, reply)
    }

    /// Pipelined requests: up to [`PIPELINE_DEPTH`] frames are written
    /// together before their replies are read, so a batch costs one round
    /// trip per [`PIPELINE_DEPTH`] requests (one per request over the xenbus
    /// device, which cannot take more). Each request's outcome is
    /// returned in order; the outer error means the connection failed.
    pub(crate) fn request_many(
        &mut self,
        tx_id: u32,
        requests: &[BatchRequest<'_>],
    ) -> Result<Outcomes> {
        self.request_many_routed(requests, |_| tx_id)
    }

    /// [`request_many`](Self::request_many) with each request's
    /// transaction id chosen by its index: `tx_of(i)`. For a batch that
    /// mixes requests outside a transaction (WATCH, TRANSACTION_START) with
    /// requests inside one.
    pub(crate) fn request_many_routed(
        &mut self,
        requests: &[BatchRequest<'_>],
        tx_of: impl Fn(usize) -> u32,
    ) -> Result<Outcomes> {
        let mut outcomes = Vec::with_capacity(requests.len());
        let depth = if self.conn.pipelines() {
            PIPELINE_DEPTH
        } else {
            1
        };
        for (chunk, batch) in requests.chunks(depth).enumerate() {
            let op = batch[0].0.name();
            self.check_usable(op)?;
            // The frames are written straight into the send buffer: no copy
            // of a payload, no buffer per frame.
            for (t, payload, path) in batch {
                check_size(t.name(), Some(path), payload)?;
            }
            let mut frames = std::mem::take(&mut self.send_buf);
            frames.clear();
            let mut ids = Vec::with_capacity(batch.len());
            for (i, (t, payload, _)) in batch.iter().enumerate() {
                let req_id = self.take_req_id();
                push_frame(
                    &mut frames,
                    *t as u32,
                    req_id,
                    tx_of(chunk * depth + i),
                    payload,
                );
                ids.push(req_id);
            }
            let sent = self.send_bytes(op, None, &frames);
            self.send_buf = frames;
            sent?;
            for ((t, _, path), req_id) in batch.iter().zip(ids) {
                let reply = self.await_reply(t.name(), Some(path), req_id)?;
                outcomes.push(self.interpret(*t, Some(path), reply));
            }
        }
        Ok(outcomes)
    }

    /// The id of a TRANSACTION_START reply, remembered for
    /// [`likely_next_tx_id`](Self::likely_next_tx_id).
    pub(crate) fn started_tx_id(&mut self, reply: &[u8]) -> Result<u32> {
        let text = single_string(MsgType::TransactionStart, None, reply)?;
        let id = text
            .parse::<u32>()
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| {
                Error::for_request(
                    MsgType::TransactionStart,
                    None,
                    ErrorKind::Protocol(format!(
                        "transaction id {text:?} is not a non-zero number"
                    )),
                )
            })?;
        self.last_started_tx = id;
        Ok(id)
    }

    /// The id the daemon will most likely give the next transaction on this
    /// connection, so that requests inside it can ride in the same batch as
    /// its TRANSACTION_START; `None` where batches are not pipelined.
    ///
    /// Both daemons number transactions per connection, counting up from 1
    /// and skipping ids still open: Xen 4.17's C xenstored
    /// (`do_transaction_start`: `next_transaction_id`, per connection) and
    /// this project's (`last_tx_id`). So the next id is one more than the
    /// last one started here whenever the transactions end in the order
    /// they start, which is all a [`Client`](super::Client) can do (a
    /// [`Transaction`](super::Transaction) borrows it). A wrong guess is
    /// harmless: requests with an id the connection has no transaction for
    /// fail (ENOENT) without touching the store, and the caller compares the
    /// guess with START's reply before it looks at their outcomes. (After a
    /// [`send_raw`](Self::send_raw), which may have opened a transaction
    /// behind the engine's back, nothing is guessed: a guess naming an open
    /// transaction would act in it.)
    pub(crate) fn likely_next_tx_id(&self) -> Option<u32> {
        (self.conn.pipelines() && !self.raw_used)
            .then(|| self.last_started_tx.wrapping_add(1).max(1))
    }

    /// Sends one frame of any type (even an unknown one) and returns the
    /// daemon's reply frame uninterpreted, ERROR replies included.
    pub(crate) fn send_raw(
        &mut self,
        msg_type: u32,
        tx_id: u32,
        payload: &[u8],
    ) -> Result<Message> {
        let op = message_type_name(msg_type);
        self.check_usable(op)?;
        self.raw_used = true;
        check_size(op, None, payload)?;
        let req_id = self.take_req_id();
        let message = Message {
            msg_type,
            req_id,
            tx_id,
            payload: payload.to_vec(),
        };
        self.send_bytes(op, None, &message.encode())?;
        self.await_reply(op, None, req_id)
    }

    /// The next watch event read from the daemon before `deadline` (`None`:
    /// wait forever); `Ok(None)` when the deadline passed. The queue is the
    /// caller's to drain first.
    pub(crate) fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<WatchEvent>> {
        self.check_usable("WATCH_EVENT")?;
        let message = match self.conn.recv(deadline) {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.lose_sync("WATCH_EVENT", None, frame_error_kind(e))),
        };
        if message.msg_type != MsgType::WatchEvent as u32 {
            let kind = ErrorKind::Protocol(format!(
                "unsolicited {} reply (request id {}) while no request was outstanding",
                message_type_name(message.msg_type),
                message.req_id
            ));
            return Err(self.lose_sync("WATCH_EVENT", None, kind));
        }
        match parse_event(&message.payload) {
            Some(event) => Ok(Some(event)),
            None => Err(self.lose_sync("WATCH_EVENT", None, bad_event(&message.payload))),
        }
    }

    /// A reply's payload, or its ERROR as an error; any other type is a
    /// protocol violation.
    fn interpret(&mut self, t: MsgType, path: Option<&str>, reply: Message) -> Result<Vec<u8>> {
        if reply.msg_type == MsgType::Error as u32 {
            return match wire::parse_error_payload(&reply.payload) {
                Some(errno) => Err(Error::for_request(t, path, ErrorKind::Xenstore(errno))),
                None => Err(Error::for_request(
                    t,
                    path,
                    ErrorKind::Protocol(format!(
                        "unknown error name {:?}",
                        String::from_utf8_lossy(&reply.payload)
                    )),
                )),
            };
        }
        if reply.msg_type != t as u32 {
            let kind = ErrorKind::Protocol(format!(
                "answer to {} has type {}",
                t.name(),
                message_type_name(reply.msg_type)
            ));
            return Err(self.lose_sync(t.name(), path, kind));
        }
        Ok(reply.payload)
    }

    /// Reads frames until the reply to `req_id`, queueing watch events met
    /// on the way.
    fn await_reply(
        &mut self,
        op: &'static str,
        path: Option<&str>,
        req_id: u32,
    ) -> Result<Message> {
        loop {
            let message = match self.conn.recv(None) {
                Ok(Some(message)) => message,
                Ok(None) => {
                    let kind = ErrorKind::Protocol("no frame although no deadline was set".into());
                    return Err(self.lose_sync(op, path, kind));
                }
                Err(e) => return Err(self.lose_sync(op, path, frame_error_kind(e))),
            };
            if message.msg_type == MsgType::WatchEvent as u32 {
                match parse_event(&message.payload) {
                    Some(event) => self.events.push(event),
                    None => return Err(self.lose_sync(op, path, bad_event(&message.payload))),
                }
                continue;
            }
            if message.req_id != req_id {
                let kind = ErrorKind::Protocol(format!(
                    "expected the reply to request {req_id}, got {} for request {}",
                    message_type_name(message.msg_type),
                    message.req_id
                ));
                return Err(self.lose_sync(op, path, kind));
            }
            return Ok(message);
        }
    }

    fn send_bytes(&mut self, op: &'static str, path: Option<&str>, bytes: &[u8]) -> Result<()> {
        self.conn
            .send(bytes)
            .map_err(|e| self.lose_sync(op, path, ErrorKind::Io(e)))
    }

    fn take_req_id(&mut self) -> u32 {
        let id = self.next_req_id;
        // Zero is what watch events carry; skip it to keep traces readable.
        self.next_req_id = self.next_req_id.wrapping_add(1).max(1);
        id
    }

    fn check_usable(&self, op: &'static str) -> Result<()> {
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(Error::new(
                op,
                None,
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("connection unusable after an earlier failure: {why}"),
                ),
            )),
        }
    }

    /// Marks the connection unusable and builds the error that caused it.
    fn lose_sync(&mut self, op: &'static str, path: Option<&str>, kind: ErrorKind) -> Error {
        let error = Error::new(op, path, kind);
        self.broken.get_or_insert_with(|| error.to_string());
        error
    }
}

/// Refuses a payload the daemon would take as a reason to disconnect.
/// Appends one frame to `out`. The payload was checked against
/// [`PAYLOAD_MAX`] (so its length fits the header's `u32`).
fn push_frame(out: &mut Vec<u8>, msg_type: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
    let header = Header {
        msg_type,
        req_id,
        tx_id,
        len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
}

fn check_size(op: &'static str, path: Option<&str>, payload: &[u8]) -> Result<()> {
    if payload.len() > PAYLOAD_MAX {
        return Err(Error::new(
            op,
            path,
            ErrorKind::TooLarge { len: payload.len() },
        ));
    }
    Ok(())
}

/// The single NUL-terminated string some replies consist of.
pub(crate) fn single_string(t: MsgType, path: Option<&str>, payload: &[u8]) -> Result<String> {
    let text = payload.strip_suffix(b"\0").unwrap_or(payload);
    String::from_utf8(text.to_vec())
        .map_err(|_| Error::for_request(t, path, ErrorKind::Protocol("reply is not UTF-8".into())))
}

fn frame_error_kind(e: FrameError) -> ErrorKind {
    match e {
        FrameError::Io(e) => ErrorKind::Io(e),
        too_large @ FrameError::TooLarge { .. } => ErrorKind::Protocol(too_large.to_string()),
    }
}

fn message_type_name(t: u32) -> &'static str {
    MsgType::from_u32(t).map_or("unknown-type", MsgType::name)
}
