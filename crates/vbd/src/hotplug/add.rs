//! `add`: read the inputs, open the target once, check sharing, publish the
//! record in one transaction, then hold the device until the backend has it.
//!
//! The xenstore work is laid out for the fewest requests and round trips
//! the protocol allows: one transaction, read once, written once. The first
//! round trip starts it and reads the inputs inside it (pipelined behind
//! TRANSACTION_START under the id the daemon will most likely give it: see
//! [`Client::start_transaction_and_read`]). The device is opened and
//! attached from those values while the transaction stays open; since it
//! read them, a toolstack rewriting one meanwhile makes the commit fail
//! and the work is checked again. The second round trip writes the record
//! (and, only for a backend that checks `diskseq`, registers the handoff
//! watches); the third commits. A file with no other user is published in
//! those three round trips and 16 requests; a block device, or a file some
//! other loop device is bound to, adds the reads of every other vbd's
//! record (the sharing scan) before the writes.
//!
//! Reading every other record inside the publishing transaction is what
//! makes the sharing check race-free without a global lock: if another add
//! publishes in between, our commit fails with EAGAIN and the check runs
//! again with its record in view.
//!
//! The transaction stays open while the device is attached (a few hundred
//! microseconds, one `LOOP_CONFIGURE`). That costs nothing but the chance
//! of a retry: xenstored transactions are optimistic, nobody waits for
//! ours, and a conflict is an EAGAIN at commit.

use std::path::PathBuf;
use std::time::Duration;

use xenstore::client::{Client, Transaction};

use super::config::Config;
use super::error::HotplugError;
use super::fault;
use super::handoff::{self, Handoff};
use super::holders::{self, HostUsers};
use super::log::Log;
use super::sharing;
use super::target::{self, Target};
use crate::schema::{self, node, BackendPath, Mode, PublishedDevice, SchemaError, XenbusState};

/// What a successful `add` did.
#[derive(Debug)]
pub enum AddOutcome {
    /// `physical-device` already existed (the script ran twice): nothing done.
    AlreadyPresent,
    /// The record was published; with the `opened` handoff, the backend
    /// also took the device.
    Published {
        /// What was published.
        record: PublishedDevice,
        /// How the device stays the published disk.
        handoff: Handoff,
        /// How long the backend took (zero for a persistent device).
        waited: Duration,
    },
}

/// A failed `add`, and whether its record had already been published (the
/// failure report must then withdraw it).
#[derive(Debug)]
pub struct AddFailure {
    /// What went wrong.
    pub error: HotplugError,
    /// The record is in xenstore.
    pub published: bool,
    /// The device the record names, still held: the caller drops it only
    /// after withdrawing the record, so the record never names a number
    /// freed under it.
    pub held: Option<Box<Target>>,
}

impl<E: Into<HotplugError>> From<E> for AddFailure {
    fn from(e: E) -> Self {
        AddFailure {
            error: e.into(),
            published: false,
            held: None,
        }
    }
}

/// The backend directory's inputs, as read in the first transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// `params`, raw (compared again at publish time).
    pub raw_params: Vec<u8>,
    /// `params`, checked.
    pub params: PathBuf,
    /// `mode`, raw.
    pub raw_mode: Vec<u8>,
    /// `mode`, parsed.
    pub mode: Mode,
    /// `frontend-id`.
    pub frontend_id: u32,
    /// `direct-io-safe` = 1.
    pub direct_io: bool,
    /// The backend wrote an `opened` node at probe.
    pub has_opened_node: bool,
}

const INPUT_NODES: [&str; 8] = [
    node::PHYSICAL_DEVICE,
    node::PARAMS,
    node::MODE,
    node::FRONTEND_ID,
    node::STATE,
    node::DIRECT_IO_SAFE,
    node::OPENED,
    node::DISKSEQ,
];

