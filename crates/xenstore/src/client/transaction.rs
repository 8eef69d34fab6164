//! Transactions: a [`Session`] whose requests carry a transaction id, plus
//! what only a transaction does — pipelined batches, commit with retry,
//! abort on drop.

use super::engine::BatchRequest;
use super::nodes::{checked, not_found_as_none, sealed, Scope, Session};
use super::{engine, Client, Engine, Error, ErrorKind, Result};
use crate::wire::{self, Errno, MsgType};

/// An open transaction on a [`Client`]. Its writes are invisible to others
/// until [`commit`](Session::commit); dropping it uncommitted aborts it.
/// Its node operations are [`Session`]'s, as a client's.
pub type Transaction<'c> = Session<InTransaction<'c>>;

/// The [`Scope`] of a [`Transaction`]: the client it runs on and the id the
/// daemon gave it.
#[derive(Debug)]
pub struct InTransaction<'c> {
    client: &'c mut Client,
    id: u32,
    finished: bool,
}

impl Scope for InTransaction<'_> {}

impl sealed::Route for InTransaction<'_> {
    fn route(&mut self) -> (&mut Engine, u32) {
        (&mut self.client.scope, self.id)
    }
}

impl InTransaction<'_> {
    fn end(&mut self, commit: bool) -> Result<()> {
        self.finished = true;
        let reply = self.client.scope.request(
            MsgType::TransactionEnd,
            self.id,
            wire::transaction_end_payload(commit),
            None,
        )?;
        check_end_reply(&reply)
    }

    fn request_many(&mut self, requests: &[BatchRequest<'_>]) -> Result<engine::Outcomes> {
        self.client.scope.request_many(self.id, requests)
    }
}

impl Drop for InTransaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: if the connection is gone the daemon drops the
            // transaction with it.
            let _ = self.end(false);
        }
    }
}

impl<'c> Transaction<'c> {
    /// Attempts [`Client::transaction`] makes before it returns EAGAIN.
    pub const MAX_ATTEMPTS: u32 = 32;

    pub(crate) fn new(client: &'c mut Client, id: u32) -> Self {
        Session {
            scope: InTransaction {
                client,
                id,
                finished: false,
            },
        }
    }

