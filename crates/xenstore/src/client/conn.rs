//! The byte stream to the daemon and frame reassembly on top of it.
//!
//! Frames are read through our own buffer rather than `read_exact` so that a
//! timeout while waiting for a watch event can never leave half a frame
//! consumed: the stream stays in sync whatever the deadline.

use crate::wire::{FrameError, Message};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How we reach the daemon: its Unix socket, or the xenbus device a guest
/// kernel (or dom0 without a socket) offers.
#[derive(Debug)]
enum Stream {
    Socket(UnixStream),
    Device(File),
}

/// Bytes read per `read` call; a whole maximum-size frame fits.
const READ_CHUNK: usize = 8192;

pub(crate) struct Connection {
    stream: Stream,
    path: PathBuf,
    /// Received bytes not yet returned as frames start at `consumed`.
    inbox: Vec<u8>,
    consumed: usize,
    scratch: Box<[u8; READ_CHUNK]>,
}

impl std::fmt::Debug for Connection {
    /// The endpoint and the buffered byte count; not the buffers themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("path", &self.path)
            .field("device", &matches!(self.stream, Stream::Device(_)))
            .field("buffered", &(self.inbox.len() - self.consumed))
            .finish()
    }
}

impl Connection {
    pub(crate) fn socket(path: &Path) -> io::Result<Self> {
        Ok(Self::new(Stream::Socket(UnixStream::connect(path)?), path))
    }

    pub(crate) fn device(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Self::new(Stream::Device(file), path))
    }

    fn new(stream: Stream, path: &Path) -> Self {
        Connection {
            stream,
            path: path.to_owned(),
            inbox: Vec::new(),
            consumed: 0,
            scratch: Box::new([0; READ_CHUNK]),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether several requests may be written before their replies are
    /// read. Not on the xenbus device: Linux's takes one message per
    /// `write()` (dropping what follows it in the buffer) and keeps the
    /// request's payload in the file's one message buffer until its xenbus
    /// thread has copied it to the ring, so the next `write()` can overwrite
    /// a request still queued. On real Xen a pipelined transaction's WRITE
    /// reached the daemon with the next WRITE's path (EINVAL) and a
    /// four-node write committed nothing readable (docs/real-xen.md). One
    /// request at a time there, as libxenstore does everywhere.
    pub(crate) fn pipelines(&self) -> bool {
        matches!(self.stream, Stream::Socket(_))
    }

    /// Sends bytes holding one or more whole frames (exactly one on the
    /// device: see [`pipelines`](Self::pipelines)).
    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.stream {
            Stream::Socket(s) => s.write_all(bytes),
            Stream::Device(f) => f.write_all(bytes),
        }
    }

    /// The next frame, waiting until `deadline` (forever when `None`);
    /// `Ok(None)` when the deadline passed first.
    pub(crate) fn recv(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Message>, FrameError> {
        loop {
            if let Some((message, used)) = Message::parse(&self.inbox[self.consumed..])? {
                self.consume(used);
                return Ok(Some(message));
            }
            if let Some(deadline) = deadline {
                if !self.wait_readable(deadline)? {
                    return Ok(None);
                }
            }
            let n = match &mut self.stream {
                Stream::Socket(s) => s.read(&mut self.scratch[..]),
                Stream::Device(f) => f.read(&mut self.scratch[..]),
            };
            match n {
                Ok(0) => {
                    return Err(FrameError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "xenstore daemon closed the connection",
                    )))
                }
                Ok(n) => self.inbox.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn consume(&mut self, used: usize) {
        self.consumed += used;
        if self.consumed == self.inbox.len() {
            self.inbox.clear();
            self.consumed = 0;
        } else if self.consumed > READ_CHUNK {
            self.inbox.drain(..self.consumed);
            self.consumed = 0;
        }
    }

    /// Waits until the stream has data or `deadline` passes.
    fn wait_readable(&self, deadline: Instant) -> io::Result<bool> {
        let fd = match &self.stream {
            Stream::Socket(s) => s.as_fd(),
            Stream::Device(f) => f.as_fd(),
        };
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = Timespec::try_from(remaining)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) if remaining.is_zero() => return Ok(false),
                Ok(0) => continue,
                Ok(_) => return Ok(true),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn only_a_socket_takes_pipelined_requests() {
        // Any character device stands in for /dev/xen/xenbus here.
        let device = Connection::device(Path::new("/dev/null")).unwrap();
        assert!(!device.pipelines(), "{device:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let _listener = UnixListener::bind(&path).unwrap();
        assert!(Connection::socket(&path).unwrap().pipelines());
    }
}
