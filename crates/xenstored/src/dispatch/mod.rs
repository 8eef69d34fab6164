//! One request in, one reply (and the watch events it causes) out:
//! privilege and transaction lookup, and the message-type table of the C
//! daemon's `process_message`. No I/O happens here.
//!
//! | module | job |
//! |---|---|
//! | `mod.rs` | shared and per-connection state, the table, node requests |
//! | `payload` | payload parsing (`onearg`, string lists, domids) |
//! | `view` | the live store or a transaction as one `Tree` |
//! | `watches` | WATCH, UNWATCH |
//! | `transactions` | TRANSACTION_START, TRANSACTION_END |
//! | `domain_requests` | INTRODUCE, RELEASE, SET_TARGET, domain checks |

mod domain_requests;
mod payload;
mod transactions;
mod view;
mod watches;

use std::collections::{HashMap, HashSet};

use xenstore::path::XsPath;
use xenstore::perms::Perms;
use xenstore::wire::{self, Errno, Message, MsgType};

use crate::access::Caller;
use crate::config::{Quotas, PERMS_PER_NODE};
use crate::domains::Domains;
use crate::ops;
use crate::store::{Direct, Overlay, Store, TxView};
use crate::watch::{Change, ConnId, WatchIndex};
use domain_requests::{control, known_domain};
use payload::{ack, below_any_home, one_arg, parse_domid, strings, utf8};
use view::View;

/// Everything shared by all connections.
#[derive(Debug)]
pub struct State {
    pub store: Store,
    pub watches: WatchIndex,
    pub domains: Domains,
    pub quotas: Quotas,
    /// Watches per domain, for the watches quota.
    watch_counts: HashMap<u32, usize>,
    /// Open transactions per unprivileged domain, all its connections
    /// together, for the transactions quota.
    tx_counts: HashMap<u32, usize>,
}

impl State {
    pub fn new(quotas: Quotas) -> Self {
        State {
            store: Store::new(),
            watches: WatchIndex::default(),
            domains: Domains::default(),
            quotas,
            watch_counts: HashMap::new(),
            tx_counts: HashMap::new(),
        }
    }

    /// Adds `delta` to `domid`'s open transactions.
    fn count_transactions(&mut self, domid: u32, delta: isize) {
        let count = self.tx_counts.entry(domid).or_insert(0);
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            self.tx_counts.remove(&domid);
        }
    }

    /// The identity of a connection of domain `domid`.
    pub fn caller(&self, domid: u32, privileged: bool) -> Caller {
        Caller {
            domid,
            privileged,
            target: self.domains.target_of(domid),
        }
    }
}

/// The protocol state of one connection.
#[derive(Debug)]
pub struct Session {
    pub id: ConnId,
    pub domid: u32,
    pub privileged: bool,
    /// `(absolute path, token)` of each watch, for EEXIST and cleanup.
    watches: HashSet<(Box<str>, Box<str>)>,
    transactions: HashMap<u32, Overlay>,
    last_tx_id: u32,
}

impl Session {
    pub fn new(id: ConnId, domid: u32, privileged: bool) -> Self {
        Session {
            id,
            domid,
            privileged,
            watches: HashSet::new(),
            transactions: HashMap::new(),
            last_tx_id: 0,
        }
    }

    /// Drops this connection's watches and transactions (disconnect,
    /// RESET_WATCHES).
    pub fn reset(&mut self, state: &mut State) {
        for (path, token) in self.watches.drain() {
            state.watches.remove(&path, self.id, &token);
            if let Some(count) = state.watch_counts.get_mut(&self.domid) {
                *count = count.saturating_sub(1);
            }
        }
        if !self.privileged {
            state.count_transactions(self.domid, -(self.transactions.len() as isize));
        }
        self.transactions.clear();
    }
}

/// What handling one request produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Changes whose watches fire now (queued before `frames`, as the C
    /// daemon fires watches before it acknowledges).
    pub changes: Vec<Change>,
    /// Frames for the requesting connection: the reply, and after a WATCH
    /// the watch's first event.
    pub frames: Vec<Message>,
    /// A domain was released: its connections must be closed.
    pub released: Option<u32>,
}

