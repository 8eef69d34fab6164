//! A blocking xenstore client, one connection per [`Client`].
//!
//! Requests are answered in order on a connection, but watch events may
//! arrive at any time, including between a request and its reply. The client
//! therefore reads frames in one place (`Client::await_reply`) that queues
//! every event it meets; [`Client::next_event`] drains that queue before it
//! reads more, so no event is lost and events keep their order.

mod conn;
mod error;
mod store;
mod transaction;

pub use error::{Error, ErrorKind, Result};
pub use store::Store;
pub use transaction::Transaction;

use crate::path::XsPath;
use crate::wire::{self, Errno, FrameError, Message, MsgType, PAYLOAD_MAX};
use conn::Connection;
use std::collections::VecDeque;
use std::env;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where libxenstore looks for the daemon's socket when no variable says.
pub const DEFAULT_SOCKET: &str = "/var/run/xenstored/socket";

/// The xenbus devices libxenstore falls back to, in order.
pub const XENBUS_DEVICES: [&str; 2] = ["/dev/xen/xenbus", "/proc/xen/xenbus"];

/// Most requests sent back to back before their replies are read; keeps a
/// pipelined batch well inside the socket buffers and the daemon's
/// outstanding-request quota, so neither side can block the other.
const PIPELINE_DEPTH: usize = 64;

/// A watch firing: the changed path (relative when the watch was registered
/// relative) and the token given to [`Client::watch`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// One connection to a xenstore daemon. Blocking; `Send`, not shared: give
/// each thread its own connection.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    next_req_id: u32,
    /// Events read while waiting for replies, oldest first.
    events: VecDeque<WatchEvent>,
    /// Set once the stream lost sync (I/O or protocol error); every later
    /// request fails fast instead of misreading replies.
    broken: Option<String>,
}

