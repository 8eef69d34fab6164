//! `remove`: withdraw the record, then detach the loop device `add` created
//! — only if it provably still is that device.
//!
//! The record is read and withdrawn in one transaction *first*: from then on
//! no backend can be sent to the number, so detaching it can never leave a
//! record that names a freed (and perhaps reused) minor — not even when this
//! run is killed in between. What a kill can leave is a loop device without
//! a record; it carries its backend's label (`diskseq-vbd:…`, see
//! `schema::BackendPath::loop_label`), so the next `remove` of the same
//! backend, or `diskseq loop gc`, finds it.
//!
//! The device is identified by what `add` recorded from its fds — number,
//! diskseq, backing file (`diskseq-backing`: `st_dev`/`st_ino`) — plus the
//! label, all checked on one fd before `LOOP_CLR_FD`; never by resolving
//! `params` again (a symlink may point elsewhere by now). Where the kernel
//! keeps a loop device's diskseq across attaches (before 6.5), the label
//! and the inode are what tell our binding from a later one.
//!
//! No record (an `add` killed before it published, or a second `remove`):
//! every loop device labelled for this backend and bound to the file
//! `params` names is detached, each verified the same way.

use diskseq::{DiskId, FileId, LoopLabel};
use xenstore::client::Client;

use super::config::Config;
use super::error::HotplugError;
use super::fault;
use super::log::Log;
use crate::schema::{self, node, BackendPath, PublishedDevice};

/// What a successful `remove` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveOutcome {
    /// There was no record; this many loop devices labelled for the backend
    /// (left by an `add` killed before it published) were detached.
    NoRecord {
        /// Devices detached.
        swept: usize,
    },
    /// The record named a block device given by the user: record withdrawn,
    /// device untouched.
    UserDevice,
    /// The loop device was detached.
    Detached,
    /// The loop device was already gone (autoclear after the backend closed
    /// it, or detached by someone else); whatever has its number now is not
    /// ours and was left alone.
    AlreadyGone,
}

/// Runs `remove`.
pub fn remove(
    cfg: &Config,
    client: &mut Client,
    log: &mut Log,
) -> Result<RemoveOutcome, HotplugError> {
    let backend = &cfg.backend;
    let withdrawn = withdraw(client, backend)?;
    fault::point("after-withdraw");
    let label = backend.loop_label();
    let params_file = withdrawn
        .params
        .as_deref()
        .and_then(|raw| schema::absolute_path(node::PARAMS, raw).ok())
        .and_then(|path| file_id(&path));
    let sweep = |log: &mut Log| sweep(backend, &label, params_file, log);
    let record = match withdrawn.record {
        None => None,
        Some(values) => match PublishedDevice::from_values(&values) {
            Ok(record) => record,
            Err(e) => {
                // The label still finds what this backend's add attached.
                log.line(format_args!(
                    "remove: withdrew an unreadable record ({e}); looking for devices labelled {label}"
                ));
                None
            }
        },
    };
    let Some(record) = record else {
        let swept = sweep(log)?;
        return Ok(RemoveOutcome::NoRecord { swept });
    };
    log.line("remove: withdrew the record");
    let (Some(loop_node), Some(seq)) = (&record.node, record.diskseq) else {
        if record.node.is_none() {
            log.line(format_args!(
                "remove: {} was given by the user; not detached",
                record.physical_device_path.display()
            ));
            return Ok(RemoveOutcome::UserDevice);
        }
        log.line("remove: the record has no diskseq; looking for the device by its label");
        sweep(log)?;
        return Ok(RemoveOutcome::AlreadyGone);
    };
    let id = DiskId {
        major: record.physical_device.major,
        minor: record.physical_device.minor,
        seq,
    };
    match diskseq::detach_labeled(&id, record.backing, &label) {
        Ok(()) => {
            log.line(format_args!(
                "remove: detached {} ({id})",
                loop_node.display()
            ));
            Ok(RemoveOutcome::Detached)
        }
        Err(e) if is_not_ours(&e) => {
            log.line(format_args!(
                "remove: {} ({id}) is gone; {} now is not ours ({e}), left alone",
                loop_node.display(),
                id.dev()
            ));
            Ok(RemoveOutcome::AlreadyGone)
        }
        Err(e) => Err(e.into()),
    }
}

