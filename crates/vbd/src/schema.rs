//! The typed shape of a vbd backend directory in xenstore.
//!
//! One place names every node the toolstack, the hotplug script and the
//! backend exchange, and parses the values each of them writes, so the three
//! sides cannot drift apart on a spelling or a number format. Formats follow
//! the notes in `vbd-protocol.md` (§1, §2, §4): `physical-device` is
//! lower-case hex `maj:min` without padding, `diskseq` is lower-case hex
//! without `0x` or leading zeros, `state` is decimal.
//!
//! Nothing here talks to xenstore: values go in and out as node/value pairs,
//! so the same code serves a transaction, a plain client or a test.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use diskseq::{DevNum, DiskSeq, FileId, LoopLabel};

/// Node names inside a backend directory `backend/vbd/<fe-domid>/<devid>`.
pub mod node {
    // Written by the toolstack (libxl), in one transaction, before the script runs.
    /// Absolute path of the frontend directory.
    pub const FRONTEND: &str = "frontend";
    /// Frontend domain id, decimal.
    pub const FRONTEND_ID: &str = "frontend-id";
    /// "1" while the device should exist; "0" when the toolstack detaches.
    pub const ONLINE: &str = "online";
    /// "1" for removable media.
    pub const REMOVABLE: &str = "removable";
    /// "1" when bootable.
    pub const BOOTABLE: &str = "bootable";
    /// The backend's XenbusState, decimal.
    pub const STATE: &str = "state";
    /// The guest's device name, e.g. `xvda`.
    pub const DEV: &str = "dev";
    /// The backend type; libxl writes `phy` for block devices and files alike.
    pub const TYPE: &str = "type";
    /// Access mode: `r` or `w` (older toolstacks: `ro`, `rw`, `w!`).
    pub const MODE: &str = "mode";
    /// `disk` or `cdrom`.
    pub const DEVICE_TYPE: &str = "device-type";
    /// The target the script opens: a block device or a regular file.
    pub const PARAMS: &str = "params";
    /// The hotplug script's path.
    pub const SCRIPT: &str = "script";
    /// "0" disables discard.
    pub const DISCARD_ENABLE: &str = "discard-enable";
    /// Always `xen` for libxl.
    pub const SPECIFICATION: &str = "specification";
    /// "1" when the backing file may be opened with direct I/O.
    pub const DIRECT_IO_SAFE: &str = "direct-io-safe";

    // Written by the block hotplug script.
    /// `maj:min`, lower-case hex, no padding.
    pub const PHYSICAL_DEVICE: &str = "physical-device";
    /// The path the script actually opened (`/dev/loopN` for files).
    pub const PHYSICAL_DEVICE_PATH: &str = "physical-device-path";
    /// The opened disk's sequence number, lower-case hex.
    pub const DISKSEQ: &str = "diskseq";
    /// `/dev/loopN`, only for a loop device the script created.
    pub const NODE: &str = "node";
    /// The backing file of the loop device in `node`, as the kernel bound
    /// it: `maj:min:ino` of its `st_dev` and `st_ino`, lower-case hex.
    /// `remove` detaches only a device still bound to that inode, whatever
    /// `params` names by then. (block-diskseq's own node.)
    pub const BACKING: &str = "diskseq-backing";
    /// `connected`, `error` or `busy`.
    pub const HOTPLUG_STATUS: &str = "hotplug-status";
    /// Why the script failed.
    pub const HOTPLUG_ERROR: &str = "hotplug-error";