impl Client {
    /// Connects the way libxenstore's `xs_open` does: `$XENSTORED_PATH`, else
    /// `$XENSTORED_RUNDIR/socket`, else [`DEFAULT_SOCKET`] — a socket gets a
    /// stream connection, anything else is opened as a device — and, without
    /// `$XENSTORED_PATH`, the xenbus devices after that.
    pub fn connect() -> Result<Client> {
        let explicit = env::var_os("XENSTORED_PATH").map(PathBuf::from);
        let mut candidates = Vec::new();
        match &explicit {
            Some(path) => candidates.push(path.clone()),
            None => {
                let rundir = env::var_os("XENSTORED_RUNDIR").map(PathBuf::from);
                candidates.push(
                    rundir.map_or_else(|| PathBuf::from(DEFAULT_SOCKET), |dir| dir.join("socket")),
                );
                candidates.extend(XENBUS_DEVICES.iter().map(PathBuf::from));
            }
        }
        let mut failures = Vec::new();
        for path in &candidates {
            match Self::connect_path(path) {
                Ok(client) => return Ok(client),
                Err(e) => failures.push(format!("{}: {}", path.display(), e.kind())),
            }
        }
        Err(Error::new(
            "connect",
            None,
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no xenstore daemon reachable ({})", failures.join("; ")),
            ),
        ))
    }

    /// Connects to `path` as a socket when it is one, else opens it as a
    /// device — libxenstore's rule for every candidate path.
    pub fn connect_path(path: &Path) -> Result<Client> {
        use std::os::unix::fs::FileTypeExt;
        let is_socket = std::fs::metadata(path)
            .map_err(|e| Error::new("connect", Some(&path.display().to_string()), e))?
            .file_type()
            .is_socket();
        if is_socket {
            Self::connect_socket(path)
        } else {
            Self::open_device(path)
        }
    }

    /// Connects to the daemon's Unix socket at `path`.
    pub fn connect_socket(path: &Path) -> Result<Client> {
        Connection::socket(path)
            .map(Self::over)
            .map_err(|e| Error::new("connect", Some(&path.display().to_string()), e))
    }

    /// Opens a xenbus device (`/dev/xen/xenbus`) at `path`.
    pub fn open_device(path: &Path) -> Result<Client> {
        Connection::device(path)
            .map(Self::over)
            .map_err(|e| Error::new("open", Some(&path.display().to_string()), e))
    }

    fn over(conn: Connection) -> Client {
        Client {
            conn,
            next_req_id: 1,
            events: VecDeque::new(),
            broken: None,
        }
    }

    /// The socket or device this client talks through.
    pub fn endpoint(&self) -> &Path {
        self.conn.path()
    }

    // ---- plain operations (also available generically through `Store`) ----

    /// The value of `path`, without a trailing NUL; binary values are fine.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>> {
        store::ops::read(self, 0, path)
    }

    /// Like [`read`](Self::read), with a missing node as `None`.
    pub fn read_opt(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        store::ops::read_opt(self, 0, path)
    }

    /// The value of `path` as UTF-8 text.
    pub fn read_string(&mut self, path: &str) -> Result<String> {
        store::ops::read_string(self, 0, path)
    }

    /// Sets `path` to `value`, creating missing parents with empty values.
    pub fn write(&mut self, path: &str, value: impl AsRef<[u8]>) -> Result<()> {
        store::ops::write(self, 0, path, value.as_ref())
    }

    /// Creates `path` (and parents) with an empty value; existing is fine.
    pub fn mkdir(&mut self, path: &str) -> Result<()> {
        store::ops::mkdir(self, 0, path)
    }

    /// Removes `path` and its subtree. A missing node whose parent exists
    /// is fine; a missing parent is ENOENT.
    pub fn rm(&mut self, path: &str) -> Result<()> {
        store::ops::rm(self, 0, path)
    }

    /// The names of the children of `path`. Falls back to DIRECTORY_PART
    /// when the list does not fit one reply (E2BIG).
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        store::ops::directory(self, 0, path)
    }

    pub fn get_perms(&mut self, path: &str) -> Result<crate::perms::Perms> {
        store::ops::get_perms(self, 0, path)
    }

    pub fn set_perms(&mut self, path: &str, perms: &crate::perms::Perms) -> Result<()> {
        store::ops::set_perms(self, 0, path, perms)
    }

    /// Whether `path` exists (and is readable).
    pub fn exists(&mut self, path: &str) -> Result<bool> {
        Ok(self.read_opt(path)?.is_some())
    }

    // ---- domains ----

    /// The home of `domid`, `/local/domain/<domid>`, as the daemon says.
    pub fn get_domain_path(&mut self, domid: u32) -> Result<String> {
        let reply = self.request(MsgType::GetDomainPath, 0, wire::domid_payload(domid), None)?;
        Self::single_string(MsgType::GetDomainPath, None, &reply)
    }

    /// Tells the daemon a domain exists (privileged). `mfn` and `port` locate
    /// the domain's ring on a real host; a simulating daemon may ignore them.
    pub fn introduce(&mut self, domid: u32, mfn: u64, port: u32) -> Result<()> {
        let payload = wire::nul_terminated(&[
            domid.to_string().as_bytes(),
            mfn.to_string().as_bytes(),
            port.to_string().as_bytes(),
        ]);
        self.request(MsgType::Introduce, 0, payload, None).map(drop)
    }

    /// Tells the daemon a domain is gone (privileged).
    pub fn release(&mut self, domid: u32) -> Result<()> {
        self.request(MsgType::Release, 0, wire::domid_payload(domid), None)
            .map(drop)
    }

    /// Tells the daemon a domain resumed (privileged).
    pub fn resume(&mut self, domid: u32) -> Result<()> {
        self.request(MsgType::Resume, 0, wire::domid_payload(domid), None)
            .map(drop)
    }

    /// Lets `domid` act with the permissions of `target` (privileged; used
    /// for device-model stub domains).
    pub fn set_target(&mut self, domid: u32, target: u32) -> Result<()> {
        let payload =
            wire::nul_terminated(&[domid.to_string().as_bytes(), target.to_string().as_bytes()]);
        self.request(MsgType::SetTarget, 0, payload, None).map(drop)
    }

    pub fn is_domain_introduced(&mut self, domid: u32) -> Result<bool> {
        let reply = self.request(
            MsgType::IsDomainIntroduced,
            0,
            wire::domid_payload(domid),
            None,
        )?;
        match Self::single_string(MsgType::IsDomainIntroduced, None, &reply)?.as_str() {
            "T" => Ok(true),
            "F" => Ok(false),
            other => Err(Error::for_request(
                MsgType::IsDomainIntroduced,
                None,
                ErrorKind::Protocol(format!("answer {other:?} is neither T nor F")),
            )),
        }
    }

    /// Sends a CONTROL request (privileged; e.g. `["log", "on"]`) and returns
    /// the raw answer.
    pub fn control(&mut self, args: &[&str]) -> Result<Vec<u8>> {
        let fields: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.request(MsgType::Control, 0, wire::nul_terminated(&fields), None)
    }

    // ---- watches ----

    /// Registers a watch on `path` (absolute, relative or special). The daemon
    /// fires it once at once; that event arrives through
    /// [`next_event`](Self::next_event) like every other.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<()> {
        check_token(MsgType::Watch, path, token)?;
        self.request(
            MsgType::Watch,
            0,
            wire::watch_payload(path, token),
            Some(path),
        )
        .map(drop)
    }

    /// Registers `watches` (path, token) and then reads `paths`, all in one
    /// round trip. A read that follows the registration cannot miss a
    /// change: either it sees the new value or the watch fires after it.
    /// Missing nodes are `None`; the first failure, in order, is returned.
    pub fn watch_and_read_many(
        &mut self,
        watches: &[(&str, &str)],
        paths: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let (outcomes, _) = self.watch_read_batch(watches, paths, Vec::new())?;
        Self::watched_values(outcomes, watches.len())
    }

    /// One pipelined batch: `watches`, then reads of `paths`, then `tail`
    /// (requests outside any transaction). The outcomes of the watches and
    /// reads, in order, and those of `tail`.
    fn watch_read_batch(
        &mut self,
        watches: &[(&str, &str)],
        paths: &[&str],
        tail: Vec<(MsgType, Vec<u8>, &str)>,
    ) -> Result<(Outcomes, Outcomes)> {
        for (path, token) in watches {
            check_token(MsgType::Watch, path, token)?;
        }
        for path in paths {
            store::ops::checked(MsgType::Read, path)?;
        }
        let tail_len = tail.len();
        let requests: Vec<_> = watches
            .iter()
            .map(|(path, token)| (MsgType::Watch, wire::watch_payload(path, token), *path))
            .chain(
                paths
                    .iter()
                    .map(|path| (MsgType::Read, wire::path_payload(path), *path)),
            )
            .chain(tail)
            .collect();
        let mut outcomes = self.request_many(0, &requests)?;
        let tail = outcomes.split_off(outcomes.len() - tail_len);
        Ok((outcomes, tail))
    }

    /// The read values of a [`watch_read_batch`](Self::watch_read_batch)
    /// whose first `watches` outcomes are registrations: the first failure,
    /// in order, or the values (missing nodes `None`).
    fn watched_values(mut outcomes: Outcomes, watches: usize) -> Result<Vec<Option<Vec<u8>>>> {
        let reads = outcomes.split_off(watches);
        outcomes
            .into_iter()
            .try_for_each(|outcome| outcome.map(drop))?;
        reads
            .into_iter()
            .map(store::ops::not_found_as_none)
            .collect()
    }

    /// Removes a watch and drops its events still queued here, as
    /// libxenstore does, so none arrives after `unwatch` returns.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<()> {
        check_token(MsgType::Unwatch, path, token)?;
        self.request(
            MsgType::Unwatch,
            0,
            wire::watch_payload(path, token),
            Some(path),
        )?;
        self.events
            .retain(|e| !(e.token == token && event_is_under(&e.path, path)));
        Ok(())
    }

    /// Removes every watch of this connection, and the queued events.
    pub fn reset_watches(&mut self) -> Result<()> {
        self.request(MsgType::ResetWatches, 0, Vec::new(), None)?;
        self.events.clear();
        Ok(())
    }

    /// The next watch event: a queued one first, else one read from the
    /// daemon within `timeout` (`None`: wait forever). `Ok(None)` on timeout.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<WatchEvent>> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        self.check_usable("WATCH_EVENT")?;
        // A timeout too large to add to now means: wait forever.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
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

    /// A blocking iterator over watch events; ends after the first error.
    pub fn events(&mut self) -> Events<'_> {
        Events {
            client: self,
            failed: false,
        }
    }

    /// Number of events already received and queued.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    // ---- transactions ----

    /// Runs `f` in a transaction and commits it. When the commit fails with
    /// EAGAIN (another client changed what `f` read or wrote) `f` runs again
    /// in a fresh transaction, after a short random pause that grows with
    /// each conflict (so contending clients stop colliding in lockstep), up
    /// to [`Transaction::MAX_ATTEMPTS`] times in all; then the EAGAIN error
    /// is returned. When `f` fails, the
    /// transaction is aborted and `f`'s error returned.
    pub fn transaction<T, E: From<Error>>(
        &mut self,
        f: impl FnMut(&mut Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.start_transaction()?.run(f)
    }

    /// Reads several nodes as one consistent view in two round trips
    /// (START, then the reads with the commit pipelined behind them),
    /// retried like [`transaction`](Self::transaction) when the commit
    /// reports that another client changed one of them meanwhile. Missing
    /// nodes are `None`.
    pub fn read_many_atomically(&mut self, paths: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut attempt = 1;
        loop {
            let tx = self.start_transaction()?;
            match tx.read_many_and_commit(paths) {
                Err(e)
                    if e.errno() == Some(Errno::EAGAIN) && attempt < Transaction::MAX_ATTEMPTS =>
                {
                    retry_pause(attempt);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Starts a transaction to drive by hand; it is aborted when dropped
    /// without [`Transaction::commit`]. Prefer [`transaction`](Self::transaction),
    /// which retries on conflict.
    pub fn start_transaction(&mut self) -> Result<Transaction<'_>> {
        let reply = self.request(MsgType::TransactionStart, 0, b"\0".to_vec(), None)?;
        let id = Self::transaction_id(&reply)?;
        Ok(Transaction::new(self, id))
    }

    /// Registers `watches`, reads `paths` outside any transaction and
    /// starts a transaction, all in one round trip: for a caller that must
    /// act on some values (open a device, say) before the transaction that
    /// publishes the outcome, and re-reads them there to make them part of
    /// what the commit checks. Every watch is registered before the reads
    /// are answered, so a later change is either in the value read or
    /// fires the watch after it. Missing nodes are `None`; the first
    /// failure, in order, is returned (and the transaction, if started,
    /// aborted).
    pub fn watch_read_and_start_transaction(
        &mut self,
        watches: &[(&str, &str)],
        paths: &[&str],
    ) -> Result<(Vec<Option<Vec<u8>>>, Transaction<'_>)> {
        let start = (MsgType::TransactionStart, b"\0".to_vec(), "");
        let (outcomes, mut tail) = self.watch_read_batch(watches, paths, vec![start])?;
        // Started or not, the transaction is only handed out (or aborted on
        // drop) once the other replies are known to be good.
        let id = tail
            .pop()
            .expect("one outcome per request")
            .and_then(|reply| Self::transaction_id(&reply))?;
        let tx = Transaction::new(self, id);
        let values = Self::watched_values(outcomes, watches.len())?;
        Ok((values, tx))
    }

    /// The id in a TRANSACTION_START reply.
    fn transaction_id(reply: &[u8]) -> Result<u32> {
        let text = Self::single_string(MsgType::TransactionStart, None, reply)?;
        text.parse::<u32>()
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
            })
    }

    // ---- raw access ----

    /// Sends one frame of any type (even an unknown one) and returns the
    /// daemon's reply frame uninterpreted, ERROR replies included. Watch
    /// events arriving meanwhile are queued as usual. For tests of daemons.
    pub fn send_raw(&mut self, msg_type: u32, tx_id: u32, payload: &[u8]) -> Result<Message> {
        let op = message_type_name(msg_type);
        self.check_usable(op)?;
        if payload.len() > PAYLOAD_MAX {
            return Err(Error::new(
                op,
                None,
                ErrorKind::TooLarge { len: payload.len() },
            ));
        }
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

    // ---- plumbing shared with `store` and `transaction` ----

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
        if payload.len() > PAYLOAD_MAX {
            return Err(Error::new(
                op,
                path,
                ErrorKind::TooLarge { len: payload.len() },
            ));
        }
        let req_id = self.take_req_id();
        let message = Message::new(t, req_id, tx_id, payload);
        self.send_bytes(op, path, &message.encode())?;
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
        requests: &[(MsgType, Vec<u8>, &str)],
    ) -> Result<Vec<Result<Vec<u8>>>> {
        let mut outcomes = Vec::with_capacity(requests.len());
        let depth = if self.conn.pipelines() {
            PIPELINE_DEPTH
        } else {
            1
        };
        for batch in requests.chunks(depth) {
            let op = batch[0].0.name();
            self.check_usable(op)?;
            let mut bytes = Vec::new();
            let mut ids = Vec::with_capacity(batch.len());
            for (t, payload, path) in batch {
                if payload.len() > PAYLOAD_MAX {
                    return Err(Error::new(
                        t.name(),
                        Some(path),
                        ErrorKind::TooLarge { len: payload.len() },
                    ));
                }
                let req_id = self.take_req_id();
                bytes.extend_from_slice(&Message::new(*t, req_id, tx_id, payload.clone()).encode());
                ids.push(req_id);
            }
            self.send_bytes(op, None, &bytes)?;
            for ((t, _, path), req_id) in batch.iter().zip(ids) {
                let reply = self.await_reply(t.name(), Some(path), req_id)?;
                outcomes.push(self.interpret(*t, Some(path), reply));
            }
        }
        Ok(outcomes)
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
                Ok(None) => unreachable!("recv without deadline always yields a frame or an error"),
                Err(e) => return Err(self.lose_sync(op, path, frame_error_kind(e))),
            };
            if message.msg_type == MsgType::WatchEvent as u32 {
                match parse_event(&message.payload) {
                    Some(event) => self.events.push_back(event),
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

    /// The single NUL-terminated string some replies consist of.
    fn single_string(t: MsgType, path: Option<&str>, payload: &[u8]) -> Result<String> {
        let text = payload.strip_suffix(b"\0").unwrap_or(payload);
        String::from_utf8(text.to_vec()).map_err(|_| {
            Error::for_request(t, path, ErrorKind::Protocol("reply is not UTF-8".into()))
        })
    }
}

/// Each request's outcome in a pipelined batch, in order.
type Outcomes = Vec<Result<Vec<u8>>>;

/// Blocking iterator over a client's watch events.
#[derive(Debug)]
pub struct Events<'c> {
    client: &'c mut Client,
    failed: bool,
}

impl Iterator for Events<'_> {
    type Item = Result<WatchEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.client.next_event(None) {
            Ok(event) => event.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Pause before retry `attempt + 1` of a conflicted transaction: random in
/// `[0, 50µs · 2^(attempt-1))`, capped at 20 ms — randomized exponential
/// backoff, so clients that conflicted once do not conflict again in step.
/// All attempts together wait at most about half a second.
pub(crate) fn retry_pause(attempt: u32) {
    use std::hash::{BuildHasher, Hasher};
    const BASE_MICROS: u64 = 50;
    const CAP_MICROS: u64 = 20_000;
    let ceiling = BASE_MICROS
        .saturating_mul(1 << attempt.saturating_sub(1).min(20))
        .min(CAP_MICROS);
    // RandomState is randomly keyed per process and per instance: enough
    // entropy for jitter without a dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(attempt);
    let jitter = hasher.finish() % ceiling;
    std::thread::sleep(Duration::from_micros(jitter));
}

fn check_token(t: MsgType, path: &str, token: &str) -> Result<()> {
    XsPath::validate_request(path).map_err(|e| Error::for_request(t, Some(path), e))?;
    if token.as_bytes().contains(&0) {
        return Err(Error::for_request(
            t,
            Some(path),
            ErrorKind::InvalidArgument(format!("watch token {token:?} contains a NUL byte")),
        ));
    }
    Ok(())
}

/// Whether an event path belongs to a watch on `watch_path` (both written
/// the same way, absolute or relative).
fn event_is_under(event_path: &str, watch_path: &str) -> bool {
    event_path == watch_path
        || watch_path == "/"
        || event_path
            .strip_prefix(watch_path)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn parse_event(payload: &[u8]) -> Option<WatchEvent> {
    let mut fields = wire::fields(payload);
    let path = std::str::from_utf8(fields.next()?).ok()?.to_owned();
    let token = std::str::from_utf8(fields.next()?).ok()?.to_owned();
    Some(WatchEvent { path, token })
}

fn bad_event(payload: &[u8]) -> ErrorKind {
    ErrorKind::Protocol(format!(
        "malformed watch event {:?}",
        String::from_utf8_lossy(payload)
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_moves_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<Client>();
        assert_send::<Error>();
    }

    #[test]
    fn watch_event_subtree_rule_for_queued_events() {
        assert!(event_is_under("/a", "/a"));
        assert!(event_is_under("/a/b", "/a"));
        assert!(!event_is_under("/ab", "/a"));
        assert!(event_is_under("/x", "/"));
        assert!(event_is_under("device/vbd", "device"));
        assert!(event_is_under("@releaseDomain", "@releaseDomain"));
    }
}
