//! Who else uses the disk `add` is about to publish — the data the sharing
//! rule (`sharing::check`) judges. The host's own users are gathered once,
//! before the publishing transaction: mounts of the device or its family,
//! and other loop devices bound to the same file. Other vbds are read inside
//! that transaction (their `physical-device`, then `diskseq` and `mode` of
//! those naming our disk), so a concurrent `add` that publishes first makes
//! our commit fail and the check run again with its record in view.

use std::collections::HashMap;

use diskseq::{DevNum, DiskSeq};
use xenstore::client::Transaction;

use super::config::Config;
use super::error::HotplugError;
use super::loops;
use super::mountinfo;
use super::sharing::{self, Holder, VmIdentity};
use super::target::Target;
use crate::schema::{self, node, BackendPath, Mode};

/// What the host itself does with the device: mounts and loop devices bound
/// to the same file. Gathered once, before the publishing transaction.
#[derive(Debug, Default)]
pub struct HostUsers {
    /// Device instances that count as "the same disk": ours, its partitions
    /// or parent disk, and other loop devices bound to the same file.
    pub same_disk: HashMap<DevNum, DiskSeq>,
    /// Host mounts of any of those.
    pub mounts: Vec<Holder>,
    /// Devices the host stacked on any of those (dm, md).
    pub stacked: Vec<Holder>,
    /// Other loop devices bound to the same file (by number).
    pub loops: Vec<(DevNum, Holder)>,
    /// Whether another vbd's record can name our disk, so the publishing
    /// transaction must read every other vbd's record. Always for a block
    /// device; for a file only when another loop device is bound to it: a
    /// vbd using the file uses it through such a loop device, and of two
    /// concurrent adds the later scan sees the earlier one's device (each
    /// attaches before it scans), so skipping the scan loses nothing.
    pub vbds_may_hold: bool,
}