type Reply = Result<Vec<u8>, Errno>;

/// Handles one request of `session`.
pub fn handle(state: &mut State, session: &mut Session, msg: &Message) -> Outcome {
    let mut outcome = Outcome::default();
    let reply = handle_inner(state, session, msg, &mut outcome);
    let kind = msg
        .kind()
        .filter(|_| reply.is_ok())
        .unwrap_or(MsgType::Error);
    let payload = reply.unwrap_or_else(wire::error_payload);
    outcome
        .frames
        .insert(0, Message::new(kind, msg.req_id, msg.tx_id, payload));
    outcome
}

fn handle_inner(
    state: &mut State,
    session: &mut Session,
    msg: &Message,
    out: &mut Outcome,
) -> Reply {
    let kind = match msg.kind() {
        Some(MsgType::WatchEvent | MsgType::Error) | None => return Err(Errno::ENOSYS),
        Some(kind) => kind,
    };
    let privileged_only = kind.is_privileged_only() || kind == MsgType::IsDomainIntroduced;
    if privileged_only && !session.privileged {
        return Err(Errno::EACCES);
    }
    let uses_tx = !matches!(kind, MsgType::Watch | MsgType::Unwatch);
    let tx_id = if uses_tx { msg.tx_id } else { 0 };
    if tx_id != 0 && !session.transactions.contains_key(&tx_id) {
        return Err(Errno::ENOENT);
    }
    let caller = state.caller(session.domid, session.privileged);
    let payload = msg.payload.as_slice();
    let mut request = Request {
        state,
        session,
        caller,
        tx_id,
        out,
    };
    match kind {
        MsgType::Read => request.node_op(payload, |t, c, _, p| ops::read(t, c, p)),
        MsgType::Directory => request.node_op(payload, |t, c, _, p| ops::directory(t, c, p)),
        MsgType::GetPerms => request.get_perms(payload),
        MsgType::Write => request.write(payload),
        MsgType::Mkdir => request.node_op(payload, |t, c, q, p| ops::mkdir(t, c, q, p).map(ack)),
        MsgType::Rm => request.node_op(payload, |t, c, _, p| ops::rm(t, c, p).map(ack)),
        MsgType::SetPerms => request.set_perms(payload),
        MsgType::DirectoryPart => request.directory_part(payload),
        MsgType::Watch => request.watch(payload),
        MsgType::Unwatch => request.unwatch(payload),
        MsgType::TransactionStart => request.transaction_start(),
        MsgType::TransactionEnd => request.transaction_end(payload),
        MsgType::GetDomainPath => {
            let domid = parse_domid(one_arg(payload)?)?;
            Ok(wire::path_payload(XsPath::domain_home(domid).as_str()))
        }
        MsgType::Introduce => request.introduce(payload),
        MsgType::Release => request.release(payload),
        MsgType::IsDomainIntroduced => {
            let domid = parse_domid(one_arg(payload)?)?;
            let answer: &[u8] = if request.state.domains.is_introduced(domid) {
                b"T\0"
            } else {
                b"F\0"
            };
            Ok(answer.to_vec())
        }
        MsgType::Resume => {
            let domid = parse_domid(one_arg(payload)?)?;
            known_domain(request.state, domid).map(ack)
        }
        MsgType::SetTarget => request.set_target(payload),
        MsgType::ResetWatches => {
            request.session.reset(request.state);
            Ok(ack(()))
        }
        MsgType::Control => control(payload),
        MsgType::WatchEvent | MsgType::Error => Err(Errno::ENOSYS),
    }
}

/// One request being handled.
struct Request<'a> {
    state: &'a mut State,
    session: &'a mut Session,
    caller: Caller,
    tx_id: u32,
    out: &'a mut Outcome,
}

