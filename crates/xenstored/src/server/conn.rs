//! One client connection: its socket, its protocol session and its input
//! and output buffers, with the bookkeeping of unread replies that the
//! outstanding-requests quota needs.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;

use rustix::event::epoll::EventFlags;
use xenstore::wire::{Header, HEADER_SIZE, PAYLOAD_MAX};

use crate::dispatch::Session;
use crate::watch::ConnId;

/// A client connection; see the fields for what each buffer holds.
pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) session: Session,
    pub(super) input: Vec<u8>,
    pub(super) input_start: usize,
    pub(super) output: Vec<u8>,
    pub(super) output_start: usize,
    /// Bytes ever queued / written, to tell which replies are still unread.
    pub(super) queued_total: u64,
    pub(super) written_total: u64,
    /// `queued_total` at the end of each reply not yet fully written (guests
    /// only: the outstanding-requests quota).
    pub(super) reply_ends: VecDeque<u64>,
    pub(super) interest: EventFlags,
    pub(super) queued_for_processing: bool,
    pub(super) dirty: bool,
    /// The peer will send nothing more (it half-closed or closed): close
    /// once its requests are answered and the answers written.
    pub(super) eof: bool,
    /// The peer closed completely: nothing can be written to it either.
    pub(super) gone: bool,
    pub(super) closing: bool,
}

impl Conn {
    pub(super) fn pending_input(&self) -> &[u8] {
        &self.input[self.input_start..]
    }

    pub(super) fn pending_output(&self) -> usize {
        self.output.len() - self.output_start
    }

    pub(super) fn has_complete_frame(&self) -> bool {
        let pending = self.pending_input();
        match pending.first_chunk::<HEADER_SIZE>() {
            Some(raw) => {
                let len = Header::decode(raw).len as usize;
                // An oversize header counts as complete: handling it
                // disconnects the sender.
                len > PAYLOAD_MAX || pending.len() >= HEADER_SIZE + len
            }
            None => false,
        }
    }

    /// Half-closed, every request answered and every answer written.
    pub(super) fn finished(&self) -> bool {
        self.eof && !self.has_complete_frame() && self.pending_output() == 0
    }

    pub(super) fn outstanding_full(&self, limit: usize) -> bool {
        !self.session.privileged && self.reply_ends.len() >= limit
    }

    pub(super) fn queue(&mut self, header: Header, parts: &[&[u8]]) {
        self.output.extend_from_slice(&header.encode());
        for part in parts {
            self.output.extend_from_slice(part);
        }
        self.queued_total += (HEADER_SIZE + header.len as usize) as u64;
    }
}

/// The connection in slot `id`, unless it is gone or being closed.
pub(super) fn live(conns: &mut [Option<Conn>], id: ConnId) -> Option<&mut Conn> {
    conns
        .get_mut(id)
        .and_then(Option::as_mut)
        .filter(|c| !c.closing)
}

/// Writes without raising SIGPIPE when the peer is gone (the daemon may be
/// embedded in a program that does not ignore it).
pub(super) fn send(stream: &UnixStream, bytes: &[u8]) -> rustix::io::Result<usize> {
    rustix::net::send(stream, bytes, rustix::net::SendFlags::NOSIGNAL)
}