impl HostUsers {
    pub(super) fn gather(cfg: &Config, target: &Target) -> Result<Self, HotplugError> {
        let id = target.id();
        let mut users = HostUsers::default();
        match target {
            Target::Block { .. } => {
                users.vbds_may_hold = true;
                for dev in sharing::device_family(&cfg.sysfs_root, id.dev()) {
                    users.same_disk.insert(dev, id.seq);
                    users.stacked.extend(
                        sharing::stacked_on(&cfg.sysfs_root, dev)
                            .into_iter()
                            .map(|holder| Holder::HostStack { dev, holder }),
                    );
                }
            }
            Target::Loop { backing, .. } => {
                // Our own device is brand new, without partitions (no
                // partscan): nobody can have mounted it. Users of the file
                // are users of the other loop devices bound to it.
                users.same_disk.insert(id.dev(), id.seq);
                for info in loops::bound_to(&cfg.proc_root, *backing, id.dev())? {
                    if info.id == id {
                        continue;
                    }
                    users.vbds_may_hold = true;
                    for dev in sharing::device_family(&cfg.sysfs_root, info.id.dev()) {
                        users.same_disk.insert(dev, info.id.seq);
                    }
                    users.loops.push((
                        info.id.dev(),
                        Holder::HostLoop {
                            path: info.path.clone(),
                            dev: info.id.dev(),
                            writable: !info.read_only,
                        },
                    ));
                }
                if users.loops.is_empty() {
                    return Ok(users);
                }
            }
        }
        let path = cfg.proc_root.join("self/mountinfo");
        let text = std::fs::read_to_string(&path).map_err(|e| HotplugError::MountInfo {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let mounts = mountinfo::parse(&text).map_err(|e| HotplugError::MountInfo {
            path,
            detail: e.to_string(),
        })?;
        users.mounts = mounts
            .into_iter()
            .filter(|m| users.same_disk.contains_key(&m.dev))
            .map(|m| Holder::HostMount {
                dev: m.dev,
                mount_point: m.mount_point,
                writable: m.writable,
            })
            .collect();
        Ok(users)
    }
}

/// Every vbd backend directory in this backend domain except ours.
pub(super) fn other_vbds(
    tx: &mut Transaction<'_>,
    backend: &BackendPath,
) -> Result<Vec<BackendPath>, HotplugError> {
    let frontends_dir = backend.frontend_dir();
    let root = frontends_dir
        .rsplit_once('/')
        .map_or(frontends_dir.as_str(), |(root, _)| root)
        .to_owned();
    let mut others = Vec::new();
    for fe in list(tx, &root)? {
        let Ok(fe_domid) = fe.parse::<u32>() else {
            continue;
        };
        for devid in list(tx, &format!("{root}/{fe}"))? {
            let Ok(devid) = devid.parse::<u32>() else {
                continue;
            };
            let other = match backend.backend_domid() {
                Some(be) => BackendPath::new_absolute(be, fe_domid, devid),
                None => BackendPath::new(fe_domid, devid),
            };
            if other != *backend {
                others.push(other);
            }
        }
    }
    Ok(others)
}

/// A directory's children; a directory that vanished has none.
fn list(tx: &mut Transaction<'_>, path: &str) -> Result<Vec<String>, HotplugError> {
    match tx.directory(path) {
        Ok(children) => Ok(children),
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// The device another vbd's `physical-device` names, if it is one of ours
/// (our disk, a partition or parent of it, another loop device bound to our
/// file). `Err` explains a value that cannot be parsed.
pub(super) fn same_disk_record(
    raw: Option<&[u8]>,
    host: &HostUsers,
) -> Result<Option<DevNum>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let dev = schema::physical_device_from_node(raw).ok().ok_or_else(|| {
        format!(
            "physical-device {:?} is malformed",
            String::from_utf8_lossy(raw)
        )
    })?;
    Ok(host.same_disk.contains_key(&dev).then_some(dev))
}

/// A vbd candidate with its device and what it turned out to be.
pub(super) type Classified<'a> = (&'a BackendPath, DevNum, Result<Option<Holder>, String>);

/// Classifies the vbds whose record names our disk: reads their `diskseq`
/// and `mode` in one batch (nothing when there are none). A record whose
/// diskseq differs from the live instance's is about a disk that no longer
/// exists: not a holder.
pub(super) fn vbd_holders<'a>(
    tx: &mut Transaction<'_>,
    candidates: &[(&'a BackendPath, DevNum)],
    frontend_id: u32,
    host: &HostUsers,
) -> Result<Vec<Classified<'a>>, HotplugError> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let paths: Vec<String> = candidates
        .iter()
        .flat_map(|(o, _)| [o.node(node::DISKSEQ), o.node(node::MODE)])
        .collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let values = tx.read_many(&refs)?;
    let mut classified = Vec::with_capacity(candidates.len());
    for (&(other, dev), vals) in candidates.iter().zip(values.chunks(2)) {
        let holder = classify(
            tx,
            other,
            dev,
            vals[0].as_deref(),
            vals[1].as_deref(),
            frontend_id,
            host,
        )?;
        classified.push((other, dev, holder));
    }
    Ok(classified)
}

/// One candidate vbd as a holder (see [`vbd_holders`]).
fn classify(
    tx: &mut Transaction<'_>,
    other: &BackendPath,
    dev: DevNum,
    raw_seq: Option<&[u8]>,
    raw_mode: Option<&[u8]>,
    frontend_id: u32,
    host: &HostUsers,
) -> Result<Result<Option<Holder>, String>, HotplugError> {
    if let Some(raw_seq) = raw_seq {
        let Ok(seq) = schema::diskseq_from_node(raw_seq) else {
            return Ok(Err(format!(
                "diskseq {:?} is malformed",
                String::from_utf8_lossy(raw_seq)
            )));
        };
        if host.same_disk.get(&dev) != Some(&seq) {
            return Ok(Ok(None));
        }
    }
    // An unreadable mode counts as writable: fail closed.
    let writable = raw_mode
        .and_then(|m| Mode::from_node(m).ok())
        .is_none_or(Mode::is_writable);
    let same_vm = other.frontend_domid() == frontend_id || {
        let ours = vm_identity(tx, frontend_id)?;
        let theirs = vm_identity(tx, other.frontend_domid())?;
        sharing::same_vm(&ours, &theirs)
    };
    Ok(Ok(Some(Holder::Vbd {
        backend: other.dir(),
        frontend_domid: other.frontend_domid(),
        writable,
        same_vm,
    })))
}

/// `/local/domain/<d>/vm`, and the `vm` of its `target` (stub domains).
fn vm_identity(
    tx: &mut Transaction<'_>,
    domid: u32,
) -> Result<VmIdentity, xenstore::client::Error> {
    let home = format!("/local/domain/{domid}");
    let values = tx.read_many(&[&format!("{home}/vm"), &format!("{home}/target")])?;
    let text = |v: &Option<Vec<u8>>| {
        v.as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .filter(|s| !s.is_empty())
    };
    let target_vm = match text(&values[1]).and_then(|t| t.trim().parse::<u32>().ok()) {
        Some(target) => tx
            .read_opt(&format!("/local/domain/{target}/vm"))?
            .and_then(|v| Some(String::from_utf8_lossy(&v).into_owned()).filter(|s| !s.is_empty())),
        None => None,
    };
    Ok(VmIdentity {
        domid,
        vm: text(&values[0]),
        target_vm,
    })
}
