//! The two enumerations every side reads: the access a disk is asked for
//! (`mode`) and the xenbus state machine (`state`).

use std::fmt;
use std::str::FromStr;

use super::{node, SchemaError};

/// The access a backend directory asks for, as the stock script canonicalises
/// it: anything with `w` is writable, `!` additionally waives the sharing
/// check (e.g. a cluster file system shared read-write on purpose).
///
/// Unlike the stock script, which reads any string without `w` as read-only,
/// only the spellings Xen documents are accepted (`r`, `ro`, `w`, `rw`, `w!`,
/// `rw!`): a typo must not silently downgrade or upgrade a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `r`, `ro`: read-only; may be shared with other readers.
    ReadOnly,
    /// `w`, `rw`: read-write; exclusive.
    ReadWrite,
    /// `w!`, `rw!`: read-write without the sharing check.
    ReadWriteShared,
}

impl Mode {
    /// True when the guest may write.
    pub fn is_writable(self) -> bool {
        !matches!(self, Mode::ReadOnly)
    }

    /// True when the sharing check is skipped (`!`).
    pub fn sharing_waived(self) -> bool {
        matches!(self, Mode::ReadWriteShared)
    }

    /// The canonical spelling the stock script uses internally: `r`, `w`, `!`.
    pub fn canonical(self) -> &'static str {
        match self {
            Mode::ReadOnly => "r",
            Mode::ReadWrite => "w",
            Mode::ReadWriteShared => "!",
        }
    }

    /// Parses a `mode` node's raw value.
    pub fn from_node(value: &[u8]) -> Result<Self, SchemaError> {
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                SchemaError::invalid(node::MODE, value, "expected r, ro, w, rw, w! or rw!")
            })
    }
}

impl FromStr for Mode {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "r" | "ro" => Ok(Mode::ReadOnly),
            "w" | "rw" => Ok(Mode::ReadWrite),
            "w!" | "rw!" => Ok(Mode::ReadWriteShared),
            _ => Err(SchemaError::invalid(
                node::MODE,
                s.as_bytes(),
                "expected r, ro, w, rw, w! or rw!",
            )),
        }
    }
}

impl fmt::Display for Mode {
    /// The spelling libxl writes (`r`, `w`), and `w!` for the shared mode.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::ReadOnly => "r",
            Mode::ReadWrite => "w",
            Mode::ReadWriteShared => "w!",
        })
    }
}

/// The xenbus state machine shared by frontends and backends (`state` node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum XenbusState {
    /// 0
    Unknown = 0,
    /// 1: the toolstack created the directory.
    Initialising = 1,
    /// 2: the backend probed and waits for the hotplug script.
    InitWait = 2,
    /// 3: the frontend published its rings.
    Initialised = 3,
    /// 4
    Connected = 4,
    /// 5: shutting down.
    Closing = 5,
    /// 6
    Closed = 6,
    /// 7
    Reconfiguring = 7,
    /// 8
    Reconfigured = 8,
}

impl XenbusState {
    /// The state for a decimal number, if it names one.
    pub fn from_u32(n: u32) -> Option<Self> {
        use XenbusState::*;
        Some(match n {
            0 => Unknown,
            1 => Initialising,
            2 => InitWait,
            3 => Initialised,
            4 => Connected,
            5 => Closing,
            6 => Closed,
            7 => Reconfiguring,
            8 => Reconfigured,
            _ => return None,
        })
    }

    /// The number written to xenstore.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// Parses a `state` node's raw value (decimal, surrounding whitespace
    /// tolerated as the kernel's `%d` scan does).
    pub fn from_node(value: &[u8]) -> Result<Self, SchemaError> {
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .and_then(Self::from_u32)
            .ok_or_else(|| SchemaError::invalid(node::STATE, value, "expected a state 0..8"))
    }
}

impl FromStr for XenbusState {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_node(s.as_bytes())
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u32())
    }
}