/// Runs `add`.
pub fn add(cfg: &Config, client: &mut Client, log: &mut Log) -> Result<AddOutcome, AddFailure> {
    let backend = &cfg.backend;
    let paths: Vec<String> = INPUT_NODES.iter().map(|n| backend.node(n)).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let (tx, values) = client.start_transaction_and_read(&refs)?;
    let Some(inputs) = Inputs::parse(backend, &values)? else {
        log.line("add: physical-device already present; nothing to do");
        return Ok(AddOutcome::AlreadyPresent);
    };
    fault::point("after-read");
    log.line(format_args!(
        "add: params {} mode {} frontend {}",
        inputs.params.display(),
        inputs.mode,
        inputs.frontend_id
    ));

    // Decided before attaching: a backend that checks diskseq gets an
    // autoclear device held until it says `opened`; any other a persistent
    // one, which nothing can free under the record.
    let handoff = Handoff::choose(cfg.handoff, inputs.has_opened_node);
    let opened = target::open(&inputs.params, inputs.mode, &cfg.sysfs_root, &cfg.proc_root)?;
    fault::point("after-open");
    let target = Target::attach(
        opened,
        inputs.mode,
        inputs.direct_io,
        handoff,
        &backend.loop_label(),
    )?;
    fault::point("after-attach");
    let record = target.record();
    log.line(format_args!(
        "add: {} is {} (diskseq {})",
        inputs.params.display(),
        record.physical_device_path.display(),
        target.id().seq
    ));

    let host = if inputs.mode.sharing_waived() {
        log.line("add: mode ! waives the sharing check");
        HostUsers::default()
    } else {
        HostUsers::gather(cfg, &target)?
    };
    let first = Attempt { values, handoff };
    let Some(known) = publish(tx, backend, &inputs, first, &target, &host, log)? else {
        log.line("add: another run published physical-device first; dropping this device");
        return Ok(AddOutcome::AlreadyPresent);
    };
    fault::point("after-publish");
    // One line (one write) for the record and, for a persistent device,
    // what becomes of it; each line's time stamp is the timeline.
    let persistent_loop = handoff == Handoff::Persistent && record.node.is_some();
    log.line(format_args!(
        "add: published physical-device {} diskseq {} (hex {}){}",
        record.physical_device.to_xenstore(),
        target.id().seq,
        target.id().seq.to_xenstore(),
        if persistent_loop {
            format!(
                "; {} stays attached until remove (the backend does not check diskseq)",
                record.physical_device_path.display()
            )
        } else {
            String::new()
        },
    ));

    let waited = match handoff {
        Handoff::Persistent => Duration::ZERO,
        Handoff::Opened => {
            log.line(format_args!(
                "add: holding the device until {} = 1",
                node::OPENED
            ));
            match handoff::wait_opened(client, backend, cfg.timeout, known) {
                Ok(waited) => {
                    log.line(format_args!(
                        "add: backend holds the device after {waited:?}"
                    ));
                    waited
                }
                Err(error) => {
                    return Err(AddFailure {
                        error,
                        published: true,
                        held: Some(Box::new(target)),
                    })
                }
            }
        }
    };
    // A persistent loop device now belongs to the record (`remove` detaches
    // it); an autoclear one lives exactly as long as the backend holds it,
    // once our fd closes here.
    target.hand_over();
    Ok(AddOutcome::Published {
        record,
        handoff,
        waited,
    })
}

impl Inputs {
    /// Checks the values of [`INPUT_NODES`], in that order; `None` when
    /// `physical-device` already exists.
    fn parse(
        backend: &BackendPath,
        values: &[Option<Vec<u8>>],
    ) -> Result<Option<Inputs>, HotplugError> {
        let schema = |source: SchemaError| HotplugError::Schema {
            backend: backend.dir(),
            source,
        };
        if let Some(raw_dev) = &values[0] {
            check_existing_record(raw_dev, values[7].as_deref()).map_err(schema)?;
            return Ok(None);
        }
        let required = |i: usize| {
            values[i].clone().ok_or_else(|| {
                schema(SchemaError::Missing {
                    node: INPUT_NODES[i].to_owned(),
                })
            })
        };
        check_waiting(backend, values[4].as_deref())?;
        let raw_params = required(1)?;
        let params = schema::absolute_path(node::PARAMS, &raw_params).map_err(schema)?;
        let raw_mode = required(2)?;
        let mode = Mode::from_node(&raw_mode).map_err(schema)?;
        let frontend_id = schema::domid(node::FRONTEND_ID, &required(3)?).map_err(schema)?;
        if frontend_id != backend.frontend_domid() {
            return Err(schema(SchemaError::Invalid {
                node: node::FRONTEND_ID.into(),
                value: frontend_id.to_string(),
                reason: format!(
                    "does not match the backend path's frontend {}",
                    backend.frontend_domid()
                ),
            }));
        }
        // `opened` = 1 with no physical-device: the backend holds a device
        // from an earlier attempt and will not take another ("changing
        // physical device not supported"); waiting for `opened` would end
        // at once, on the wrong device.
        if values[6].as_deref() == Some(b"1") {
            return Err(HotplugError::NotWaiting {
                backend: backend.dir(),
                state: "opened = 1 (the backend already holds a device)".into(),
            });
        }
        Ok(Some(Inputs {
            raw_params,
            params,
            raw_mode,
            mode,
            frontend_id,
            direct_io: schema::flag(values[5].as_deref()),
            has_opened_node: values[6].is_some(),
        }))
    }

