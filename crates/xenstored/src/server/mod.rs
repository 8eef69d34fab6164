//! The event loop: one thread, one epoll instance, non-blocking sockets.
//!
//! Each connection has an input buffer (bytes read, not yet handled) and an
//! output buffer (frames queued, not yet written). Requests are handled one
//! at a time to completion, so a watch event is queued on every watcher's
//! output before the next request runs: events reach each connection in the
//! order the changes happened, without locks.
//!
//! Fairness and bounds: a connection has at most [`BATCH`] requests handled
//! per turn; a guest with `outstanding` unread replies is not read from until
//! it catches up; input beyond [`INPUT_LIMIT`] is left in the socket; a
//! connection whose unread output passes [`OUTPUT_LIMIT`] is dropped; a frame
//! announcing more than the protocol's payload limit disconnects its sender.

mod conn;
mod output;

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};

use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, EventData, EventFlags};
use xenstore::wire::{Message, HEADER_SIZE, PAYLOAD_MAX};

use crate::dispatch::{self, Session, State};
use crate::trace::Trace;
use crate::watch::ConnId;
use conn::{live, send, Conn};

/// Requests handled for one connection before others get a turn.
const BATCH: usize = 64;
/// Unhandled input buffered per connection before reading pauses.
const INPUT_LIMIT: usize = 64 * 1024;
/// Unread output per connection before the daemon gives up on the reader.
const OUTPUT_LIMIT: usize = 16 * 1024 * 1024;
/// Room made in a connection's input buffer before each read: one largest
/// frame. Kept small because every idle connection holds it.
const READ_CHUNK: usize = HEADER_SIZE + PAYLOAD_MAX;

const STOP_TOKEN: u64 = 0;
const LISTENER_BASE: u64 = 1;
const CONN_BASE: u64 = 1 << 32;

/// A listening socket and who its connections are.
pub struct Listener {
    pub listener: UnixListener,
    pub domid: u32,
    pub privileged: bool,
}

/// The daemon's loop and everything it owns.
pub struct Server {
    epoll: OwnedFd,
    /// Read end of the stop channel; kept open while it is registered.
    _stop: UnixStream,
    listeners: Vec<Listener>,
    conns: Vec<Option<Conn>>,
    free_slots: Vec<ConnId>,
    state: State,
    trace: Option<Trace>,
    ready: Vec<ConnId>,
    dirty: Vec<ConnId>,
    doomed: Vec<ConnId>,
    /// Some listener stopped accepting for lack of descriptors.
    listeners_paused: bool,
}

