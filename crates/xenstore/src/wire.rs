//! The xenstore wire format (`xs_wire.h`), shared by the client and the daemon
//! so that both ends agree byte for byte.
//!
//! A frame is a 16-byte header of four `u32` in host byte order — message
//! type, request id, transaction id, payload length — followed by at most
//! [`PAYLOAD_MAX`] payload bytes. Payloads are NUL-separated fields; see
//! [`fields`] and the builders at the end of this module.

use std::fmt;
use std::io::{self, Read};

/// Size of the frame header in bytes.
pub const HEADER_SIZE: usize = 16;

/// Largest payload either side may send (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;

/// Reply payload of every successful state-changing request.
pub const OK_PAYLOAD: &[u8] = b"OK\0";

/// Message types of xenstore protocol version 4.17 (`enum xsd_sockmsg_type`).
///
/// Type 20 was removed from the protocol and is deliberately absent, so
/// [`MsgType::from_u32`] rejects it like any unknown type.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// Daemon control (alias `DEBUG`); privileged only.
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl MsgType {
    /// Every defined message type, in numeric order.
    pub const ALL: [MsgType; 22] = [
        MsgType::Control,
        MsgType::Directory,
        MsgType::Read,
        MsgType::GetPerms,
        MsgType::Watch,
        MsgType::Unwatch,
        MsgType::TransactionStart,
        MsgType::TransactionEnd,
        MsgType::Introduce,
        MsgType::Release,
        MsgType::GetDomainPath,
        MsgType::Write,
        MsgType::Mkdir,
        MsgType::Rm,
        MsgType::SetPerms,
        MsgType::WatchEvent,
        MsgType::Error,
        MsgType::IsDomainIntroduced,
        MsgType::Resume,
        MsgType::SetTarget,
        MsgType::ResetWatches,
        MsgType::DirectoryPart,
    ];

    /// The type with wire value `v`, or `None` for unknown (and removed) types.
    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| *t as u32 == v)
    }

    /// The protocol's name for the type, without the `XS_` prefix
    /// (`"DIRECTORY_PART"`), as traces and error messages show it.
    pub fn name(self) -> &'static str {
        match self {
            MsgType::Control => "CONTROL",
            MsgType::Directory => "DIRECTORY",
            MsgType::Read => "READ",
            MsgType::GetPerms => "GET_PERMS",
            MsgType::Watch => "WATCH",
            MsgType::Unwatch => "UNWATCH",
            MsgType::TransactionStart => "TRANSACTION_START",
            MsgType::TransactionEnd => "TRANSACTION_END",
            MsgType::Introduce => "INTRODUCE",
            MsgType::Release => "RELEASE",
            MsgType::GetDomainPath => "GET_DOMAIN_PATH",
            MsgType::Write => "WRITE",
            MsgType::Mkdir => "MKDIR",
            MsgType::Rm => "RM",
            MsgType::SetPerms => "SET_PERMS",
            MsgType::WatchEvent => "WATCH_EVENT",
            MsgType::Error => "ERROR",
            MsgType::IsDomainIntroduced => "IS_DOMAIN_INTRODUCED",
            MsgType::Resume => "RESUME",
            MsgType::SetTarget => "SET_TARGET",
            MsgType::ResetWatches => "RESET_WATCHES",
            MsgType::DirectoryPart => "DIRECTORY_PART",
        }
    }

    /// Whether only privileged (dom0) callers may send this type.
    pub fn is_privileged_only(self) -> bool {
        matches!(
            self,
            MsgType::Control
                | MsgType::Introduce
                | MsgType::Release
                | MsgType::Resume
                | MsgType::SetTarget
        )
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A frame header. The type stays a raw `u32` so that a daemon can answer an
/// unknown type with ENOSYS instead of failing to decode the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub msg_type: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    /// Decodes a header (host byte order, as `xs_wire.h` specifies).
    pub fn decode(bytes: &[u8; HEADER_SIZE]) -> Self {
        let word =
            |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Header {
            msg_type: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }

    /// Encodes the header in host byte order.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        for (i, word) in [self.msg_type, self.req_id, self.tx_id, self.len]
            .into_iter()
            .enumerate()
        {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        out
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended (`UnexpectedEof` — also at a frame boundary).
    #[error("reading xenstore frame: {0}")]
    Io(#[from] io::Error),
    /// The header announced more than [`PAYLOAD_MAX`] bytes; the peer broke
    /// the protocol and the stream can no longer be trusted.
    #[error("xenstore frame announces {len} payload bytes, more than the limit of {PAYLOAD_MAX}")]
    TooLarge { len: u32 },
}

/// One complete frame: header fields plus payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub msg_type: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub payload: Vec<u8>,
}

impl Message {
    /// A message of a known type.
    pub fn new(t: MsgType, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Self {
        Message {
            msg_type: t as u32,
            req_id,
            tx_id,
            payload,
        }
    }

    /// The header describing this message.
    ///
    /// The length saturates at `u32::MAX`; senders check [`PAYLOAD_MAX`]
    /// before building a message, so that never reaches the wire.
    pub fn header(&self) -> Header {
        Header {
            msg_type: self.msg_type,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len: u32::try_from(self.payload.len()).unwrap_or(u32::MAX),
        }
    }

    /// Header and payload as one buffer, ready for a single `write`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_SIZE + self.payload.len());
        out.extend_from_slice(&self.header().encode());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Reads one frame from a blocking stream. An oversize length is an error
    /// returned before any payload byte is read.
    pub fn read_from(r: &mut impl Read) -> Result<Message, FrameError> {
        let mut raw = [0u8; HEADER_SIZE];
        r.read_exact(&mut raw)?;
        let header = Header::decode(&raw);
        if header.len as usize > PAYLOAD_MAX {
            return Err(FrameError::TooLarge { len: header.len });
        }
        let mut payload = vec![0u8; header.len as usize];
        r.read_exact(&mut payload)?;
        Ok(Message {
            msg_type: header.msg_type,
            req_id: header.req_id,
            tx_id: header.tx_id,
            payload,
        })
    }

    /// Decodes the first frame in `buf`, for readers of non-blocking streams:
    /// `Ok(None)` while the frame is incomplete, else the message and the
    /// number of bytes it used.
    pub fn parse(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
        let Some(raw) = buf.first_chunk::<HEADER_SIZE>() else {
            return Ok(None);
        };
        let header = Header::decode(raw);
        if header.len as usize > PAYLOAD_MAX {
            return Err(FrameError::TooLarge { len: header.len });
        }
        let end = HEADER_SIZE + header.len as usize;
        let Some(payload) = buf.get(HEADER_SIZE..end) else {
            return Ok(None);
        };
        let message = Message {
            msg_type: header.msg_type,
            req_id: header.req_id,
            tx_id: header.tx_id,
            payload: payload.to_vec(),
        };
        Ok(Some((message, end)))
    }

    /// The message type, if it is one the protocol defines.
    pub fn kind(&self) -> Option<MsgType> {
        MsgType::from_u32(self.msg_type)
    }
}

/// The errno names xenstore puts in ERROR replies (`xsd_errors[]`).
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    EINVAL,
    EACCES,
    EEXIST,
    EISDIR,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EIO,
    ENOTEMPTY,
    ENOSYS,
    EROFS,
    EBUSY,
    EAGAIN,
    EISCONN,
    E2BIG,
    EPERM,
}

impl Errno {
    /// Every errno the protocol can carry, in `xsd_errors[]` order.
    pub const ALL: [Errno; 16] = [
        Errno::EINVAL,
        Errno::EACCES,
        Errno::EEXIST,
        Errno::EISDIR,
        Errno::ENOENT,
        Errno::ENOMEM,
        Errno::ENOSPC,
        Errno::EIO,
        Errno::ENOTEMPTY,
        Errno::ENOSYS,
        Errno::EROFS,
        Errno::EBUSY,
        Errno::EAGAIN,
        Errno::EISCONN,
        Errno::E2BIG,
        Errno::EPERM,
    ];

    /// The name as it travels on the wire, e.g. `"ENOENT"`.
    pub fn name(self) -> &'static str {
        match self {
            Errno::EINVAL => "EINVAL",
            Errno::EACCES => "EACCES",
            Errno::EEXIST => "EEXIST",
            Errno::EISDIR => "EISDIR",
            Errno::ENOENT => "ENOENT",
            Errno::ENOMEM => "ENOMEM",
            Errno::ENOSPC => "ENOSPC",
            Errno::EIO => "EIO",
            Errno::ENOTEMPTY => "ENOTEMPTY",
            Errno::ENOSYS => "ENOSYS",
            Errno::EROFS => "EROFS",
            Errno::EBUSY => "EBUSY",
            Errno::EAGAIN => "EAGAIN",
            Errno::EISCONN => "EISCONN",
            Errno::E2BIG => "E2BIG",
            Errno::EPERM => "EPERM",
        }
    }

    /// The errno with this wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| e.name() == name)
    }

    /// The Linux errno value, for callers that hand errors on as `io::Error`.
    pub fn code(self) -> i32 {
        match self {
            Errno::EPERM => 1,
            Errno::ENOENT => 2,
            Errno::EIO => 5,
            Errno::E2BIG => 7,
            Errno::EAGAIN => 11,
            Errno::ENOMEM => 12,
            Errno::EACCES => 13,
            Errno::EBUSY => 16,
            Errno::EEXIST => 17,
            Errno::EISDIR => 21,
            Errno::EINVAL => 22,
            Errno::ENOSPC => 28,
            Errno::EROFS => 30,
            Errno::ENOSYS => 38,
            Errno::ENOTEMPTY => 39,
            Errno::EISCONN => 106,
        }
    }

    /// The errno with this Linux value, if the protocol can carry it.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| e.code() == code)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Splits a payload into its NUL-separated fields, ignoring one trailing NUL.
///
/// An empty payload has no fields; `"\0"` is one empty field (the payload of
/// TRANSACTION_START); `"a\0b"` and `"a\0b\0"` are both `a`, `b`.
pub fn fields(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = payload.strip_suffix(b"\0").unwrap_or(payload);
    let empty = payload.is_empty();
    body.split(|b| *b == 0).filter(move |_| !empty)
}

/// The payload of an ERROR reply: the errno name and a NUL.
pub fn error_payload(e: Errno) -> Vec<u8> {
    let mut out = e.name().as_bytes().to_vec();
    out.push(0);
    out
}

/// The errno in an ERROR reply payload (trailing NUL optional).
pub fn parse_error_payload(payload: &[u8]) -> Option<Errno> {
    let name = payload.strip_suffix(b"\0").unwrap_or(payload);
    Errno::from_name(std::str::from_utf8(name).ok()?)
}

/// Each field followed by a NUL: `path\0`, `path\0token\0`, `n0\0r5\0`.
pub fn nul_terminated(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 1).sum());
    for field in fields {
        out.extend_from_slice(field);
        out.push(0);
    }
    out
}