    /// The first input that differs from `acted_on` (what the device was
    /// prepared from), if any.
    fn changed_since(&self, acted_on: &Inputs) -> Option<&'static str> {
        if self.raw_params != acted_on.raw_params {
            Some(node::PARAMS)
        } else if self.raw_mode != acted_on.raw_mode {
            Some(node::MODE)
        } else if self.frontend_id != acted_on.frontend_id {
            Some(node::FRONTEND_ID)
        } else if self.direct_io != acted_on.direct_io {
            Some(node::DIRECT_IO_SAFE)
        } else if self.has_opened_node != acted_on.has_opened_node {
            Some(node::OPENED)
        } else {
            None
        }
    }
}

/// A record already there (the script ran twice, or another script wrote
/// it) is left alone — if it is one: a `physical-device` or `diskseq` that
/// does not parse is an error, not a device.
fn check_existing_record(raw_dev: &[u8], raw_seq: Option<&[u8]>) -> Result<(), SchemaError> {
    schema::physical_device_from_node(raw_dev)?;
    if let Some(raw_seq) = raw_seq {
        schema::diskseq_from_node(raw_seq)
            .map_err(|e| SchemaError::invalid(node::DISKSEQ, raw_seq, e))?;
    }
    Ok(())
}

/// The backend must still be waiting for a device: not closing, not gone.
fn check_waiting(backend: &BackendPath, raw_state: Option<&[u8]>) -> Result<(), HotplugError> {
    let not_waiting = |state: String| HotplugError::NotWaiting {
        backend: backend.dir(),
        state,
    };
    let raw = raw_state.ok_or_else(|| not_waiting("missing".into()))?;
    let state = XenbusState::from_node(raw).map_err(|source| HotplugError::Schema {
        backend: backend.dir(),
        source,
    })?;
    match state {
        XenbusState::Initialising
        | XenbusState::InitWait
        | XenbusState::Initialised
        | XenbusState::Connected => Ok(()),
        other => Err(not_waiting(format!("{} ({other:?})", other.as_u32()))),
    }
}

/// What the publishing transaction's first run starts from: the inputs as
/// its first round trip read them, and the handoff chosen from them.
struct Attempt {
    values: Vec<Option<Vec<u8>>>,
    handoff: Handoff,
}