impl Server {
    /// Registers the listeners and the stop socket (readable = stop).
    pub fn new(
        listeners: Vec<Listener>,
        stop: UnixStream,
        state: State,
        trace: Option<Trace>,
    ) -> io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        stop.set_nonblocking(true)?;
        epoll::add(
            &epoll,
            &stop,
            EventData::new_u64(STOP_TOKEN),
            EventFlags::IN,
        )?;
        for (i, l) in listeners.iter().enumerate() {
            l.listener.set_nonblocking(true)?;
            epoll::add(
                &epoll,
                &l.listener,
                EventData::new_u64(LISTENER_BASE + i as u64),
                EventFlags::IN,
            )?;
        }
        Ok(Server {
            epoll,
            _stop: stop,
            listeners,
            conns: Vec::new(),
            free_slots: Vec::new(),
            state,
            trace,
            ready: Vec::new(),
            dirty: Vec::new(),
            doomed: Vec::new(),
            listeners_paused: false,
        })
    }

    /// Serves until the stop socket becomes readable (or closes).
    pub fn run(mut self) -> io::Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            events.clear();
            let timeout = if self.ready.is_empty() {
                None
            } else {
                Some(&zero)
            };
            match epoll::wait(&self.epoll, spare_capacity(&mut events), timeout) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            for event in &events {
                let token = event.data.u64();
                if token == STOP_TOKEN {
                    return Ok(());
                } else if token < CONN_BASE {
                    self.accept_all((token - LISTENER_BASE) as usize);
                } else {
                    self.on_conn_event((token - CONN_BASE) as ConnId, event.flags);
                }
            }
            self.process_ready();
            self.flush_dirty();
            self.close_doomed();
            if let Some(trace) = &mut self.trace {
                trace.flush();
            }
        }
    }

    fn accept_all(&mut self, index: usize) {
        let Some(l) = self.listeners.get(index) else {
            return;
        };
        let (domid, privileged) = (l.domid, l.privileged);
        loop {
            let stream = match l.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // Out of descriptors (or memory): the connection waits
                    // in the backlog. Stop polling the listener, which would
                    // stay readable and spin the loop, until one closes.
                    let _ = epoll::modify(
                        &self.epoll,
                        &l.listener,
                        EventData::new_u64(LISTENER_BASE + index as u64),
                        EventFlags::empty(),
                    );
                    self.listeners_paused = true;
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.free_slots.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if epoll::add(
                &self.epoll,
                &stream,
                EventData::new_u64(CONN_BASE + id as u64),
                EventFlags::IN | EventFlags::RDHUP,
            )
            .is_err()
            {
                self.free_slots.push(id);
                continue;
            }
            if let Some(trace) = &mut self.trace {
                trace.connection(id, domid, "CONNECT");
            }
            self.conns[id] = Some(Conn {
                stream,
                session: Session::new(id, domid, privileged),
                input: Vec::new(),
                input_start: 0,
                output: Vec::new(),
                output_start: 0,
                queued_total: 0,
                written_total: 0,
                reply_ends: VecDeque::new(),
                interest: EventFlags::IN | EventFlags::RDHUP,
                queued_for_processing: false,
                dirty: false,
                eof: false,
                gone: false,
                closing: false,
            });
        }
    }

    fn conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        live(&mut self.conns, id)
    }

    fn doom(&mut self, id: ConnId) {
        if let Some(conn) = self.conn(id) {
            conn.closing = true;
            self.doomed.push(id);
        }
    }

    fn on_conn_event(&mut self, id: ConnId, flags: EventFlags) {
        if flags.intersects(EventFlags::HUP | EventFlags::ERR) {
            // The peer is gone for good. epoll keeps reporting this whatever
            // we ask for, so the connection must finish (what it sent is
            // still handled) or close now — even if it was paused.
            if let Some(conn) = self.conn(id) {
                conn.eof = true;
                conn.gone = true;
            }
            self.schedule(id);
        }
        if flags.intersects(EventFlags::OUT) {
            self.mark_dirty(id);
        }
        if flags.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR | EventFlags::RDHUP)
        {
            self.read_input(id);
        }
    }

    fn mark_dirty(&mut self, id: ConnId) {
        if let Some(conn) = self.conn(id) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    fn read_input(&mut self, id: ConnId) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        let mut eof = false;
        while conn.pending_input().len() < INPUT_LIMIT {
            if conn.input_start > 0 && conn.input_start == conn.input.len() {
                conn.input.clear();
                conn.input_start = 0;
            }
            conn.input.reserve(READ_CHUNK);
            let room = conn.input.capacity() - conn.input.len();
            match rustix::io::read(&conn.stream, spare_capacity(&mut conn.input)) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                // A short read drained the socket: skip the read that would
                // only say EAGAIN (epoll is level-triggered and reports any
                // later data).
                Ok(n) if n < room => break,
                Ok(_) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        conn.eof |= eof;
        // At end of input, requests already received are still answered
        // (a client may half-close and then read its replies).
        if eof || conn.has_complete_frame() {
            self.schedule(id);
        }
    }

    fn schedule(&mut self, id: ConnId) {
        if let Some(conn) = self.conn(id) {
            if !conn.queued_for_processing {
                conn.queued_for_processing = true;
                self.ready.push(id);
            }
        }
    }

    fn process_ready(&mut self) {
        let ready = std::mem::take(&mut self.ready);
        for id in ready {
            if let Some(conn) = self.conn(id) {
                conn.queued_for_processing = false;
            }
            self.process(id);
            self.update_interest(id);
        }
    }

    /// Handles up to [`BATCH`] complete requests of one connection.
    fn process(&mut self, id: ConnId) {
        let outstanding = self.state.quotas.outstanding;
        for _ in 0..BATCH {
            let Some(conn) = live(&mut self.conns, id) else {
                return;
            };
            if conn.outstanding_full(outstanding) {
                break;
            }
            let message = match Message::parse(conn.pending_input()) {
                Ok(Some((message, used))) => {
                    conn.input_start += used;
                    message
                }
                Ok(None) => break,
                Err(_) => {
                    if let Some(trace) = &mut self.trace {
                        trace.connection(id, conn.session.domid, "MALFORMED");
                    }
                    self.doom(id);
                    return;
                }
            };
            if let Some(trace) = &mut self.trace {
                trace.message("IN ", id, conn.session.domid, &message);
            }
            let outcome = dispatch::handle(&mut self.state, &mut conn.session, &message);
            self.deliver(id, outcome);
        }
        let Some(conn) = self.conn(id) else {
            return;
        };
        if conn.input_start == conn.input.len() {
            conn.input.clear();
            conn.input_start = 0;
        } else if conn.input_start > INPUT_LIMIT {
            conn.input.drain(..conn.input_start);
            conn.input_start = 0;
        }
        let runnable = conn.has_complete_frame() && !conn.outstanding_full(outstanding);
        if runnable {
            self.schedule(id);
        } else if conn.gone || conn.finished() {
            self.doom(id);
        }
    }

    fn close_doomed(&mut self) {
        let doomed = std::mem::take(&mut self.doomed);
        if !doomed.is_empty() && self.listeners_paused {
            self.listeners_paused = false;
            for (i, l) in self.listeners.iter().enumerate() {
                let _ = epoll::modify(
                    &self.epoll,
                    &l.listener,
                    EventData::new_u64(LISTENER_BASE + i as u64),
                    EventFlags::IN,
                );
            }
        }
        for id in doomed {
            let Some(mut conn) = self.conns.get_mut(id).and_then(Option::take) else {
                continue;
            };
            // Best effort: a released guest may still read its last replies.
            let _ = send(&conn.stream, &conn.output[conn.output_start..]);
            conn.session.reset(&mut self.state);
            let _ = epoll::delete(&self.epoll, &conn.stream);
            if let Some(trace) = &mut self.trace {
                trace.connection(id, conn.session.domid, "CLOSE");
            }
            self.free_slots.push(id);
        }
    }
}
