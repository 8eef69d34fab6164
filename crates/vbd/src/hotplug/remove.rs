//! `remove`: withdraw the record, then detach the loop device `add` created
//! — only if it is provably still that device.
//!
//! The record is read in one transaction. The detach opens the device by
//! number and checks number, diskseq and backing file on the fd before
//! `LOOP_CLR_FD` (the stock script runs `losetup -d` by name). A device
//! already gone (autoclear, after the backend closed it) is the normal case
//! and a success; a different disk under the number is left alone, the
//! record too, and the run fails.
//!
//! Only then are `physical-device` and, after it, `diskseq` deleted, in one
//! transaction, so no reader sees a half-withdrawn record. Detaching before
//! withdrawing makes a killed `remove` harmless: run again, it finds the
//! device gone and withdraws the record (the other order would leak a
//! persistent loop device whose record is already deleted). A persistent
//! device is first marked `diskseq-autoclear` = 1, so the second run also
//! accepts the freed number naming another disk by then.

use std::path::Path;

use diskseq::{DiskId, FileId};
use xenstore::client::Client;

use super::config::Config;
use super::error::HotplugError;
use super::fault;
use super::log::Log;
use crate::schema::{self, node, PublishedDevice};

/// What a successful `remove` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveOutcome {
    /// There was no record.
    NoRecord,
    /// The record named a block device given by the user: record withdrawn,
    /// device untouched.
    UserDevice,
    /// The loop device was detached.
    Detached,
    /// The loop device was already gone.
    AlreadyGone,
}

const RECORD_NODES: [&str; 6] = [
    node::PHYSICAL_DEVICE,
    node::PHYSICAL_DEVICE_PATH,
    node::DISKSEQ,
    node::NODE,
    node::PARAMS,
    node::AUTOCLEAR,
];

/// Runs `remove`.
pub fn remove(
    cfg: &Config,
    client: &mut Client,
    log: &mut Log,
) -> Result<RemoveOutcome, HotplugError> {
    let backend = &cfg.backend;
    let paths: Vec<String> = RECORD_NODES.iter().map(|n| backend.node(n)).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let values = client.read_many_atomically(&refs)?;
    let record =
        PublishedDevice::from_values(&values[..4]).map_err(|source| HotplugError::Schema {
            backend: backend.dir(),
            source,
        })?;
    let Some(record) = record else {
        log.line("remove: no physical-device; nothing to do");
        return Ok(RemoveOutcome::NoRecord);
    };
    let outcome = match &record.node {
        None => {
            log.line(format_args!(
                "remove: {} was given by the user; not detached",
                record.physical_device_path.display()
            ));
            RemoveOutcome::UserDevice
        }
        Some(loop_node) => {
            let autoclear = values[5].as_deref() == Some(b"1");
            if !autoclear {
                mark_detaching(client, backend)?;
            }
            detach(
                backend,
                &record,
                loop_node,
                values[4].as_deref(),
                autoclear,
                log,
            )?
        }
    };
    fault::point("after-detach");
    withdraw(client, backend, &values, log)?;
    Ok(outcome)
}

/// Before detaching a persistent device, records that it may be gone by our
/// own hand: the `diskseq-autoclear` marker that `add` writes for a device
/// handed over with autoclear.
///
/// A `remove` killed between its detach and its withdrawal is finished by a
/// second run; by then the freed number may already name someone else's
/// disk (`LOOP_CTL_GET_FREE` hands out the lowest free minor). Without the
/// marker that second run could not tell its own detach from a swap behind
/// its back and would fail; with it, the number naming another disk means
/// "gone", exactly as after autoclear. This run still judges by what it
/// read before writing the marker, so a swap it finds itself is refused.
fn mark_detaching(
    client: &mut Client,
    backend: &crate::schema::BackendPath,
) -> Result<(), HotplugError> {
    client.write(&backend.node(node::AUTOCLEAR), "1")?;
    Ok(())
}