/// The publishing transaction, started in the first round trip: its first
/// run, and any re-run after EAGAIN. `None` when another run published
/// first; else the values of `opened` and `state` as of the commit, where
/// the handoff wait starts.
///
/// A re-run reads the inputs again and stops if one changed from what the
/// device was prepared from. Then, for the sharing scan only, every other
/// vbd's `physical-device` in one pipelined batch and, only for records that
/// name our disk, their `diskseq` and `mode` (usually none). Then the
/// record's writes in one batch, with the handoff watches when the backend
/// checks `diskseq` (registered once, before the commit: a change after the
/// commit fires them, a change before it to a node read here fails the
/// commit).
fn publish(
    tx: Transaction<'_>,
    backend: &BackendPath,
    inputs: &Inputs,
    first: Attempt,
    target: &Target,
    host: &HostUsers,
    log: &mut Log,
) -> Result<Option<handoff::Known>, HotplugError> {
    let record = target.record();
    let mut nodes = record.to_nodes();
    nodes.push((node::HOTPLUG_STATUS, b"connected".to_vec()));
    let writes: Vec<(String, Vec<u8>)> = nodes
        .into_iter()
        .map(|(n, v)| (backend.node(n), v))
        .collect();
    let items: Vec<(&str, &[u8])> = writes
        .iter()
        .map(|(p, v)| (p.as_str(), v.as_slice()))
        .collect();
    let watched = handoff::watched_nodes(backend);
    let watches: Vec<(&str, &str)> = match first.handoff {
        Handoff::Opened => watched
            .iter()
            .map(|path| (path.as_str(), handoff::WATCH_TOKEN))
            .collect(),
        Handoff::Persistent => Vec::new(),
    };
    let mut watches_pending = !watches.is_empty();
    let check_sharing = !inputs.mode.sharing_waived();
    let scan = check_sharing && host.vbds_may_hold;
    let input_paths: Vec<String> = INPUT_NODES.iter().map(|n| backend.node(n)).collect();
    let input_refs: Vec<&str> = input_paths.iter().map(String::as_str).collect();
    let mut skipped = Vec::new();
    let mut attempts = 0u32;
    let run =
        |tx: &mut Transaction<'_>, own: Vec<Option<Vec<u8>>>| -> Result<handoff::Known, Halt> {
            attempts += 1;
            skipped.clear();
            // The first run's values are the ones the device was prepared from.
            if attempts > 1 {
                let Some(now) = Inputs::parse(backend, &own)? else {
                    return Err(Halt::PublishedByAnother);
                };
                if let Some(node) = now.changed_since(inputs) {
                    return Err(HotplugError::InputsChanged {
                        backend: backend.dir(),
                        node,
                    }
                    .into());
                }
            }

            if check_sharing {
                let others = if scan {
                    holders::other_vbds(tx, backend)?
                } else {
                    Vec::new()
                };
                let mut candidates = Vec::new();
                if !others.is_empty() {
                    let paths: Vec<String> = others
                        .iter()
                        .map(|o| o.node(node::PHYSICAL_DEVICE))
                        .collect();
                    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
                    for (other, raw) in others.iter().zip(tx.read_many(&refs)?) {
                        match holders::same_disk_record(raw.as_deref(), host) {
                            Ok(Some(dev)) => candidates.push((other, dev)),
                            Ok(None) => {}
                            Err(reason) => skipped.push(format!("{other}: {reason}")),
                        }
                    }
                }
                let mut holders = host.mounts.clone();
                holders.extend(host.stacked.iter().cloned());
                let mut vbd_devs = Vec::new();
                for (other, dev, holder) in
                    holders::vbd_holders(tx, &candidates, inputs.frontend_id, host)?
                {
                    match holder {
                        Ok(Some(holder)) => {
                            vbd_devs.push(dev);
                            holders.push(holder);
                        }
                        Ok(None) => {}
                        Err(reason) => skipped.push(format!("{other}: {reason}")),
                    }
                }
                // A loop device that some vbd publishes is that vbd's, and the
                // same-VM exemption applies to it; the rest are the host's.
                holders.extend(
                    host.loops
                        .iter()
                        .filter(|(dev, _)| !vbd_devs.contains(dev))
                        .map(|(_, h)| h.clone()),
                );
                sharing::check(&inputs.params, inputs.mode, &holders)?;
            }
            fault::point("before-publish");
            if watches_pending {
                watches_pending = false;
                tx.watch_and_write_many(&watches, &items)?;
            } else {
                tx.write_many(&items)?;
            }
            Ok(handoff::Known {
                opened: own[6].clone(),
                state: own[4].clone(),
            })
        };
    let result = tx.run_reading(&input_refs, first.values, run);
    for line in &skipped {
        log.line(format_args!(
            "add: sharing check skipped unreadable record {line}"
        ));
    }
    if attempts > 1 {
        log.line(format_args!(
            "add: publishing took {attempts} transactions (concurrent changes)"
        ));
    }
    match result {
        Ok(known) => Ok(Some(known)),
        Err(Halt::PublishedByAnother) => Ok(None),
        Err(Halt::Failed(e)) => Err(e),
    }
}

/// Why the publishing transaction stops without committing (an `Err` makes
/// [`Client::transaction`] abort, which also discards writes already sent).
#[derive(Debug)]
enum Halt {
    /// Another run published `physical-device` first.
    PublishedByAnother,
    /// The check or the daemon failed.
    Failed(HotplugError),
}

impl<E: Into<HotplugError>> From<E> for Halt {
    fn from(e: E) -> Self {
        Halt::Failed(e.into())
    }
}
