//! The record the hotplug script publishes and a backend reads: the device,
//! its instance, and for a loop device the backing file.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use diskseq::{DevNum, DiskSeq, FileId, PartitionExtent};

use super::{
    absolute_path, canonical_hex, diskseq_from_node, node, physical_device_from_node, SchemaError,
};

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
    /// `diskseq-partition`: where the partition lies, when the device is one.
    pub partition: Option<PartitionExtent>,
}

impl PublishedDevice {
    /// The nodes [`PublishedDevice::from_values`] reads, in that order.
    pub const NODES: [&'static str; 6] = [
        node::PHYSICAL_DEVICE,
        node::PHYSICAL_DEVICE_PATH,
        node::DISKSEQ,
        node::NODE,
        node::BACKING,
        node::PARTITION,
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
        if let Some(partition) = &self.partition {
            nodes.push((node::PARTITION, partition_to_node(partition).into_bytes()));
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
        let physical_device = physical_device_from_node(raw_dev)?;
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
                diskseq_from_node(raw).map_err(|e| SchemaError::invalid(node::DISKSEQ, raw, e))
            })
            .transpose()?;
        let loop_node = get(3)
            .map(|raw| absolute_path(node::NODE, raw))
            .transpose()?;
        let backing = get(4).map(backing_from_node).transpose()?;
        let partition = get(5).map(partition_from_node).transpose()?;
        Ok(Some(PublishedDevice {
            physical_device,
            physical_device_path,
            diskseq,
            node: loop_node,
            backing,
            partition,
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
pub(super) fn backing_from_node(raw: &[u8]) -> Result<FileId, SchemaError> {
    let invalid = || SchemaError::invalid(node::BACKING, raw, "expected maj:min:ino in hex");
    let text = std::str::from_utf8(raw).map_err(|_| invalid())?;
    let (dev, ino) = text.rsplit_once(':').ok_or_else(invalid)?;
    let dev = DevNum::parse_xenstore(dev).map_err(|_| invalid())?;
    let ino = canonical_hex(ino).ok_or_else(invalid)?;
    Ok(FileId {
        dev: dev.to_rdev(),
        ino,
    })
}

/// `diskseq-partition`'s text: `<partno>:<start>:<sectors>`, lower-case hex
/// (see [`node::PARTITION`]).
pub fn partition_to_node(partition: &PartitionExtent) -> String {
    format!(
        "{:x}:{:x}:{:x}",
        partition.number, partition.start, partition.sectors
    )
}

/// Parses `diskseq-partition` (see [`node::PARTITION`]): three canonical
/// lower-case hex numbers, the partition number at least 1.
pub fn partition_from_node(raw: &[u8]) -> Result<PartitionExtent, SchemaError> {
    let invalid = || {
        SchemaError::invalid(
            node::PARTITION,
            raw,
            "expected <partno>:<start>:<sectors> in lower-case hex",
        )
    };
    let text = std::str::from_utf8(raw).map_err(|_| invalid())?;
    let mut fields = text.split(':').map(canonical_hex);
    let (Some(Some(number)), Some(Some(start)), Some(Some(sectors)), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(invalid());
    };
    if number == 0 {
        return Err(invalid());
    }
    Ok(PartitionExtent {
        number,
        start,
        sectors,
    })
}
