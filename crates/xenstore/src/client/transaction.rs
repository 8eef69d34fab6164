//! Transactions: the same node operations, tagged with a transaction id.

use super::store::ops;
use super::{Client, Error, ErrorKind, Result};
use crate::perms::Perms;
use crate::wire::{self, Errno, MsgType};

/// An open transaction on a [`Client`]. Its writes are invisible to others
/// until [`commit`](Self::commit); dropping it uncommitted aborts it.
#[derive(Debug)]
pub struct Transaction<'c> {
    client: &'c mut Client,
    id: u32,
    finished: bool,
}

impl<'c> Transaction<'c> {
    /// Attempts [`Client::transaction`] makes before it returns EAGAIN.
    pub const MAX_ATTEMPTS: u32 = 32;

    pub(crate) fn new(client: &'c mut Client, id: u32) -> Self {
        Transaction {
            client,
            id,
            finished: false,
        }
    }

    /// The id the daemon gave this transaction.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn read(&mut self, path: &str) -> Result<Vec<u8>> {
        ops::read(self.client, self.id, path)
    }

    pub fn read_opt(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        ops::read_opt(self.client, self.id, path)
    }

    pub fn read_string(&mut self, path: &str) -> Result<String> {
        ops::read_string(self.client, self.id, path)
    }

    pub fn write(&mut self, path: &str, value: impl AsRef<[u8]>) -> Result<()> {
        ops::write(self.client, self.id, path, value.as_ref())
    }

    pub fn mkdir(&mut self, path: &str) -> Result<()> {
        ops::mkdir(self.client, self.id, path)
    }

    pub fn rm(&mut self, path: &str) -> Result<()> {
        ops::rm(self.client, self.id, path)
    }

    pub fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        ops::directory(self.client, self.id, path)
    }

    pub fn get_perms(&mut self, path: &str) -> Result<Perms> {
        ops::get_perms(self.client, self.id, path)
    }

    pub fn set_perms(&mut self, path: &str, perms: &Perms) -> Result<()> {
        ops::set_perms(self.client, self.id, path, perms)
    }

    pub fn exists(&mut self, path: &str) -> Result<bool> {
        Ok(self.read_opt(path)?.is_some())
    }

    /// Reads several nodes in one round trip: all requests are sent before
    /// the first reply is read. Missing nodes are `None`; any other failure
    /// is the first such error, in path order.
    pub fn read_many(&mut self, paths: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let requests = path_requests(MsgType::Read, paths)?;
        self.client
            .request_many(self.id, &requests)?
            .into_iter()
            .map(ops::not_found_as_none)
            .collect()
    }

    /// Writes several nodes in one round trip (pipelined like
    /// [`read_many`](Self::read_many)); the first failure, in order, is
    /// returned after all replies are in.
    pub fn write_many(&mut self, items: &[(&str, &[u8])]) -> Result<()> {
        let requests = write_requests(items)?;
        self.client
            .request_many(self.id, &requests)?
            .into_iter()
            .try_for_each(|outcome| outcome.map(drop))
    }

    /// Removes several nodes in one round trip (pipelined like
    /// [`write_many`](Self::write_many)); the first failure, in order, is
    /// returned after all replies are in.
    pub fn rm_many(&mut self, paths: &[&str]) -> Result<()> {
        let requests = path_requests(MsgType::Rm, paths)?;
        self.client
            .request_many(self.id, &requests)?
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
        let mut outcomes = self.client.request_many(self.id, &requests)?;
        let write_outcomes = outcomes.split_off(reads.len());
        let values = outcomes
            .into_iter()
            .map(ops::not_found_as_none)
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
        self.finished = true;
        let mut outcomes = self.client.request_many(self.id, &requests)?;
        let end = outcomes.pop().expect("one outcome per request");
        check_end_reply(&end?)?;
        outcomes.into_iter().map(ops::not_found_as_none).collect()
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
                    let _ = self.end(false);
                    return Err(e);
                }
            };
            match self.end(true) {
                Ok(()) => return Ok(value),
                Err(e) if e.errno() == Some(Errno::EAGAIN) && attempt < Self::MAX_ATTEMPTS => {
                    super::retry_pause(attempt);
                    attempt += 1;
                    self.id = self.client.start_transaction()?.detach();
                    self.finished = false;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The id, with the transaction left open: the caller takes it over.
    fn detach(mut self) -> u32 {
        self.finished = true;
        self.id
    }

    /// Commits. EAGAIN means another client changed a node this transaction
    /// read or wrote; nothing was applied and the work must be redone.
    pub fn commit(mut self) -> Result<()> {
        self.end(true)
    }

    /// Discards the transaction's changes.
    pub fn abort(mut self) -> Result<()> {
        self.end(false)
    }

    fn end(&mut self, commit: bool) -> Result<()> {
        self.finished = true;
        let reply = self.client.request(
            MsgType::TransactionEnd,
            self.id,
            wire::transaction_end_payload(commit),
            None,
        )?;
        check_end_reply(&reply)
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

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: if the connection is gone the daemon drops the
            // transaction with it.
            let _ = self.end(false);
        }
    }
}

/// One pipelined request of a batch: its type, payload and the path it
/// names (for errors).
type BatchRequest<'p> = (MsgType, Vec<u8>, &'p str);

/// The requests of a batch whose payload is just a path (READ, RM), every
/// path validated before anything is sent, so an invalid one fails the
/// whole batch without a round trip.
fn path_requests<'p>(kind: MsgType, paths: &[&'p str]) -> Result<Vec<BatchRequest<'p>>> {
    paths
        .iter()
        .map(|path| {
            ops::checked(kind, path)?;
            Ok((kind, wire::path_payload(path), *path))
        })
        .collect()
}

/// The WRITE requests of a batch, validated like [`path_requests`].
fn write_requests<'p>(items: &[(&'p str, &[u8])]) -> Result<Vec<BatchRequest<'p>>> {
    items
        .iter()
        .map(|(path, value)| {
            ops::checked(MsgType::Write, path)?;
            Ok((MsgType::Write, wire::write_payload(path, value), *path))
        })
        .collect()
}