    // Written by the backend.
    /// "0" at probe, "1" once the backend holds the device open.
    pub const OPENED: &str = "opened";
    /// Size in 512-byte sectors, decimal.
    pub const SECTORS: &str = "sectors";
    /// VDISK_* flags: 1 cdrom, 2 removable, 4 read-only.
    pub const INFO: &str = "info";
    /// Logical sector size in bytes.
    pub const SECTOR_SIZE: &str = "sector-size";
    /// Physical sector size in bytes.
    pub const PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
    /// "1": the backend honours flush requests.
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    /// "1": the backend honours write barriers.
    pub const FEATURE_BARRIER: &str = "feature-barrier";
    /// "1": persistent grants.
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
    /// "1": discard supported.
    pub const FEATURE_DISCARD: &str = "feature-discard";
    /// Discard granularity in bytes.
    pub const DISCARD_GRANULARITY: &str = "discard-granularity";
    /// Discard alignment in bytes.
    pub const DISCARD_ALIGNMENT: &str = "discard-alignment";
    /// "1": secure discard supported.
    pub const DISCARD_SECURE: &str = "discard-secure";
    /// Indirect segments the backend accepts.
    pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
    /// Queues the backend offers.
    pub const MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";
    /// Largest ring the backend maps, as a page order.
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";

    /// Nodes inside a frontend directory `/local/domain/<fe>/device/vbd/<devid>`.
    pub mod frontend {
        /// Absolute path of the backend directory.
        pub const BACKEND: &str = "backend";
        /// Backend domain id, decimal.
        pub const BACKEND_ID: &str = "backend-id";
        /// The frontend's XenbusState, decimal.
        pub const STATE: &str = "state";
        /// The devid, decimal.
        pub const VIRTUAL_DEVICE: &str = "virtual-device";
        /// `disk` or `cdrom`.
        pub const DEVICE_TYPE: &str = "device-type";
        /// Single-ring grant reference.
        pub const RING_REF: &str = "ring-ref";
        /// Single-ring event channel.
        pub const EVENT_CHANNEL: &str = "event-channel";
        /// Ring ABI, e.g. `x86_64-abi`.
        pub const PROTOCOL: &str = "protocol";
        /// Queues the frontend uses (multi-queue).
        pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
    }
}

/// A value in a backend directory that does not have the form its node needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The node's value cannot be parsed.
    #[error("{node}: invalid value {value:?}: {reason}")]
    Invalid {
        /// The node (name or full path) that was read.
        node: String,
        /// The value as read (lossily decoded).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A node that must be present is not.
    #[error("{node}: missing")]
    Missing {
        /// The node (name or full path).
        node: String,
    },
    /// A backend path that is not `backend/vbd/<fe-domid>/<devid>`.
    #[error("backend path {path:?}: {reason}")]
    BadBackendPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl SchemaError {
    fn invalid(node: &str, value: &[u8], reason: impl fmt::Display) -> Self {
        SchemaError::Invalid {
            node: node.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
            reason: reason.to_string(),
        }
    }
}

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

/// Where a vbd's backend directory lives: `backend/vbd/<fe-domid>/<devid>`
/// under the backend domain's home.
///
/// libxl passes the relative form in `XENBUS_PATH`; the daemon resolves it
/// against the caller's home, so a script need not know its own domid. The
/// absolute form `/local/domain/<be>/backend/vbd/<fe>/<devid>` is accepted
/// too and kept as given: [`BackendPath::node`] answers in the form parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendPath {
    backend_domid: Option<u32>,
    frontend_domid: u32,
    devid: u32,
}

const BACKEND_VBD_PREFIX: &str = "backend/vbd/";
const DOMAIN_PREFIX: &str = "/local/domain/";

impl BackendPath {
    /// A backend path in relative form.
    pub fn new(frontend_domid: u32, devid: u32) -> Self {
        BackendPath {
            backend_domid: None,
            frontend_domid,
            devid,
        }
    }

    /// A backend path in absolute form, for a backend in `backend_domid`.
    pub fn new_absolute(backend_domid: u32, frontend_domid: u32, devid: u32) -> Self {
        BackendPath {
            backend_domid: Some(backend_domid),
            frontend_domid,
            devid,
        }
    }

