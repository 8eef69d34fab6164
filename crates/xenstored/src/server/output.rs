//! The output side of the loop: replies and watch events queued on
//! connections, fan-out of each change to the watchers allowed to see it,
//! writing, and the epoll interest that follows from what is queued.

use rustix::event::epoll::{self, EventData, EventFlags};
use xenstore::wire::{Header, MsgType, PAYLOAD_MAX};

use super::conn::{live, send};
use super::{Server, CONN_BASE, INPUT_LIMIT, OUTPUT_LIMIT};
use crate::dispatch::Outcome;
use crate::watch::{Change, ConnId};

impl Server {
    /// Queues a request's reply and frames on its connection, its changes'
    /// events on their watchers, and closes a released domain's connections.
    pub(super) fn deliver(&mut self, from: ConnId, outcome: Outcome) {
        for change in &outcome.changes {
            self.fan_out(change);
        }
        if let Some(conn) = live(&mut self.conns, from) {
            let domid = conn.session.domid;
            let privileged = conn.session.privileged;
            for (i, frame) in outcome.frames.iter().enumerate() {
                conn.queue(frame.header(), &[&frame.payload]);
                if i == 0 && !privileged {
                    conn.reply_ends.push_back(conn.queued_total);
                }
                if let Some(trace) = &mut self.trace {
                    trace.message("OUT", from, domid, frame);
                }
            }
        }
        self.after_queue(from);
        if let Some(domid) = outcome.released {
            let victims: Vec<ConnId> = self
                .conns
                .iter()
                .enumerate()
                .filter_map(|(id, c)| c.as_ref().map(|c| (id, c)))
                .filter(|(_, c)| !c.session.privileged && c.session.domid == domid)
                .map(|(id, _)| id)
                .collect();
            for id in victims {
                self.doom(id);
            }
        }
    }

    /// Queues `change`'s watch events on every connection allowed to see it.
    fn fan_out(&mut self, change: &Change) {
        let conns = &mut self.conns;
        let state = &self.state;
        let trace = &mut self.trace;
        let mut touched: Vec<ConnId> = Vec::new();
        state.watches.matches(change, |sub, path| {
            let Some(conn) = conns.get_mut(sub.conn).and_then(Option::as_mut) else {
                return;
            };
            if conn.closing {
                return;
            }
            let caller = state.caller(conn.session.domid, conn.session.privileged);
            if !change.visible_to(&caller) {
                return;
            }
            let len = path.len() + sub.token.len() + 2;
            if len > PAYLOAD_MAX {
                return;
            }
            let header = Header {
                msg_type: MsgType::WatchEvent as u32,
                req_id: 0,
                tx_id: 0,
                len: len as u32,
            };
            conn.queue(
                header,
                &[path.as_bytes(), b"\0", sub.token.as_bytes(), b"\0"],
            );
            if let Some(trace) = trace {
                trace.event(sub.conn, conn.session.domid, path, &sub.token);
            }
            touched.push(sub.conn);
        });
        // Send each change's events now rather than at the end of the turn:
        // watchers start reading while the daemon is still fanning out.
        for id in touched {
            self.after_queue(id);
            self.flush(id);
        }
    }

    /// Marks a connection with new output for flushing, or drops it when
    /// its reader has fallen too far behind.
    fn after_queue(&mut self, id: ConnId) {
        let Some(conn) = live(&mut self.conns, id) else {
            return;
        };
        if conn.pending_output() > OUTPUT_LIMIT {
            if let Some(trace) = &mut self.trace {
                trace.connection(id, conn.session.domid, "SLOW-READER");
            }
            self.doom(id);
        } else {
            self.mark_dirty(id);
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            if let Some(conn) = self.conn(id) {
                conn.dirty = false;
            }
            self.flush(id);
            self.update_interest(id);
        }
    }

    pub(super) fn flush(&mut self, id: ConnId) {
        let outstanding = self.state.quotas.outstanding;
        let Some(conn) = self.conn(id) else {
            return;
        };
        let was_full = conn.outstanding_full(outstanding);
        let mut failed = false;
        while conn.output_start < conn.output.len() {
            match send(&conn.stream, &conn.output[conn.output_start..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    conn.output_start += n;
                    conn.written_total += n as u64;
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        while conn
            .reply_ends
            .front()
            .is_some_and(|end| *end <= conn.written_total)
        {
            conn.reply_ends.pop_front();
        }
        if conn.output_start == conn.output.len() {
            conn.output.clear();
            conn.output_start = 0;
            if conn.output.capacity() > 1024 * 1024 {
                conn.output.shrink_to(64 * 1024);
            }
        }
        let resume = was_full && !conn.outstanding_full(outstanding) && conn.has_complete_frame();
        if failed || conn.finished() {
            self.doom(id);
        } else if resume {
            self.schedule(id);
        }
    }

    /// Asks epoll for input unless the connection is paused, and for output
    /// while some is queued.
    pub(super) fn update_interest(&mut self, id: ConnId) {
        let outstanding = self.state.quotas.outstanding;
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if conn.closing {
            return;
        }
        let mut wanted = EventFlags::empty();
        if !conn.eof
            && conn.pending_input().len() < INPUT_LIMIT
            && !conn.outstanding_full(outstanding)
        {
            wanted |= EventFlags::IN | EventFlags::RDHUP;
        }
        if conn.pending_output() > 0 {
            wanted |= EventFlags::OUT;
        }
        if wanted != conn.interest
            && epoll::modify(
                &self.epoll,
                &conn.stream,
                EventData::new_u64(CONN_BASE + id as u64),
                wanted,
            )
            .is_ok()
        {
            conn.interest = wanted;
        }
    }
}
