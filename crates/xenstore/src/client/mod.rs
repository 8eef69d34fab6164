//! A blocking xenstore client, one connection per [`Client`].
//!
//! | module | job |
//! |---|---|
//! | `mod.rs` | the public API: connecting, transactions, raw frames |
//! | `nodes` | the node operations, once for [`Client`] and [`Transaction`] ([`Session`]) |
//! | `transaction` | what only a transaction does: batches, commit and retry, abort on drop |
//! | `watches` | watches and the queue of their events |
//! | `domains` | the toolstack's domain requests |
//! | `engine` | requests and replies on one connection, in order, events queued on the way |
//! | `conn` | the byte stream and frame reassembly |
//! | `error` | errors naming the operation and path that failed |

mod conn;
mod domains;
mod engine;
mod error;
mod nodes;
mod transaction;
mod watches;

pub use engine::Engine;
pub use error::{Error, ErrorKind, Result};
pub use nodes::{Scope, Session};
pub use transaction::{InTransaction, Transaction};
pub use watches::{Events, WatchEvent};

use crate::wire::{Errno, Message, MsgType};
use conn::Connection;
use std::env;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where libxenstore looks for the daemon's socket when no variable says.
pub const DEFAULT_SOCKET: &str = "/var/run/xenstored/socket";

/// The xenbus devices libxenstore falls back to, in order.
pub const XENBUS_DEVICES: [&str; 2] = ["/dev/xen/xenbus", "/proc/xen/xenbus"];

/// One connection to a xenstore daemon. Blocking; `Send`, not shared: give
/// each thread its own connection. Its node operations (`read`, `write`,
/// ...) are [`Session`]'s, shared with [`Transaction`].
pub type Client = Session<Engine>;

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
        Session {
            scope: Engine::new(conn),
        }
    }

    /// The socket or device this client talks through.
    pub fn endpoint(&self) -> &Path {
        self.scope.endpoint()
    }

    fn engine(&mut self) -> &mut Engine {
        &mut self.scope
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

    /// Reads several nodes as one consistent view, retried like
    /// [`transaction`](Self::transaction) when the commit reports that
    /// another client changed one of them meanwhile. Missing nodes are
    /// `None`. One round trip on a socket (START, the reads and the commit
    /// pipelined: see [`start_transaction_and_read`](Self::start_transaction_and_read)),
    /// two where the transaction id is not the one expected.
    pub fn read_many_atomically(&mut self, paths: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut attempt = 1;
        loop {
            let result = match self.speculative_start(paths, true)? {
                (_, Some(mut outcomes)) => {
                    let end = outcomes.pop().expect("one outcome per request");
                    end.and_then(|reply| transaction::check_end_reply(&reply))
                        .and_then(|()| outcomes.into_iter().map(nodes::not_found_as_none).collect())
                }
                (id, None) => Transaction::new(self, id).read_many_and_commit(paths),
            };
            match result {
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
        let engine = self.engine();
        let reply = engine.request(MsgType::TransactionStart, 0, b"\0".to_vec(), None)?;
        let id = engine.started_tx_id(&reply)?;
        Ok(Transaction::new(self, id))
    }

    // ---- raw access ----

    /// Sends one frame of any type (even an unknown one) and returns the
    /// daemon's reply frame uninterpreted, ERROR replies included. Watch
    /// events arriving meanwhile are queued as usual. For tests of daemons.
    pub fn send_raw(&mut self, msg_type: u32, tx_id: u32, payload: &[u8]) -> Result<Message> {
        self.engine().send_raw(msg_type, tx_id, payload)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_moves_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<Client>();
        assert_send::<Error>();
    }
}
