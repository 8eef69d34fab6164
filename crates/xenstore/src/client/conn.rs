//! The byte stream to the daemon and frame reassembly on top of it.
//!
//! Frames are read through our own buffer rather than `read_exact` so that a
//! timeout while waiting for a watch event can never leave half a frame
//! consumed: the stream stays in sync whatever the deadline.

use crate::wire::{FrameError, Message, HEADER_SIZE};
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

    /// Sends bytes holding one or more whole frames.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.stream {
            Stream::Socket(s) => s.write_all(bytes),
            // Linux's xenbus device takes one message per `write()` and
            // drops whatever follows the first complete message in the same
            // buffer: a pipelined batch is written one frame per call (the
            // device still lets several requests be outstanding).
            Stream::Device(f) => frames(bytes).try_for_each(|frame| f.write_all(frame)),
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

/// The frames in `bytes` (whole encoded messages, back to back), each with
/// its header, by the length field of each header. Bytes that do not end a
/// whole frame come last, as they are.
fn frames(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = rest
            .get(HEADER_SIZE - 4..HEADER_SIZE)
            .map(|raw| u32::from_ne_bytes(raw.try_into().expect("4 bytes")) as usize);
        let end = len.map_or(rest.len(), |len| (HEADER_SIZE + len).min(rest.len()));
        let (frame, tail) = rest.split_at(end);
        rest = tail;
        Some(frame)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MsgType;

    #[test]
    fn a_batch_splits_into_its_frames() {
        let messages = [
            Message::new(MsgType::Read, 1, 7, b"/a\0".to_vec()),
            Message::new(MsgType::Write, 2, 7, b"/b\0value".to_vec()),
            Message::new(MsgType::TransactionEnd, 3, 7, b"T\0".to_vec()),
            Message::new(MsgType::Watch, 4, 0, Vec::new()),
        ];
        let encoded: Vec<Vec<u8>> = messages.iter().map(Message::encode).collect();
        let batch = encoded.concat();
        let split: Vec<&[u8]> = frames(&batch).collect();
        assert_eq!(split, encoded.iter().map(Vec::as_slice).collect::<Vec<_>>());
        // A truncated tail is passed on as it is, never lost or panicked on.
        let split: Vec<&[u8]> = frames(&batch[..batch.len() - 1]).collect();
        assert_eq!(split.len(), 4);
        assert_eq!(split[3], &encoded[3][..encoded[3].len() - 1]);
        assert_eq!(frames(&batch[..5]).collect::<Vec<_>>(), vec![&batch[..5]]);
        assert_eq!(frames(&[]).count(), 0);
    }
}