impl Request<'_> {
    /// Resolves a request path for this caller: relative paths go below
    /// its home; special paths only where `allow_special`; every caller's
    /// path, counted below any domain's home (the whole path elsewhere), is
    /// limited by the path-length quota — dom0 included, as the C daemon of
    /// Xen 4.17 checks it in `is_valid_nodename` for every connection
    /// (measured on real Xen: `tests/xen`, `xs-suites-real`).
    fn path(&self, raw: &[u8], allow_special: bool) -> Result<XsPath, Errno> {
        let path = XsPath::resolve(utf8(raw)?, self.session.domid).map_err(|_| Errno::EINVAL)?;
        if path.is_special() && !allow_special {
            return Err(Errno::EINVAL);
        }
        if below_any_home(path.as_str()).len() > self.state.quotas.path_len {
            return Err(Errno::EINVAL);
        }
        Ok(path)
    }

    /// Runs `op` on the live store or the request's transaction. A
    /// request that needed more nodes than the transaction-node quota
    /// leaves is ENOSPC, whatever `op` answered (see [`TxView::refused`]).
    fn run(&mut self, op: impl FnOnce(&mut View<'_>, &Caller, &Quotas) -> Reply) -> Reply {
        let quotas = self.state.quotas;
        if self.tx_id == 0 {
            let mut changes = Vec::new();
            let result = op(
                &mut View::Direct(Direct::new(&mut self.state.store, &mut changes)),
                &self.caller,
                &quotas,
            );
            self.out.changes.append(&mut changes);
            result
        } else {
            let overlay = self
                .session
                .transactions
                .get_mut(&self.tx_id)
                .ok_or(Errno::ENOENT)?;
            let mut view = View::Tx(TxView::new(&self.state.store, overlay));
            let reply = op(&mut view, &self.caller, &quotas);
            match view {
                View::Tx(tx) if tx.refused() => Err(Errno::ENOSPC),
                _ => reply,
            }
        }
    }

    /// A request whose payload is one path.
    fn node_op(
        &mut self,
        payload: &[u8],
        op: impl FnOnce(&mut View<'_>, &Caller, &Quotas, &str) -> Reply,
    ) -> Reply {
        let path = self.path(one_arg(payload)?, false)?;
        self.run(|t, c, q| op(t, c, q, path.as_str()))
    }

    fn get_perms(&mut self, payload: &[u8]) -> Reply {
        let path = self.path(one_arg(payload)?, true)?;
        self.run(|t, c, _| ops::get_perms(t, c, path.as_str()))
    }

    fn write(&mut self, payload: &[u8]) -> Reply {
        let nul = payload.iter().position(|b| *b == 0).ok_or(Errno::EINVAL)?;
        let path = self.path(&payload[..nul], false)?;
        let value = &payload[nul + 1..];
        self.run(|t, c, q| ops::write(t, c, q, path.as_str(), value).map(ack))
    }

    fn set_perms(&mut self, payload: &[u8]) -> Reply {
        let args = strings(payload);
        if args.len() < 2 {
            return Err(Errno::EINVAL);
        }
        if !self.session.privileged && args.len() - 1 > PERMS_PER_NODE {
            return Err(Errno::ENOSPC);
        }
        let perms = Perms::parse_fields(args[1..].iter().copied()).map_err(|_| Errno::EINVAL)?;
        let path = self.path(args[0], true)?;
        self.run(|t, c, q| ops::set_perms(t, c, q, path.as_str(), perms).map(ack))
    }

    fn directory_part(&mut self, payload: &[u8]) -> Reply {
        let args = strings(payload);
        let [path, offset] = args.as_slice() else {
            return Err(Errno::EINVAL);
        };
        let path = self.path(path, false)?;
        let offset: usize = utf8(offset)?.parse().map_err(|_| Errno::EINVAL)?;
        self.run(|t, c, _| ops::directory_part(t, c, path.as_str(), offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(t: MsgType, tx_id: u32, payload: &[u8]) -> Message {
        Message::new(t, 7, tx_id, payload.to_vec())
    }

    fn reply(state: &mut State, session: &mut Session, msg: Message) -> (u32, Vec<u8>) {
        let out = handle(state, session, &msg);
        let first = &out.frames[0];
        assert_eq!(first.req_id, 7);
        (first.msg_type, first.payload.clone())
    }

    #[test]
    fn unknown_and_reply_only_types_are_enosys() {
        let mut state = State::new(Quotas::default());
        let mut s = Session::new(1, 0, true);
        for t in [15u32, 16, 20, 23, 9999] {
            let msg = Message {
                msg_type: t,
                req_id: 7,
                tx_id: 0,
                payload: vec![],
            };
            assert_eq!(reply(&mut state, &mut s, msg), (16, b"ENOSYS\0".to_vec()));
        }
    }

    #[test]
    fn guests_may_not_use_privileged_types() {
        let mut state = State::new(Quotas::default());
        let mut guest = Session::new(1, 5, false);
        for t in [
            MsgType::Introduce,
            MsgType::Release,
            MsgType::Resume,
            MsgType::SetTarget,
            MsgType::Control,
            MsgType::IsDomainIntroduced,
        ] {
            let got = reply(&mut state, &mut guest, request(t, 0, b"5\0"));
            assert_eq!(got, (16, b"EACCES\0".to_vec()), "{t}");
        }
    }

    #[test]
    fn relative_paths_resolve_to_the_callers_home() {
        let mut state = State::new(Quotas::default());
        let mut dom0 = Session::new(1, 0, true);
        reply(
            &mut state,
            &mut dom0,
            request(MsgType::Write, 0, b"backend/x\0v"),
        );
        assert_eq!(
            &*state.store.get("/local/domain/0/backend/x").unwrap().value,
            b"v"
        );
    }

    #[test]
    fn payload_shape_errors_are_einval() {
        let mut state = State::new(Quotas::default());
        let mut s = Session::new(1, 0, true);
        let einval = (16, b"EINVAL\0".to_vec());
        for (t, p) in [
            (MsgType::Read, &b"/tool"[..]),
            (MsgType::Read, b"/tool\0extra\0"),
            (MsgType::Read, b"/bad//path\0"),
            (MsgType::Read, b"/trailing/\0"),
            (MsgType::Read, b"/sp ace\0"),
            (MsgType::Read, b"@introduceDomain\0"),
            (MsgType::Write, b"/no-nul"),
            (MsgType::SetPerms, b"/tool\0"),
            (MsgType::SetPerms, b"/tool\0x0\0"),
            (MsgType::SetPerms, b"/tool\0r\0"),
            (MsgType::Watch, b"/tool\0"),
            (MsgType::TransactionEnd, b"X\0"),
            (MsgType::GetDomainPath, b"abc\0"),
            (MsgType::DirectoryPart, b"/tool\0"),
        ] {
            assert_eq!(
                reply(&mut state, &mut s, request(t, 0, p)),
                einval,
                "{t} {p:?}"
            );
        }
    }

    #[test]
    fn path_length_quota_counts_below_the_home() {
        assert_eq!(below_any_home("/local/domain/5/a/b"), "a/b");
        assert_eq!(below_any_home("/local/domain/x/a"), "/local/domain/x/a");
        assert_eq!(below_any_home("/tool"), "/tool");
    }

    #[test]
    fn transaction_lifecycle() {
        let mut state = State::new(Quotas::default());
        let mut s = Session::new(1, 0, true);
        let (t, id) = reply(
            &mut state,
            &mut s,
            request(MsgType::TransactionStart, 0, b"\0"),
        );
        assert_eq!(t, MsgType::TransactionStart as u32);
        let id: u32 = std::str::from_utf8(&id[..id.len() - 1])
            .unwrap()
            .parse()
            .unwrap();
        reply(&mut state, &mut s, request(MsgType::Write, id, b"/t\0v"));
        assert!(state.store.get("/t").is_none());
        let (t, _) = reply(
            &mut state,
            &mut s,
            request(MsgType::TransactionEnd, id, b"T\0"),
        );
        assert_eq!(t, MsgType::TransactionEnd as u32);
        assert!(state.store.get("/t").is_some());
        assert_eq!(
            reply(&mut state, &mut s, request(MsgType::Read, id, b"/t\0")),
            (16, b"ENOENT\0".to_vec())
        );
    }
}
