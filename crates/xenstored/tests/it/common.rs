//! Shared by the daemon's integration tests: a daemon in a private
//! directory, and a raw frame-level connection for requests no well-behaved
//! client would send.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use xenstore::wire::{Header, Message, MsgType, HEADER_SIZE};
use xenstore::{Client, Perms};
use xenstored::{Config, Daemon, DaemonHandle, Quotas};

/// The guest domain every test bed simulates.
pub const GUEST: u32 = 5;
/// A second guest, for cross-guest isolation.
pub const OTHER_GUEST: u32 = 6;

/// A running daemon with a dom0 socket and two guest sockets.
pub struct Bed {
    pub dir: tempfile::TempDir,
    pub daemon: Option<DaemonHandle>,
}

impl Bed {
    pub fn start() -> Self {
        Self::with_quotas(Quotas::default())
    }

    pub fn with_quotas(quotas: Quotas) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new(dir.path().join("socket"))
            .domain_socket(GUEST, dir.path().join("guest"))
            .domain_socket(OTHER_GUEST, dir.path().join("other-guest"));
        config.quotas = quotas;
        config.trace = Some(dir.path().join("trace"));
        let daemon = Daemon::start(config).expect("daemon starts");
        Bed {
            dir,
            daemon: Some(daemon),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    pub fn guest_socket(&self, domid: u32) -> PathBuf {
        match domid {
            GUEST => self.dir.path().join("guest"),
            OTHER_GUEST => self.dir.path().join("other-guest"),
            _ => panic!("no socket for domain {domid}"),
        }
    }

    pub fn dom0(&self) -> Client {
        Client::connect_socket(&self.socket()).expect("dom0 connects")
    }

    /// A guest connection, after dom0 created the guest's home and gave it
    /// to the guest, as a toolstack does.
    pub fn guest(&self, domid: u32) -> Client {
        let mut dom0 = self.dom0();
        let home = format!("/local/domain/{domid}");
        dom0.mkdir(&home).unwrap();
        dom0.set_perms(&home, &Perms::owner_only(domid)).unwrap();
        Client::connect_socket(&self.guest_socket(domid)).expect("guest connects")
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(&self.socket())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop();
        }
    }
}

/// A connection speaking frames directly.
pub struct Raw {
    pub stream: UnixStream,
    next_req: u32,
    /// Watch events that arrived while waiting for replies.
    pub events: Vec<(String, String)>,
}

impl Raw {
    pub fn connect(path: &std::path::Path) -> Self {
        let stream = UnixStream::connect(path).expect("raw connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            stream,
            next_req: 1,
            events: Vec::new(),
        }
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends one request; returns its request id.
    pub fn send(&mut self, msg_type: u32, tx_id: u32, payload: &[u8]) -> u32 {
        let req_id = self.next_req;
        self.next_req += 1;
        let msg = Message {
            msg_type,
            req_id,
            tx_id,
            payload: payload.to_vec(),
        };
        self.send_bytes(&msg.encode()).expect("send");
        req_id
    }

    /// The next frame, whatever it is.
    pub fn frame(&mut self) -> io::Result<Message> {
        let mut header = [0u8; HEADER_SIZE];
        self.stream.read_exact(&mut header)?;
        let header = Header::decode(&header);
        let mut payload = vec![0u8; header.len as usize];
        self.stream.read_exact(&mut payload)?;
        Ok(Message {
            msg_type: header.msg_type,
            req_id: header.req_id,
            tx_id: header.tx_id,
            payload,
        })
    }

    /// The reply to `req_id`, queueing watch events that come first.
    pub fn reply(&mut self, req_id: u32) -> Message {
        loop {
            let frame = self.frame().expect("reply frame");
            if frame.msg_type == MsgType::WatchEvent as u32 {
                self.events.push(split_event(&frame.payload));
                continue;
            }
            assert_eq!(frame.req_id, req_id, "reply out of order: {frame:?}");
            return frame;
        }
    }

    /// Request and reply: `Ok(payload)` or `Err(errno name)`.
    pub fn call(&mut self, t: MsgType, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>, String> {
        let req = self.send(t as u32, tx_id, payload);
        outcome(t, self.reply(req))
    }

    /// Whether the daemon closed this connection (EOF within the timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

pub fn split_event(payload: &[u8]) -> (String, String) {
    let mut parts = payload.split(|b| *b == 0);
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let token = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    (path, token)
}

/// `path\0`.
pub fn arg(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// `a\0b\0...`.
pub fn args(parts: &[&str]) -> Vec<u8> {
    parts.iter().flat_map(|p| arg(p)).collect()
}

/// Whether tests that need external tools must run (CI) rather than skip.
pub fn require_all() -> bool {
    std::env::var_os("DISKSEQ_REQUIRE_ALL").is_some_and(|v| v == "1")
}

/// A reply to a request of type `t`: `Ok(payload)`, or `Err(errno name)`
/// for an ERROR reply; any other type fails the test.
pub fn outcome(t: MsgType, reply: Message) -> Result<Vec<u8>, String> {
    if reply.msg_type == MsgType::Error as u32 {
        let name = reply.payload.strip_suffix(b"\0").unwrap_or(&reply.payload);
        Err(String::from_utf8_lossy(name).into_owned())
    } else {
        assert_eq!(reply.msg_type, t as u32, "reply type");
        Ok(reply.payload)
    }
}
