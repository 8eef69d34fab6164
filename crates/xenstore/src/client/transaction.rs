//! Transactions: a [`Session`] whose requests carry a transaction id, plus
//! what only a transaction does — pipelined batches, commit with retry,
//! abort on drop.

use super::engine::{BatchRequest, Outcomes};
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

    /// Registers `watches` (which live outside any transaction) and writes
    /// `items` in this transaction, all in one round trip. The first
    /// failure, in order, is returned after all replies are in. A watch
    /// registered before the commit fires for any change after it, and a
    /// change between the registration and the commit to a node this
    /// transaction read makes the commit fail: so what the transaction
    /// read is where a wait on those watches can start.
    pub fn watch_and_write_many(
        &mut self,
        watches: &[(&str, &str)],
        items: &[(&str, &[u8])],
    ) -> Result<()> {
        let mut requests = super::watches::watch_requests(watches)?;
        requests.extend(write_requests(items)?);
        let (engine, id) = (&mut self.scope.client.scope, self.scope.id);
        let outside = watches.len();
        engine
            .request_many_routed(&requests, |i| if i < outside { 0 } else { id })?
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
    /// way, e.g. by [`Client::start_transaction_and_read`]. When `f`
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

    /// [`run`](Self::run) for a body that starts from the values of
    /// `paths`, which this transaction has already read as `values` (see
    /// [`Client::start_transaction_and_read`]): the first run gets those,
    /// and a run after EAGAIN gets them read again in its fresh
    /// transaction (one round trip more, only then).
    pub fn run_reading<T, E: From<Error>>(
        self,
        paths: &[&str],
        values: Vec<Option<Vec<u8>>>,
        mut f: impl FnMut(&mut Transaction<'_>, Vec<Option<Vec<u8>>>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut first = Some(values);
        self.run(|tx| {
            let values = match first.take() {
                Some(values) => values,
                None => tx.read_many(paths)?,
            };
            f(tx, values)
        })
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

impl Client {
    /// Starts a transaction and reads `paths` inside it, in one round trip
    /// on a socket: the reads ride behind TRANSACTION_START with the id the
    /// daemon will most likely give it (one more than the last transaction
    /// started on this connection, 1 on a fresh one: both xenstored of Xen
    /// 4.17 and this project's number a connection's transactions so).
    /// When START's reply names another id, the reads (which then failed
    /// without touching anything) are sent again with it: one more round
    /// trip, never a wrong value. Over the xenbus device, which takes one
    /// request at a time, it is always START and then the reads. Missing
    /// nodes are `None`; the first failure, in order, is returned and the
    /// transaction aborted.
    ///
    /// Every value read is part of what the commit checks, so a caller can
    /// act on them (open a device, say) and publish the outcome in the same
    /// transaction, knowing that a toolstack that rewrote one meanwhile
    /// makes the commit fail with EAGAIN.
    pub fn start_transaction_and_read(
        &mut self,
        paths: &[&str],
    ) -> Result<(Transaction<'_>, Vec<Option<Vec<u8>>>)> {
        let (id, outcomes) = self.speculative_start(paths, false)?;
        let mut tx = Transaction::new(self, id);
        let values = match outcomes {
            Some(outcomes) => outcomes
                .into_iter()
                .map(not_found_as_none)
                .collect::<Result<Vec<_>>>()?,
            None => tx.read_many(paths)?,
        };
        Ok((tx, values))
    }

    /// [`transaction`](Self::transaction) for a body that starts from the
    /// values of `paths`, read inside the transaction in the same round
    /// trip as its START ([`start_transaction_and_read`](Self::start_transaction_and_read))
    /// and read again before each re-run after EAGAIN.
    pub fn transaction_reading<T, E: From<Error>>(
        &mut self,
        paths: &[&str],
        f: impl FnMut(&mut Transaction<'_>, Vec<Option<Vec<u8>>>) -> Result<T, E>,
    ) -> Result<T, E> {
        let (tx, values) = self.start_transaction_and_read(paths)?;
        tx.run_reading(paths, values, f)
    }

    /// TRANSACTION_START with the reads of `paths` (and, with `commit`, the
    /// commit) pipelined behind it under the likely id: the id START gave,
    /// and the outcomes of the requests behind it when the guess was right
    /// (`None` when it was wrong or nothing was pipelined).
    pub(super) fn speculative_start(
        &mut self,
        paths: &[&str],
        commit: bool,
    ) -> Result<(u32, Option<Outcomes>)> {
        let engine = &mut self.scope;
        let Some(guess) = engine.likely_next_tx_id() else {
            let reply = engine.request(MsgType::TransactionStart, 0, b"\0".to_vec(), None)?;
            return Ok((engine.started_tx_id(&reply)?, None));
        };
        let mut requests = vec![(MsgType::TransactionStart, b"\0".to_vec(), "")];
        requests.extend(path_requests(MsgType::Read, paths)?);
        if commit {
            requests.push((
                MsgType::TransactionEnd,
                wire::transaction_end_payload(true),
                "",
            ));
        }
        let mut outcomes =
            engine.request_many_routed(&requests, |i| if i == 0 { 0 } else { guess })?;
        let rest = outcomes.split_off(1);
        let started = outcomes.pop().expect("one outcome per request")?;
        let id = engine.started_tx_id(&started)?;
        Ok((id, (id == guess).then_some(rest)))
    }
}

/// A TRANSACTION_END reply must be "OK".
pub(super) fn check_end_reply(reply: &[u8]) -> Result<()> {
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