    /// Parses `backend/vbd/<fe>/<devid>` or
    /// `/local/domain/<be>/backend/vbd/<fe>/<devid>` (decimal ids, nothing
    /// after the devid).
    pub fn parse(s: &str) -> Result<Self, SchemaError> {
        let bad = |reason| SchemaError::BadBackendPath {
            path: s.to_owned(),
            reason,
        };
        let (backend_domid, rest) = match s.strip_prefix(DOMAIN_PREFIX) {
            Some(abs) => {
                let (be, rest) = abs.split_once('/').ok_or_else(|| bad("no backend dir"))?;
                (
                    Some(parse_id(be).ok_or_else(|| bad("backend domid is not a number"))?),
                    rest,
                )
            }
            None if s.starts_with('/') => {
                return Err(bad("absolute path is not under /local/domain/<domid>/"))
            }
            None => (None, s),
        };
        let rest = rest
            .strip_prefix(BACKEND_VBD_PREFIX)
            .ok_or_else(|| bad("expected backend/vbd/<frontend-domid>/<devid>"))?;
        let (fe, devid) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected <frontend-domid>/<devid>"))?;
        Ok(BackendPath {
            backend_domid,
            frontend_domid: parse_id(fe).ok_or_else(|| bad("frontend domid is not a number"))?,
            devid: parse_id(devid).ok_or_else(|| bad("devid is not a number"))?,
        })
    }

    /// The backend domain, when the path was absolute.
    pub fn backend_domid(&self) -> Option<u32> {
        self.backend_domid
    }

    /// The frontend (guest) domain.
    pub fn frontend_domid(&self) -> u32 {
        self.frontend_domid
    }

    /// The virtual device number (e.g. 51712 for xvda).
    pub fn devid(&self) -> u32 {
        self.devid
    }

    /// `backend/vbd/<fe>/<devid>`.
    pub fn relative(&self) -> String {
        format!("{BACKEND_VBD_PREFIX}{}/{}", self.frontend_domid, self.devid)
    }

    /// `/local/domain/<be>/backend/vbd/<fe>/<devid>`.
    pub fn absolute(&self, backend_domid: u32) -> String {
        format!("{DOMAIN_PREFIX}{backend_domid}/{}", self.relative())
    }

    /// The same directory with its backend domain known.
    pub fn with_backend_domid(&self, backend_domid: u32) -> Self {
        BackendPath {
            backend_domid: Some(backend_domid),
            ..self.clone()
        }
    }

    /// The directory in the form it was parsed (relative or absolute).
    pub fn dir(&self) -> String {
        match self.backend_domid {
            Some(be) => self.absolute(be),
            None => self.relative(),
        }
    }

    /// A node inside the backend directory, in the form it was parsed.
    pub fn node(&self, name: &str) -> String {
        format!("{}/{name}", self.dir())
    }

    /// `backend/vbd/<fe>`: the parent listing every vbd of this frontend.
    pub fn frontend_dir(&self) -> String {
        let dir = self.dir();
        match dir.rsplit_once('/') {
            Some((parent, _)) => parent.to_owned(),
            None => dir,
        }
    }

    /// Where `xenbus_dev_fatal` reports errors for this device:
    /// `/local/domain/<be>/error/backend/vbd/<fe>/<devid>/error`.
    pub fn error_node(&self, backend_domid: u32) -> String {
        format!(
            "{DOMAIN_PREFIX}{backend_domid}/error/{}/error",
            self.relative()
        )
    }

    /// The stock sysfs name of this device in the backend domain
    /// (`vbd-<fe>-<devid>` under `/sys/bus/xen-backend/devices`).
    pub fn sysfs_name(&self) -> String {
        format!("vbd-{}-{}", self.frontend_domid, self.devid)
    }
}

impl fmt::Display for BackendPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dir())
    }
}