    /// The id in a TRANSACTION_START reply.
    pub(crate) fn id_from_reply(reply: &[u8]) -> Result<u32> {
        let text = engine::single_string(MsgType::TransactionStart, None, reply)?;
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

    /// The id the daemon gave this transaction.
    pub fn id(&self) -> u32 {
        self.scope.id
    }

    /// Reads several nodes in one round trip: all requests are sent before
    /// the first reply is read. Missing nodes are `None`; any other failure
    /// is the first such error, in path order.
    pub fn read_many(&mut self, paths: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let requests = path_requests(MsgType::Read, paths)?;
        self.scope
            .request_many(&requests)?
            .into_iter()
            .map(not_found_as_none)
            .collect()
    }

    /// Writes several nodes in one round trip (pipelined like
    /// [`read_many`](Self::read_many)); the first failure, in order, is
    /// returned after all replies are in.
    pub fn write_many(&mut self, items: &[(&str, &[u8])]) -> Result<()> {
        let requests = write_requests(items)?;
        self.scope
            .request_many(&requests)?
            .into_iter()
            .try_for_each(|outcome| outcome.map(drop))
    }

    /// Removes several nodes in one round trip (pipelined like
    /// [`write_many`](Self::write_many)); the first failure, in order, is
    /// returned after all replies are in.
    pub fn rm_many(&mut self, paths: &[&str]) -> Result<()> {
        let requests = path_requests(MsgType::Rm, paths)?;
        self.scope
            .request_many(&requests)?
            .into_iter()
            .try_for_each(|outcome| outcome.map(drop))
    }

    /// Reads `reads`, then writes `writes`, all in one round trip: the
    /// daemon answers a connection's requests in order, so every read sees
    /// the transaction as it was before these writes. For a transaction
    /// whose writes depend on its reads only through "go or no go": the
    /// caller checks the values and commits, or aborts (drop) to discard
    /// the writes. The first failure, in order, is returned after all
    /// replies are in; missing nodes read as `None`.
    pub fn read_many_then_write(
        &mut self,
        reads: &[&str],
        writes: &[(&str, &[u8])],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let mut requests = path_requests(MsgType::Read, reads)?;
        requests.extend(write_requests(writes)?);
        let mut outcomes = self.scope.request_many(&requests)?;
        let write_outcomes = outcomes.split_off(reads.len());
        let values = outcomes
            .into_iter()
            .map(not_found_as_none)
            .collect::<Result<Vec<_>>>()?;
        write_outcomes
            .into_iter()
            .try_for_each(|outcome| outcome.map(drop))?;
        Ok(values)
    }

    /// Reads several nodes and commits, in one round trip (the commit is
    /// pipelined behind the reads): a read-only transaction's whole point
    /// is a consistent view, and the commit is what says whether it was.
    /// EAGAIN (another client changed one of the nodes meanwhile) means
    /// the values must be read again; [`Client::read_many_atomically`]
    /// does that.
    pub fn read_many_and_commit(mut self, paths: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut requests = path_requests(MsgType::Read, paths)?;
        requests.push((
            MsgType::TransactionEnd,
            wire::transaction_end_payload(true),
            "",
        ));
        self.scope.finished = true;
        let mut outcomes = self.scope.request_many(&requests)?;
        let end = outcomes.pop().expect("one outcome per request");
        check_end_reply(&end?)?;
        outcomes.into_iter().map(not_found_as_none).collect()
    }

    /// Runs `f` in this transaction and commits it; when the commit fails
    /// with EAGAIN, `f` runs again in a fresh transaction after a short
    /// random pause, as [`Client::transaction`] does (which is this, on a
    /// transaction it starts). For a first transaction started some other
    /// way, e.g. by [`Client::watch_read_and_start_transaction`]. When `f`
    /// fails, the transaction is aborted and `f`'s error returned.
    pub fn run<T, E: From<Error>>(
        mut self,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut attempt = 1;
        loop {
            let value = match f(&mut self) {
                Ok(value) => value,
                Err(e) => {
                    // The closure's error is what matters; a failed abort
                    // only means the daemon already dropped the transaction.
                    let _ = self.scope.end(false);
                    return Err(e);
                }
            };
            match self.scope.end(true) {
                Ok(()) => return Ok(value),
                Err(e) if e.errno() == Some(Errno::EAGAIN) && attempt < Self::MAX_ATTEMPTS => {
                    super::retry_pause(attempt);
                    attempt += 1;
                    let scope = &mut self.scope;
                    scope.id = scope.client.start_transaction()?.detach();
                    scope.finished = false;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The id, with the transaction left open: the caller takes it over.
    fn detach(mut self) -> u32 {
        self.scope.finished = true;
        self.scope.id
    }

    /// Commits. EAGAIN means another client changed a node this transaction
    /// read or wrote; nothing was applied and the work must be redone.
    pub fn commit(mut self) -> Result<()> {
        self.scope.end(true)
    }

    /// Discards the transaction's changes.
    pub fn abort(mut self) -> Result<()> {
        self.scope.end(false)
    }
}

/// A TRANSACTION_END reply must be "OK".
fn check_end_reply(reply: &[u8]) -> Result<()> {
    if reply.strip_suffix(b"\0").unwrap_or(reply) != b"OK" {
        return Err(Error::for_request(
            MsgType::TransactionEnd,
            None,
            ErrorKind::Protocol(format!(
                "unexpected answer {:?}",
                String::from_utf8_lossy(reply)
            )),
        ));
    }
    Ok(())
}

/// The requests of a batch whose payload is just a path (READ, RM), every
/// path validated before anything is sent, so an invalid one fails the
/// whole batch without a round trip.
fn path_requests<'p>(kind: MsgType, paths: &[&'p str]) -> Result<Vec<BatchRequest<'p>>> {
    paths
        .iter()
        .map(|path| {
            checked(kind, path)?;
            Ok((kind, wire::path_payload(path), *path))
        })
        .collect()
}

/// The WRITE requests of a batch, validated like [`path_requests`].
fn write_requests<'p>(items: &[(&'p str, &[u8])]) -> Result<Vec<BatchRequest<'p>>> {
    items
        .iter()
        .map(|(path, value)| {
            checked(MsgType::Write, path)?;
            Ok((MsgType::Write, wire::write_payload(path, value), *path))
        })
        .collect()
}
