//! The client's error: which operation on which path failed, and why.

use crate::path::PathError;
use crate::wire::{Errno, MsgType};
use std::fmt;
use std::io;

/// What went wrong, independent of the operation.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The daemon answered with an ERROR reply.
    #[error("{0}")]
    Xenstore(Errno),
    /// The path was refused before sending; the daemon would say EINVAL.
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    /// An argument other than the path was refused before sending.
    #[error("{0}")]
    InvalidArgument(String),
    /// The value read is not UTF-8 text.
    #[error("value is not UTF-8")]
    NotUtf8,
    /// The request would exceed the protocol's payload limit; libxenstore
    /// reports this as E2BIG without sending.
    #[error(
        "request payload of {len} bytes exceeds the limit of {} bytes",
        crate::wire::PAYLOAD_MAX
    )]
    TooLarge { len: usize },
    /// Connecting, reading or writing failed, or the daemon hung up.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The daemon sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// A failed xenstore operation. Displays as `xenstore READ /a/b: ENOENT`.
#[derive(Debug)]
pub struct Error {
    op: &'static str,
    path: Option<String>,
    kind: ErrorKind,
}

/// Result of client operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(op: &'static str, path: Option<&str>, kind: impl Into<ErrorKind>) -> Self {
        Error {
            op,
            path: path.map(str::to_owned),
            kind: kind.into(),
        }
    }

    pub(crate) fn for_request(t: MsgType, path: Option<&str>, kind: impl Into<ErrorKind>) -> Self {
        Self::new(t.name(), path, kind)
    }

    /// The errno the failure corresponds to: the daemon's, or EINVAL for a
    /// path refused locally, or E2BIG for an oversize request.
    pub fn errno(&self) -> Option<Errno> {
        match &self.kind {
            ErrorKind::Xenstore(e) => Some(*e),
            ErrorKind::InvalidPath(_) | ErrorKind::InvalidArgument(_) => Some(Errno::EINVAL),
            ErrorKind::TooLarge { .. } => Some(Errno::E2BIG),
            ErrorKind::Io(_) | ErrorKind::Protocol(_) | ErrorKind::NotUtf8 => None,
        }
    }

    /// Whether the node does not exist (ENOENT).
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(Errno::ENOENT)
    }

    /// Whether the connection itself failed (I/O or a protocol violation):
    /// the client refuses every later request, so a loop built on it cannot
    /// go on. Any other error concerns one request and the connection stays
    /// usable.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self.kind, ErrorKind::Io(_) | ErrorKind::Protocol(_))
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The operation, as the protocol names it (`"READ"`, `"connect"`).
    pub fn operation(&self) -> &str {
        self.op
    }

    /// The path the operation was about, if any.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "xenstore {}", self.op)?;
        if let Some(path) = &self.path {
            write!(f, " {path}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io(e) => Some(e),
            ErrorKind::InvalidPath(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    /// Keeps the errno for callers that speak `io::Error`, and the message.
    fn from(e: Error) -> io::Error {
        let kind = match (&e.kind, e.errno()) {
            (ErrorKind::Io(inner), _) => inner.kind(),
            (_, Some(errno)) => io::Error::from_raw_os_error(errno.code()).kind(),
            (_, None) => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_io_and_protocol_failures_lose_the_connection() {
        let lost = [
            Error::new(
                "READ",
                Some("/a"),
                io::Error::from(io::ErrorKind::BrokenPipe),
            ),
            Error::new("READ", Some("/a"), ErrorKind::Protocol("bad reply".into())),
        ];
        let kept = [
            Error::new("READ", Some("/a"), ErrorKind::Xenstore(Errno::ENOENT)),
            Error::new("WRITE", Some("/a"), ErrorKind::TooLarge { len: 5000 }),
            Error::new("READ", Some("/a"), ErrorKind::NotUtf8),
        ];
        assert!(lost.iter().all(Error::is_connection_lost));
        assert!(!kept.iter().any(Error::is_connection_lost));
    }
}
