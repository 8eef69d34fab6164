//! Opening the published device and proving it is the published instance.
//!
//! blkback opens `physical-device` by number; the patch then compares the
//! opened disk's diskseq with the `diskseq` node. The comparison is made on
//! the fd (the identity library reads BLKGETDISKSEQ on the descriptor it
//! opened), never on a name: between the script's publish and this open the
//! number may have been reused by another disk, and only the fd proves which
//! one we got. `--open-by-diskseq` (an idea from the review) turns it
//! around: find the disk by its sequence number, then check it still has
//! the published number.

use std::sync::Arc;

use diskseq::{sysfs, Access, BlockDevice, DiskId, Error, PartitionExtent};
use rustix::io::Errno;

use crate::backend::machine::{DiscardFacts, DiskFacts, OpenRequest, Opened};
use crate::backend::Fatal;

/// How the backend opens the published device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpenMethod {
    /// By `physical-device` (blkback), then check the diskseq on the fd.
    #[default]
    ByNumber,
    /// By `diskseq` (`--open-by-diskseq`), then check the device number.
    /// Records without a diskseq fall back to opening by number.
    ByDiskseq,
}

/// The message blkback's fatal error carries when the device cannot be
/// used; the cause follows it.
const CREATING_VBD: &str = "creating vbd structure";

/// Opens the device `request` names and learns the facts the connect
/// transaction publishes. Every failure is fatal for the device.
pub fn open_disk(
    request: &OpenRequest,
    method: OpenMethod,
) -> Result<Opened<Arc<BlockDevice>>, Fatal> {
    let access = if request.mode.is_writable() {
        Access::ReadWrite
    } else {
        Access::ReadOnly
    };
    let disk = match (method, request.expected) {
        (OpenMethod::ByNumber, Some(seq)) => {
            diskseq::open_verified(DiskId::new(request.dev, seq), access).map_err(fatal)?
        }
        (OpenMethod::ByDiskseq, Some(seq)) => {
            let partition = sysfs::partition_number(request.dev);
            let disk = diskseq::open_by_diskseq(seq, partition, access).map_err(fatal)?;
            if disk.dev() != request.dev {
                return Err(Fatal::new(
                    Errno::NODEV,
                    format!(
                        "{CREATING_VBD}: diskseq {seq} is {} ({}), not the published {}",
                        disk.dev(),
                        disk.path().display(),
                        request.dev
                    ),
                ));
            }
            disk
        }
        // Legacy open: by number only (no `diskseq` in the record). The
        // fd's number is still checked, so a stale name cannot hand us
        // another device number.
        (_, None) => diskseq::open_by_number(request.dev, access).map_err(fatal)?,
    };
    if let Some(expected) = request.partition {
        check_partition(&disk, expected)?;
    }
    let facts = facts_of(&disk);
    Ok(Opened {
        disk: Arc::new(disk),
        facts,
    })
}

/// The opened device must be the partition the record describes: a
/// partition reports its disk's diskseq, so only number, start and length
/// tell it from the one a rewritten table put under the same number. Read
/// on the held fd (see [`BlockDevice::partition_extent`]).
fn check_partition(disk: &BlockDevice, expected: PartitionExtent) -> Result<(), Fatal> {
    let found = disk.partition_extent().map_err(fatal)?;
    if found == Some(expected) {
        return Ok(());
    }
    Err(Fatal::new(
        Errno::NODEV,
        format!(
            "{CREATING_VBD}: {} is {}, not the published {expected}",
            disk.path().display(),
            found.map_or_else(|| "a whole disk".to_owned(), |f| f.to_string())
        ),
    ))
}

/// The facts blkback's `connect()` reads from the `block_device`.
fn facts_of(disk: &BlockDevice) -> DiskFacts {
    let limits = sysfs::queue_limits(disk.dev());
    DiskFacts {
        sectors: disk.size_bytes() / 512,
        sector_size: disk.logical_block_size(),
        physical_sector_size: disk.physical_block_size(),
        removable: limits.removable,
        flush: limits.write_back_cache,
        discard: disk.discard().then_some(DiscardFacts {
            granularity: limits.discard_granularity,
            alignment: limits.discard_alignment,
            secure: false,
        }),
    }
}

/// The error node for an identity-library error: ENODEV for "not the
/// instance" (the patch's choice), ENOENT for a device number nothing
/// answers to (blkback's `xen_vbd_create()` when its open by number fails),
/// the system call's errno otherwise.
fn fatal(e: Error) -> Fatal {
    let errno = match &e {
        // blkback's open by number fails and xen_vbd_create() reports
        // ENOENT (docs/real-xen.md, kernel-differential).
        Error::NoSuchDevice { .. } => Errno::NOENT,
        Error::Stale { .. }
        | Error::WrongNumber { .. }
        | Error::NoSuchDiskSeq { .. }
        | Error::NoSuchPartition { .. }
        | Error::WrongBacking { .. } => Errno::NODEV,
        Error::Io { source, .. } => Errno::from_io_error(source).unwrap_or(Errno::IO),
        Error::NotBlockDevice { .. } => Errno::NOTBLK,
        _ => Errno::NODEV,
    };
    Fatal::new(errno, format!("{CREATING_VBD}: {e}"))
}