/// What [`withdraw`] read.
struct Withdrawn {
    /// The record's nodes ([`PublishedDevice::NODES`]), if there was a
    /// `physical-device` (then deleted).
    record: Option<Vec<Option<Vec<u8>>>>,
    /// `params`, read in the same batch (for the sweep).
    params: Option<Vec<u8>>,
}

/// Reads the record (and `params`) and deletes the record's nodes, in one
/// transaction: three round trips (START with the reads, the removals, the
/// commit).
fn withdraw(client: &mut Client, backend: &BackendPath) -> Result<Withdrawn, HotplugError> {
    let paths: Vec<String> = PublishedDevice::NODES
        .iter()
        .chain([&node::PARAMS])
        .map(|n| backend.node(n))
        .collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let record_refs = &refs[..PublishedDevice::NODES.len()];
    let withdrawn =
        client.transaction_reading(&refs, |tx, mut values| -> Result<_, HotplugError> {
            let params = values.pop().flatten();
            if values[0].is_none() {
                return Ok(Withdrawn {
                    record: None,
                    params,
                });
            }
            let present: Vec<&str> = record_refs
                .iter()
                .zip(&values)
                .filter(|(_, value)| value.is_some())
                .map(|(path, _)| *path)
                .collect();
            tx.rm_many(&present)?;
            Ok(Withdrawn {
                record: Some(values),
                params,
            })
        })?;
    Ok(withdrawn)
}

/// Detaches every loop device labelled for `backend` — and bound to the
/// file `params` names now, when it names one: a label is unique per
/// backend on a host, but a device of the same backend path made for
/// another file (a toolstack that rewrote `params`, or a second xenstore
/// on the host, as in tests) is left to `diskseq loop gc`. Each is verified
/// on its fd (number, diskseq, backing file and label as listed). Returns
/// how many.
fn sweep(
    backend: &BackendPath,
    label: &LoopLabel,
    params_file: Option<FileId>,
    log: &mut Log,
) -> Result<usize, HotplugError> {
    let mut swept = 0;
    for info in diskseq::list_loops()? {
        if info.label.as_ref() != Some(label) {
            continue;
        }
        if params_file.is_some_and(|file| file != info.backing) {
            log.line(format_args!(
                "remove: {} ({}) is labelled for {backend} but bound to another file than params; left for diskseq loop gc",
                info.path.display(),
                info.id
            ));
            continue;
        }
        match diskseq::detach_labeled(&info.id, Some(info.backing), label) {
            Ok(()) => {
                swept += 1;
                log.line(format_args!(
                    "remove: detached {} ({}), left by an add of {backend} that did not publish",
                    info.path.display(),
                    info.id
                ));
            }
            // Detached or rebound since the listing: not ours any more.
            Err(e) if is_not_ours(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if swept == 0 {
        log.line("remove: no record and no device labelled for this backend; nothing to do");
    }
    Ok(swept)
}

/// The device at the number is not the one we attached any more: gone,
/// unbound, or another disk. Nothing to detach.
fn is_not_ours(error: &diskseq::Error) -> bool {
    use diskseq::Error as E;
    match error {
        E::NotBound { .. } | E::NoSuchDevice { .. } | E::NotLoop { .. } => true,
        e if e.is_stale() => true,
        E::Io { source, .. } => matches!(
            source.raw_os_error(),
            Some(e) if e == rustix::io::Errno::NXIO.raw_os_error()
                || e == rustix::io::Errno::NOENT.raw_os_error()
        ),
        _ => false,
    }
}

/// The identity of the file `path` names now, if any (`O_PATH`: opens
/// nothing).
fn file_id(path: &std::path::Path) -> Option<FileId> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    FileId::of(&fd).ok()
}