/// Payload of READ, MKDIR, RM, DIRECTORY, GET_PERMS: `path\0`.
pub fn path_payload(path: &str) -> Vec<u8> {
    nul_terminated(&[path.as_bytes()])
}

/// Payload of WRITE: `path\0value` — the value is raw bytes, not terminated.
pub fn write_payload(path: &str, value: &[u8]) -> Vec<u8> {
    let mut out = path_payload(path);
    out.extend_from_slice(value);
    out
}

/// Payload of WATCH, UNWATCH and WATCH_EVENT: `path\0token\0`.
pub fn watch_payload(path: &str, token: &str) -> Vec<u8> {
    nul_terminated(&[path.as_bytes(), token.as_bytes()])
}

/// Payload of DIRECTORY_PART: `path\0offset\0`.
pub fn directory_part_payload(path: &str, offset: usize) -> Vec<u8> {
    nul_terminated(&[path.as_bytes(), offset.to_string().as_bytes()])
}

/// Payload of TRANSACTION_END: `T\0` to commit, `F\0` to abort.
pub fn transaction_end_payload(commit: bool) -> Vec<u8> {
    if commit {
        b"T\0".to_vec()
    } else {
        b"F\0".to_vec()
    }
}

/// Payload of GET_DOMAIN_PATH, IS_DOMAIN_INTRODUCED, RELEASE, RESUME:
/// `domid\0`.
pub fn domid_payload(domid: u32) -> Vec<u8> {
    nul_terminated(&[domid.to_string().as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn msg_type_values_match_xs_wire_h() {
        for t in MsgType::ALL {
            assert_eq!(MsgType::from_u32(t as u32), Some(t));
        }
        assert_eq!(MsgType::DirectoryPart as u32, 22);
        assert_eq!(MsgType::ResetWatches as u32, 21);
        assert_eq!(MsgType::from_u32(20), None, "type 20 was removed");
        assert_eq!(MsgType::from_u32(23), None);
        assert_eq!(MsgType::Read.name(), "READ");
        assert!(MsgType::Introduce.is_privileged_only());
        assert!(!MsgType::Read.is_privileged_only());
    }

    #[test]
    fn errno_names_and_codes_round_trip() {
        for e in Errno::ALL {
            assert_eq!(Errno::from_name(e.name()), Some(e));
            assert_eq!(Errno::from_code(e.code()), Some(e));
            assert_eq!(parse_error_payload(&error_payload(e)), Some(e));
        }
        assert_eq!(Errno::ENOENT.code(), 2);
        assert_eq!(Errno::EAGAIN.code(), 11);
        assert_eq!(error_payload(Errno::ENOENT), b"ENOENT\0");
        assert_eq!(parse_error_payload(b"EWHAT\0"), None);
        assert_eq!(parse_error_payload(b"EACCES"), Some(Errno::EACCES));
    }

    #[test]
    fn fields_ignore_exactly_one_trailing_nul() {
        let split = |p: &[u8]| fields(p).map(<[u8]>::to_vec).collect::<Vec<_>>();
        assert!(split(b"").is_empty());
        assert_eq!(split(b"\0"), vec![b"".to_vec()]);
        assert_eq!(split(b"a\0b"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(split(b"a\0b\0"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(split(b"a\0\0"), vec![b"a".to_vec(), b"".to_vec()]);
    }

    #[test]
    fn header_is_host_byte_order() {
        let h = Header {
            msg_type: 2,
            req_id: 0x0102_0304,
            tx_id: 7,
            len: 5,
        };
        let raw = h.encode();
        assert_eq!(&raw[4..8], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(Header::decode(&raw), h);
    }

    #[test]
    fn oversize_frame_is_an_error_not_an_allocation() {
        let mut raw = Header {
            msg_type: 2,
            req_id: 1,
            tx_id: 0,
            len: u32::MAX,
        }
        .encode()
        .to_vec();
        raw.extend_from_slice(b"x");
        match Message::read_from(&mut raw.as_slice()) {
            Err(FrameError::TooLarge { len }) => assert_eq!(len, u32::MAX),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            Message::parse(&raw),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_frame_is_unexpected_eof() {
        let raw = Message::new(MsgType::Read, 1, 0, path_payload("/a")).encode();
        let cut = &raw[..raw.len() - 1];
        match Message::read_from(&mut &cut[..]) {
            Err(FrameError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected EOF, got {other:?}"),
        }
        assert_eq!(Message::parse(cut).unwrap(), None);
        assert_eq!(Message::parse(&raw[..3]).unwrap(), None);
    }

    #[test]
    fn payload_builders() {
        assert_eq!(path_payload("/a"), b"/a\0");
        assert_eq!(write_payload("/a", b"v\0x"), b"/a\0v\0x");
        assert_eq!(watch_payload("/a", "tok"), b"/a\0tok\0");
        assert_eq!(directory_part_payload("/a", 12), b"/a\x0012\0");
        assert_eq!(transaction_end_payload(true), b"T\0");
        assert_eq!(domid_payload(5), b"5\0");
    }

    proptest! {
        #[test]
        fn message_round_trips(t in 0u32..40, req in any::<u32>(), tx in any::<u32>(),
                               payload in proptest::collection::vec(any::<u8>(), 0..=PAYLOAD_MAX)) {
            let m = Message { msg_type: t, req_id: req, tx_id: tx, payload };
            let raw = m.encode();
            prop_assert_eq!(Message::read_from(&mut raw.as_slice()).unwrap(), m.clone());
            let mut two = raw.clone();
            two.extend_from_slice(&raw);
            let (first, used) = Message::parse(&two).unwrap().unwrap();
            prop_assert_eq!(first, m);
            prop_assert_eq!(used, raw.len());
        }

        #[test]
        fn nul_terminated_fields_round_trip(items in proptest::collection::vec("[a-z0-9/]{0,8}", 1..6)) {
            let refs: Vec<&[u8]> = items.iter().map(|s| s.as_bytes()).collect();
            let payload = nul_terminated(&refs);
            let back: Vec<&[u8]> = fields(&payload).collect();
            prop_assert_eq!(back, refs);
        }

        #[test]
        fn parse_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::parse(&raw);
            let _ = Message::read_from(&mut raw.as_slice());
        }
    }
}