impl FromStr for BackendPath {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A decimal id as xenstore writes them: digits only, no sign, no padding.
fn parse_id(s: &str) -> Option<u32> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

/// What the hotplug script publishes for the backend, in one transaction.
///
/// `diskseq` is optional only for records written by legacy scripts (the
/// backend then skips its check); this crate's script always writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedDevice {
    /// `physical-device`: the device number.
    pub physical_device: DevNum,
    /// `physical-device-path`: the path that was opened.
    pub physical_device_path: PathBuf,
    /// `diskseq`: the opened disk instance.
    pub diskseq: Option<DiskSeq>,
    /// `node`: the loop device the script created, if any.
    pub node: Option<PathBuf>,
    /// `diskseq-backing`: that loop device's backing file.
    pub backing: Option<FileId>,
}

impl PublishedDevice {
    /// The nodes [`PublishedDevice::from_values`] reads, in that order.
    pub const NODES: [&'static str; 5] = [
        node::PHYSICAL_DEVICE,
        node::PHYSICAL_DEVICE_PATH,
        node::DISKSEQ,
        node::NODE,
        node::BACKING,
    ];

    /// The node/value pairs to write (all in one transaction). `diskseq`
    /// comes first only for readability of traces; atomicity comes from the
    /// transaction.
    pub fn to_nodes(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut nodes = Vec::with_capacity(Self::NODES.len());
        if let Some(seq) = self.diskseq {
            nodes.push((node::DISKSEQ, seq.to_xenstore().into_bytes()));
        }
        nodes.push((
            node::PHYSICAL_DEVICE,
            self.physical_device.to_xenstore().into_bytes(),
        ));
        nodes.push((
            node::PHYSICAL_DEVICE_PATH,
            self.physical_device_path.as_os_str().as_bytes().to_vec(),
        ));
        if let Some(loop_node) = &self.node {
            nodes.push((node::NODE, loop_node.as_os_str().as_bytes().to_vec()));
        }
        if let Some(backing) = self.backing {
            nodes.push((node::BACKING, backing_to_node(backing).into_bytes()));
        }
        nodes
    }

    /// Rebuilds a record from the values of [`PublishedDevice::NODES`], in
    /// that order (`None` = node absent). No `physical-device` means no
    /// record (`Ok(None)`); any malformed value is an error naming its node.
    pub fn from_values(values: &[Option<Vec<u8>>]) -> Result<Option<Self>, SchemaError> {
        let get = |i: usize| values.get(i).and_then(|v| v.as_deref());
        let Some(raw_dev) = get(0) else {
            return Ok(None);
        };
        let physical_device = std::str::from_utf8(raw_dev)
            .map_err(|_| SchemaError::invalid(node::PHYSICAL_DEVICE, raw_dev, "not text"))
            .and_then(|s| {
                DevNum::parse_xenstore(s)
                    .map_err(|e| SchemaError::invalid(node::PHYSICAL_DEVICE, raw_dev, e))
            })?;
        let physical_device_path = match get(1) {
            Some(raw) => absolute_path(node::PHYSICAL_DEVICE_PATH, raw)?,
            None => {
                return Err(SchemaError::Missing {
                    node: node::PHYSICAL_DEVICE_PATH.into(),
                })
            }
        };
        let diskseq = get(2)
            .map(|raw| {
                std::str::from_utf8(raw)
                    .map_err(|_| SchemaError::invalid(node::DISKSEQ, raw, "not text"))
                    .and_then(|s| {
                        DiskSeq::parse_xenstore(s)
                            .map_err(|e| SchemaError::invalid(node::DISKSEQ, raw, e))
                    })
            })
            .transpose()?;
        let loop_node = get(3)
            .map(|raw| absolute_path(node::NODE, raw))
            .transpose()?;
        let backing = get(4).map(backing_from_node).transpose()?;
        Ok(Some(PublishedDevice {
            physical_device,
            physical_device_path,
            diskseq,
            node: loop_node,
            backing,
        }))
    }
}

/// `diskseq-backing`'s text: `maj:min:ino`, lower-case hex.
fn backing_to_node(file: FileId) -> String {
    format!(
        "{}:{:x}",
        DevNum::from_rdev(file.dev).to_xenstore(),
        file.ino
    )
}