/// Detaches the loop device of `record` if it is provably that device.
///
/// `autoclear`: the record says the device was handed to the backend with
/// autoclear, so it detached itself when the backend closed it, and its
/// number may name anyone's disk by now: that is "gone", not a swap. A
/// persistent device (no backend signal) found replaced was swapped behind
/// our back: nothing is touched and the run fails.
fn detach(
    backend: &crate::schema::BackendPath,
    record: &PublishedDevice,
    loop_node: &Path,
    raw_params: Option<&[u8]>,
    autoclear: bool,
    log: &mut Log,
) -> Result<RemoveOutcome, HotplugError> {
    let Some(seq) = record.diskseq else {
        return Err(HotplugError::Unverifiable {
            backend: backend.dir(),
            detail: format!(
                "record for {} has no diskseq, so the device cannot be proven to be the one created",
                loop_node.display()
            ),
        });
    };
    let id = DiskId {
        major: record.physical_device.major,
        minor: record.physical_device.minor,
        seq,
    };
    // The backing file, when `params` still names one: the third proof.
    let backing = raw_params
        .and_then(|raw| schema::absolute_path(node::PARAMS, raw).ok())
        .and_then(|p| file_id(&p));
    if backing.is_none() {
        log.line("remove: params no longer names a file; checking number and diskseq only");
    }
    match diskseq::detach_verified(&id, backing) {
        Ok(()) => {
            log.line(format_args!(
                "remove: detached {} ({id})",
                loop_node.display()
            ));
            Ok(RemoveOutcome::Detached)
        }
        Err(e) if is_gone(&e, &id, loop_node) => {
            log.line(format_args!(
                "remove: {} already detached ({e})",
                loop_node.display()
            ));
            Ok(RemoveOutcome::AlreadyGone)
        }
        Err(e @ (diskseq::Error::Stale { .. } | diskseq::Error::NotLoop { .. })) if autoclear => {
            log.line(format_args!(
                "remove: {} detached itself when the backend closed it; {} now names another disk ({e}), left alone",
                loop_node.display(),
                id.dev()
            ));
            Ok(RemoveOutcome::AlreadyGone)
        }
        Err(e) if e.is_stale() || matches!(e, diskseq::Error::NotLoop { .. }) => {
            Err(HotplugError::Swapped {
                path: loop_node.to_owned(),
                dev: id.dev(),
                recorded: seq,
                detail: e.to_string(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes `physical-device`, then `diskseq`, and the `diskseq-autoclear`
/// marker, in one transaction — if they still hold what was read (a record
/// rewritten meanwhile is not ours). The marker goes with the record: left
/// behind, it would tell the `remove` of a later persistent record that a
/// device swapped behind its back had merely detached itself.
fn withdraw(
    client: &mut Client,
    backend: &crate::schema::BackendPath,
    read: &[Option<Vec<u8>>],
    log: &mut Log,
) -> Result<(), HotplugError> {
    let pd = backend.node(node::PHYSICAL_DEVICE);
    let seq = backend.node(node::DISKSEQ);
    let marker = backend.node(node::AUTOCLEAR);
    let withdrawn = client.transaction(|tx| -> Result<bool, HotplugError> {
        let now = tx.read_many(&[&pd, &seq, &marker])?;
        if now[0] != read[0] || now[1] != read[2] {
            return Ok(false);
        }
        let present: Vec<&str> = [&pd, &seq, &marker]
            .into_iter()
            .zip(&now)
            .filter(|(_, value)| value.is_some())
            .map(|(path, _)| path.as_str())
            .collect();
        tx.rm_many(&present)?;
        Ok(true)
    })?;
    if withdrawn {
        log.line("remove: withdrew physical-device and diskseq");
    } else {
        log.line("remove: record changed meanwhile; left in place");
    }
    Ok(())
}

/// True when the recorded instance no longer exists at all: the number is
/// unused, or the loop device there is unbound. A bound device with another
/// diskseq is a different disk, not "gone".
fn is_gone(error: &diskseq::Error, id: &DiskId, loop_node: &Path) -> bool {
    match error {
        diskseq::Error::NotBound { .. } | diskseq::Error::NoSuchDevice { .. } => true,
        diskseq::Error::Io { source, .. } => {
            matches!(source.raw_os_error(), Some(e) if e == rustix::io::Errno::NXIO.raw_os_error() || e == rustix::io::Errno::NOENT.raw_os_error())
        }
        diskseq::Error::Stale { .. } => {
            // Autoclear bumped the diskseq when it detached: gone if unbound now.
            match diskseq::BlockDevice::open(loop_node, diskseq::Access::ReadOnly) {
                Ok(device) => {
                    device.dev() == id.dev() && matches!(diskseq::loop_info(&device), Ok(None))
                }
                Err(_) => false,
            }
        }
        _ => false,
    }
}

fn file_id(path: &Path) -> Option<FileId> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    FileId::of(&fd).ok()
}
