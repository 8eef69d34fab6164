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

mod backend_path;
mod record;
mod state;

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use diskseq::{DevNum, DiskSeq, DiskSeqParseError};

pub use backend_path::{BackendPath, LOOP_LABEL_PREFIX};
pub use record::{partition_from_node, partition_to_node, PublishedDevice};
pub use state::{Mode, XenbusState};

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
    /// Where a partition lies on its disk, only when `physical-device` is
    /// a partition: `<partno>:<start>:<sectors>`, lower-case hex, start and
    /// length in 512-byte sectors. A partition reports its disk's diskseq,
    /// so `(physical-device, diskseq)` alone cannot tell it from the
    /// partition a rewritten table puts under the same number; a checking
    /// backend compares these too (docs/design/hotplug.md, "Partitions").
    pub const PARTITION: &str = "diskseq-partition";
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
    /// A value of `node` that does not parse, and why.
    pub fn invalid(node: &str, value: &[u8], reason: impl fmt::Display) -> Self {
        SchemaError::Invalid {
            node: node.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Reads a `diskseq` node's value: the one reader of it, for the script,
/// the backends and the CLI alike. The rules are the patched blkback's
/// (`kernel/patches`): text, hex digits in lower case (the form scripts
/// write), no `0x`, no leading zero, at most 16 digits; the errors come in
/// the kernel's order, so a backend can answer with the kernel's errno.
pub fn diskseq_from_node(raw: &[u8]) -> Result<DiskSeq, DiskSeqParseError> {
    if raw.is_empty() {
        return Err(DiskSeqParseError::Empty);
    }
    let text = std::str::from_utf8(raw).map_err(|_| DiskSeqParseError::Invalid)?;
    // Upper-case digits pass the length and leading-zero checks as they do
    // the kernel's; refusing them after those keeps the kernel's order.
    let seq = DiskSeq::parse_xenstore(text)?;
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(DiskSeqParseError::Invalid);
    }
    Ok(seq)
}

/// Reads a `physical-device` node's value (`maj:min`, lower-case hex): the
/// one reader of it. The error names the node and the value.
pub fn physical_device_from_node(raw: &[u8]) -> Result<DevNum, SchemaError> {
    std::str::from_utf8(raw)
        .map_err(|_| SchemaError::invalid(node::PHYSICAL_DEVICE, raw, "not text"))
        .and_then(|text| {
            DevNum::parse_xenstore(text)
                .map_err(|e| SchemaError::invalid(node::PHYSICAL_DEVICE, raw, e))
        })
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

/// A number in the record's hex form: lower-case hex digits, no `0x`, no
/// leading zero (`0` itself allowed).
pub(crate) fn canonical_hex(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (text == "0" || !text.starts_with('0'));
    canonical
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

/// A decimal id as xenstore writes them: digits only, no sign, no padding.
pub(crate) fn parse_id(s: &str) -> Option<u32> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diskseq::{FileId, LoopLabel, PartitionExtent};
    use record::backing_from_node;

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
            partition: Some(PartitionExtent {
                number: 1,
                start: 2048,
                sectors: 204800,
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
        assert_eq!(value(node::PARTITION).unwrap(), b"1:800:32000");
        let values: Vec<_> = PublishedDevice::NODES.iter().map(|n| value(n)).collect();
        assert_eq!(PublishedDevice::from_values(&values).unwrap(), Some(rec));
    }

    #[test]
    fn partition_nodes_are_canonical_hex() {
        let extent = partition_from_node(b"1:800:32000").unwrap();
        assert_eq!(
            extent,
            PartitionExtent {
                number: 1,
                start: 0x800,
                sectors: 0x32000
            }
        );
        assert_eq!(partition_to_node(&extent), "1:800:32000");
        // Well-formed, as the kernel patch reads it (16 hex digits a field),
        // though no partition has that number: a mismatch for a backend.
        assert_eq!(
            partition_from_node(b"100000000:800:1").unwrap().number,
            1 << 32
        );
        for bad in [
            &b""[..],
            b"1:800",
            b"1:800:32000:1",
            b"0:800:32000",
            b"01:800:32000",
            b"1:0800:32000",
            b"1:800:3200G",
            b"1:800:32000 ",
            b"A:800:32000",
            b"10000000000000000:800:1",
            b"1::1",
            b"\xff",
        ] {
            let err = partition_from_node(bad).unwrap_err();
            assert!(err.to_string().contains(node::PARTITION), "{bad:?}: {err}");
        }
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
