//! The daemon without sockets, for coverage-guided fuzzing
//! (`crates/xenstored/fuzz`): byte streams from a few connections are cut
//! into frames exactly as the server cuts them, each frame is dispatched,
//! and after every request the invariants that must hold whatever a client
//! sends are checked — a violation panics, which the fuzzer reports.
//!
//! Built only with the `fuzzing` feature; nothing else uses it.

use xenstore::wire::{self, Message, MsgType, PAYLOAD_MAX};

use crate::config::Quotas;
use crate::dispatch::{self, Session, State};

/// The connections of a fuzz run: dom0 and two guests (with their homes
/// made and given to them, as a toolstack would).
pub struct Engine {
    state: State,
    sessions: Vec<Session>,
}

/// Who each of [`Engine`]'s connections is: `(domid, privileged)`.
pub const CONNECTIONS: [(u32, bool); 3] = [(0, true), (5, false), (6, false)];

impl Engine {
    /// A fresh daemon state with small quotas, so that a short input can
    /// reach every limit.
    pub fn new() -> Self {
        let quotas = Quotas {
            entries: 40,
            entry_size: 512,
            watches: 8,
            transactions: 3,
            outstanding: 16,
            path_len: 256,
        };
        let mut engine = Engine {
            state: State::new(quotas),
            sessions: CONNECTIONS
                .iter()
                .enumerate()
                .map(|(id, &(domid, privileged))| Session::new(id, domid, privileged))
                .collect(),
        };
        for &(domid, _) in &CONNECTIONS[1..] {
            let home = format!("/local/domain/{domid}");
            engine.request(0, MsgType::Mkdir, &wire::path_payload(&home));
            let mut perms = wire::path_payload(&home);
            perms.extend_from_slice(format!("n{domid}\0").as_bytes());
            engine.request(0, MsgType::SetPerms, &perms);
        }
        engine
    }

    fn request(&mut self, conn: usize, t: MsgType, payload: &[u8]) {
        self.dispatch(conn, &Message::new(t, 1, 0, payload.to_vec()));
    }

    /// Feeds `bytes` to connection `conn` (modulo the number of
    /// connections) as the server would: whole frames are dispatched in
    /// order; a frame the server refuses (oversized) ends this input, as
    /// the server disconnects its sender; a partial frame is dropped.
    pub fn feed(&mut self, conn: usize, bytes: &[u8]) {
        let conn = conn % self.sessions.len();
        let mut rest = bytes;
        while let Ok(Some((message, used))) = Message::parse(rest) {
            self.dispatch(conn, &message);
            rest = &rest[used..];
        }
    }

    /// One request through [`dispatch::handle`], then the checks.
    pub fn dispatch(&mut self, conn: usize, message: &Message) {
        let outcome = dispatch::handle(&mut self.state, &mut self.sessions[conn], message);
        let reply = outcome.frames.first().expect("every request has a reply");
        assert_eq!(reply.req_id, message.req_id, "reply to another request");
        assert_eq!(reply.tx_id, message.tx_id, "reply in another transaction");
        let kind = reply.kind();
        assert!(
            kind == Some(MsgType::Error) || reply.msg_type == message.msg_type,
            "reply of type {} to a request of type {}",
            reply.msg_type,
            message.msg_type
        );
        if kind == Some(MsgType::Error) {
            assert!(
                wire::parse_error_payload(&reply.payload).is_some(),
                "error reply without an errno name: {:?}",
                reply.payload
            );
        }
        for frame in &outcome.frames {
            assert!(
                frame.payload.len() <= PAYLOAD_MAX,
                "a {}-byte frame: more than a client may accept",
                frame.payload.len()
            );
        }
        if let Some(domid) = outcome.released {
            for session in self.sessions.iter_mut() {
                if !session.privileged && session.domid == domid {
                    session.reset(&mut self.state);
                }
            }
        }
        if let Err(broken) = self.state.store.check() {
            panic!("store inconsistent after {message:?}: {broken}");
        }
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}