/// Parses `diskseq-backing` (see [`node::BACKING`]).
fn backing_from_node(raw: &[u8]) -> Result<FileId, SchemaError> {
    let invalid = || SchemaError::invalid(node::BACKING, raw, "expected maj:min:ino in hex");
    let text = std::str::from_utf8(raw).map_err(|_| invalid())?;
    let (dev, ino) = text.rsplit_once(':').ok_or_else(invalid)?;
    let dev = DevNum::parse_xenstore(dev).map_err(|_| invalid())?;
    let canonical = !ino.is_empty()
        && ino
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (ino == "0" || !ino.starts_with('0'));
    let ino = canonical
        .then(|| u64::from_str_radix(ino, 16).ok())
        .flatten()
        .ok_or_else(invalid)?;
    Ok(FileId {
        dev: dev.to_rdev(),
        ino,
    })
}

/// What a loop device created for a vbd carries in its name field: the
/// backend directory it was made for. `remove` finds by it the device of an
/// `add` killed before it published, and `diskseq loop gc` the devices whose
/// backend is gone; a device without it is never touched.
pub const LOOP_LABEL_PREFIX: &str = "diskseq-vbd:";

impl BackendPath {
    /// The label of a loop device made for this backend:
    /// `diskseq-vbd:vbd/<fe>/<devid>` for the relative form (this domain's
    /// backend), `diskseq-vbd:<be>/vbd/<fe>/<devid>` for the absolute one.
    /// At most 48 bytes, within the kernel's 63.
    pub fn loop_label(&self) -> LoopLabel {
        let tail = format!("vbd/{}/{}", self.frontend_domid, self.devid);
        let text = match self.backend_domid {
            Some(be) => format!("{LOOP_LABEL_PREFIX}{be}/{tail}"),
            None => format!("{LOOP_LABEL_PREFIX}{tail}"),
        };
        LoopLabel::new(text).expect("a vbd label is short printable ASCII")
    }

    /// The backend a [`loop_label`](Self::loop_label) names; `None` for any
    /// other label.
    pub fn from_loop_label(label: &LoopLabel) -> Option<BackendPath> {
        let rest = label.as_str().strip_prefix(LOOP_LABEL_PREFIX)?;
        let path = match rest.split_once("/vbd/") {
            Some((be, tail)) => format!("{DOMAIN_PREFIX}{be}/{BACKEND_VBD_PREFIX}{tail}"),
            None => format!("backend/{}", rest),
        };
        BackendPath::parse(&path)
            .ok()
            .filter(|parsed| parsed.loop_label() == *label)
    }
}

/// Parses a node holding an absolute host path (no NUL, starts with `/`).
pub fn absolute_path(node_name: &str, raw: &[u8]) -> Result<PathBuf, SchemaError> {
    if raw.is_empty() {
        return Err(SchemaError::invalid(node_name, raw, "empty path"));
    }
    if raw.contains(&0) {
        return Err(SchemaError::invalid(
            node_name,
            raw,
            "path contains a NUL byte",
        ));
    }
    let path = Path::new(OsStr::from_bytes(raw));
    if !path.is_absolute() {
        return Err(SchemaError::invalid(node_name, raw, "path is not absolute"));
    }
    Ok(path.to_path_buf())
}

/// Parses a decimal domain id node (`frontend-id`, `backend-id`).
pub fn domid(node_name: &str, raw: &[u8]) -> Result<u32, SchemaError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(parse_id)
        .ok_or_else(|| SchemaError::invalid(node_name, raw, "expected a decimal domain id"))
}

