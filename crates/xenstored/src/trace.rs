//! `--trace FILE`: one line per request, reply, watch event and connection
//! change, like the C daemon's trace file. Payload NULs print as spaces,
//! other unprintable bytes as `.`. Counting `IN ` lines counts round trips.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use xenstore::wire::{Message, MsgType};

use crate::watch::ConnId;

/// An open trace file. Write errors are ignored: tracing must never take
/// the daemon down.
pub struct Trace {
    out: BufWriter<File>,
}

impl Trace {
    /// Opens `path` for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("opening trace file {}: {e}", path.display()),
                )
            })?;
        Ok(Trace {
            out: BufWriter::new(file),
        })
    }

    fn stamp(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let _ = write!(self.out, "{}.{:06} ", now.as_secs(), now.subsec_micros());
    }

    /// `IN ` or `OUT` line for a frame.
    pub fn message(&mut self, direction: &str, conn: ConnId, domid: u32, msg: &Message) {
        self.stamp();
        let name = msg.kind().map_or("UNKNOWN", MsgType::name);
        let _ = write!(
            self.out,
            "{direction} c{conn} d{domid} {name} req={} tx={} (",
            msg.req_id, msg.tx_id
        );
        self.payload(&msg.payload);
        let _ = writeln!(self.out, ")");
    }

    /// `OUT` line for a watch event queued by a change.
    pub fn event(&mut self, conn: ConnId, domid: u32, path: &str, token: &str) {
        self.stamp();
        let _ = write!(self.out, "OUT c{conn} d{domid} WATCH_EVENT req=0 tx=0 (");
        self.payload(path.as_bytes());
        let _ = write!(self.out, " ");
        self.payload(token.as_bytes());
        let _ = writeln!(self.out, " )");
    }

    /// A connection appeared, closed or misbehaved.
    pub fn connection(&mut self, conn: ConnId, domid: u32, what: &str) {
        self.stamp();
        let _ = writeln!(self.out, "{what} c{conn} d{domid}");
    }

    fn payload(&mut self, bytes: &[u8]) {
        let shown: Vec<u8> = bytes
            .iter()
            .map(|&b| match b {
                0 => b' ',
                0x20..=0x7e => b,
                _ => b'.',
            })
            .collect();
        let _ = self.out.write_all(&shown);
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}