/// Reads a boolean flag node the way the kernel's `xenbus_scanf("%d")`
/// callers do: "1" (any non-zero number) is true, absent or "0" is false.
pub fn flag(raw: Option<&[u8]>) -> bool {
    raw.and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse::<i64>().ok())
        .is_some_and(|n| n != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_like_the_stock_script_and_reject_the_rest() {
        for (s, m) in [
            ("r", Mode::ReadOnly),
            ("ro", Mode::ReadOnly),
            ("w", Mode::ReadWrite),
            ("rw", Mode::ReadWrite),
            ("w!", Mode::ReadWriteShared),
            ("rw!", Mode::ReadWriteShared),
        ] {
            assert_eq!(s.parse::<Mode>().unwrap(), m, "{s}");
        }
        for bad in ["", "x", "W", "r!", "wr", " w", "w\0", "!"] {
            let err = Mode::from_node(bad.as_bytes()).unwrap_err();
            assert!(
                err.to_string().starts_with("mode: invalid value"),
                "{bad:?}: {err}"
            );
        }
        assert!(Mode::ReadWrite.is_writable() && !Mode::ReadWrite.sharing_waived());
        assert!(Mode::ReadWriteShared.is_writable() && Mode::ReadWriteShared.sharing_waived());
        assert!(!Mode::ReadOnly.is_writable());
        assert_eq!(Mode::ReadWriteShared.canonical(), "!");
        assert_eq!(
            Mode::ReadWriteShared.to_string().parse::<Mode>().unwrap(),
            Mode::ReadWriteShared
        );
    }

    #[test]
    fn states_round_trip_and_reject_out_of_range() {
        for n in 0..=8 {
            let s = XenbusState::from_u32(n).unwrap();
            assert_eq!(s.to_string().parse::<XenbusState>().unwrap(), s);
        }
        assert_eq!(
            XenbusState::from_node(b"2\n").unwrap(),
            XenbusState::InitWait
        );
        for bad in ["9", "-1", "", "x", "4294967296"] {
            assert!(bad.parse::<XenbusState>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backend_paths_parse_in_both_forms() {
        let rel = BackendPath::parse("backend/vbd/5/51712").unwrap();
        assert_eq!(
            (rel.backend_domid(), rel.frontend_domid(), rel.devid()),
            (None, 5, 51712)
        );
        assert_eq!(rel.node("params"), "backend/vbd/5/51712/params");
        assert_eq!(rel.frontend_dir(), "backend/vbd/5");
        assert_eq!(rel.absolute(0), "/local/domain/0/backend/vbd/5/51712");
        assert_eq!(
            rel.error_node(0),
            "/local/domain/0/error/backend/vbd/5/51712/error"
        );
        assert_eq!(rel.sysfs_name(), "vbd-5-51712");

        let abs = BackendPath::parse("/local/domain/3/backend/vbd/5/768").unwrap();
        assert_eq!(abs.backend_domid(), Some(3));
        assert_eq!(abs.node("mode"), "/local/domain/3/backend/vbd/5/768/mode");
        assert_eq!(abs.frontend_dir(), "/local/domain/3/backend/vbd/5");
        assert_eq!(abs.to_string().parse::<BackendPath>().unwrap(), abs);
        assert_eq!(
            rel.with_backend_domid(3).dir(),
            "/local/domain/3/backend/vbd/5/51712"
        );
    }

    #[test]
    fn malformed_backend_paths_are_refused_by_name() {
        for bad in [
            "",
            "backend/vbd/5",
            "backend/vbd/5/",
            "backend/vbd//1",
            "backend/vif/5/0",
            "backend/vbd/5/51712/params",
            "backend/vbd/05/1",
            "backend/vbd/-1/1",
            "backend/vbd/x/1",
            "/backend/vbd/5/1",
            "/local/domain/x/backend/vbd/5/1",
            "/local/domain/0",
            "backend/vbd/5/99999999999",
        ] {
            let err = BackendPath::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn published_record_round_trips_through_nodes() {
        let rec = PublishedDevice {
            physical_device: DevNum {
                major: 7,
                minor: 12,
            },
            physical_device_path: "/dev/loop12".into(),
            diskseq: DiskSeq::new(0x2a),
            node: Some("/dev/loop12".into()),
            backing: Some(FileId {
                dev: DevNum {
                    major: 254,
                    minor: 1,
                }
                .to_rdev(),
                ino: 0x1234,
            }),
        };
        let nodes = rec.to_nodes();
        let value = |name: &str| {
            nodes
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(value(node::PHYSICAL_DEVICE).unwrap(), b"7:c");
        assert_eq!(value(node::DISKSEQ).unwrap(), b"2a");
        assert_eq!(value(node::BACKING).unwrap(), b"fe:1:1234");
        let values: Vec<_> = PublishedDevice::NODES.iter().map(|n| value(n)).collect();
        assert_eq!(PublishedDevice::from_values(&values).unwrap(), Some(rec));
    }

    #[test]
    fn loop_labels_name_their_backend() {
        for backend in [
            BackendPath::new(3, 51712),
            BackendPath::new_absolute(5, 3, 51712),
            BackendPath::new_absolute(u32::MAX, u32::MAX, u32::MAX),
        ] {
            let label = backend.loop_label();
            assert!(label.as_str().starts_with(LOOP_LABEL_PREFIX));
            assert_eq!(BackendPath::from_loop_label(&label), Some(backend));
        }
        assert_eq!(
            BackendPath::new(3, 51712).loop_label().as_str(),
            "diskseq-vbd:vbd/3/51712"
        );
        for other in [
            "losetup-name",
            "diskseq-vbd:",
            "diskseq-vbd:vbd/3",
            "diskseq-vbd:vbd/03/1",
            "diskseq-vbd:x/vbd/3/1",
            "diskseq-vbd:vbd/3/1/extra",
        ] {
            let label = LoopLabel::new(other).unwrap();
            assert_eq!(BackendPath::from_loop_label(&label), None, "{other}");
        }
    }

    #[test]
    fn published_record_absent_or_malformed() {
        assert_eq!(
            PublishedDevice::from_values(&[None, None, None, None]).unwrap(),
            None
        );
        let some = |s: &str| Some(s.as_bytes().to_vec());
        let cases: [(&[Option<Vec<u8>>], &str); 6] = [
            (
                &[some("7:zz"), some("/dev/loop0"), None, None],
                "physical-device",
            ),
            (
                &[some("7:0"), None, None, None],
                "physical-device-path: missing",
            ),
            (
                &[some("7:0"), some("dev/loop0"), None, None],
                "physical-device-path",
            ),
            (
                &[some("7:0"), some("/dev/loop0"), some("0"), None],
                "diskseq",
            ),
            (
                &[some("7:0"), some("/dev/loop0"), some(""), None],
                "diskseq",
            ),
            (
                &[some("7:0"), some("/dev/loop0"), some("1"), some("")],
                "node",
            ),
        ];
        for (values, expected) in cases {
            let err = PublishedDevice::from_values(values)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{values:?}: {err}");
        }
    }

    #[test]
    fn paths_and_ids_and_flags() {
        assert!(absolute_path("params", b"/a\0b").is_err());
        assert!(absolute_path("params", b"").is_err());
        assert_eq!(
            absolute_path("params", b"/img").unwrap(),
            PathBuf::from("/img")
        );
        assert_eq!(domid("frontend-id", b"12").unwrap(), 12);
        assert!(domid("frontend-id", b"").is_err());
        for bad in [&b"5 "[..], b" 5", b"05", b"5\n", b"+5", b"-1"] {
            assert!(domid("frontend-id", bad).is_err(), "{bad:?}");
        }
        for bad in [
            &b"fe:1"[..],
            b"fe:1:",
            b"fe:1:01",
            b"fe:1:X",
            b"fe:1:-1",
            b"fe::1",
        ] {
            assert!(backing_from_node(bad).is_err(), "{bad:?}");
        }
        assert!(flag(Some(b"1")) && !flag(Some(b"0")) && !flag(None) && !flag(Some(b"x")));
    }
}
