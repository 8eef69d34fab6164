//! One vbd's backend state machine, as pure logic.
//!
//! This is xen-blkback's `xenbus.c` reduced to its decisions: the machine is
//! fed what the event loop read from xenstore (one snapshot per watch event)
//! and answers with the [`Effect`]s to apply, in order. It never talks to
//! xenstore itself, so every ordering rule of the protocol — `opened` = "0"
//! before the `physical-device` watch, the error node before Closing, the
//! release of the disk before Closed — is visible in the effect list and
//! checked by unit tests without a daemon. The one piece of real I/O, opening
//! the disk, is passed in as a closure so that the machine decides *whether*
//! to open and the caller decides *how*.
//!
//! The opened disk (`D`, a [`diskseq::BlockDevice`] in production) lives here:
//! the machine holds the fd from the moment the identity check passed until
//! the device is released, exactly like blkback holds its `bdev_handle`.

use diskseq::{DevNum, DiskSeq, PartitionExtent};

use crate::backend::policy::{expected_diskseq, DiskseqPolicy};
use crate::backend::Fatal;
use vbd::schema::{self, node, Mode, XenbusState};

/// What the backend advertises at probe (blkback's module parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeFeatures {
    /// `feature-max-indirect-segments` (blkback: 256).
    pub max_indirect_segments: u32,
    /// `multi-queue-max-queues` (blkback: the number of online CPUs).
    pub max_queues: u32,
    /// `max-ring-page-order` (blkback: 4).
    pub max_ring_page_order: u32,
}

impl ProbeFeatures {
    /// blkback's defaults on this host.
    pub fn host_default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        ProbeFeatures {
            max_indirect_segments: 256,
            max_queues: u32::try_from(cpus).unwrap_or(u32::MAX),
            max_ring_page_order: 4,
        }
    }
}

/// The nodes read, in one transaction, when `physical-device` fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalSnapshot {
    /// `physical-device` (backend dir).
    pub physical_device: Option<Vec<u8>>,
    /// `diskseq` (backend dir).
    pub diskseq: Option<Vec<u8>>,
    /// `diskseq-partition` (backend dir).
    pub partition: Option<Vec<u8>>,
    /// `mode` (backend dir).
    pub mode: Option<Vec<u8>>,
    /// `device-type` (frontend dir).
    pub frontend_device_type: Option<Vec<u8>>,
    /// `discard-enable` (backend dir; absent = enabled).
    pub discard_enable: bool,
}

/// What the backend asks of the opener: a device number, the instance it
/// must be (when the record names one), and how to open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRequest {
    /// `physical-device`.
    pub dev: DevNum,
    /// `diskseq`, when it is to be checked.
    pub expected: Option<DiskSeq>,
    /// `diskseq-partition`, when it is to be checked: the opened device
    /// must be that partition.
    pub partition: Option<PartitionExtent>,
    /// From `mode`: read-only unless writable.
    pub mode: Mode,
    /// The frontend asked for a cdrom.
    pub cdrom: bool,
}

/// Discard limits of an opened disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardFacts {
    /// `discard-granularity`, bytes.
    pub granularity: u64,
    /// `discard-alignment`, bytes.
    pub alignment: u64,
    /// `discard-secure`.
    pub secure: bool,
}

/// Everything the connect transaction publishes about the opened disk,
/// learned from its fd (and its sysfs entry, pinned by that fd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskFacts {
    /// Size in 512-byte sectors, whatever the sector size.
    pub sectors: u64,
    /// Logical block size in bytes.
    pub sector_size: u32,
    /// Physical block size in bytes.
    pub physical_sector_size: u32,
    /// The disk reports removable media.
    pub removable: bool,
    /// The disk has a volatile write cache (flush is meaningful).
    pub flush: bool,
    /// Discard support, if any.
    pub discard: Option<DiscardFacts>,
}

/// An opened disk and what it told us.
#[derive(Debug)]
pub struct Opened<D> {
    /// The open device (holds the fd).
    pub disk: D,
    /// Its geometry and features.
    pub facts: DiskFacts,
}

/// The frontend's ring description, as `connect_ring` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingInfo {
    /// `ring-ref`.
    pub ring_ref: u32,
    /// `event-channel`.
    pub event_channel: u32,
    /// `protocol` (blkback's default when absent: the native ABI).
    pub protocol: String,
}

/// The ring ABIs blkback knows.
const PROTOCOLS: [&str; 3] = ["x86_64-abi", "x86_32-abi", "arm-abi"];

impl RingInfo {
    /// Parses the frontend's nodes `ring-ref`, `event-channel`, `protocol`
    /// (absent → native), failing the way `connect_ring` does.
    pub fn from_nodes(
        frontend: &str,
        ring_ref: Option<&[u8]>,
        event_channel: Option<&[u8]>,
        protocol: Option<&[u8]>,
    ) -> Result<Self, Fatal> {
        let number = |name: &str, raw: Option<&[u8]>| -> Result<u32, Fatal> {
            let raw = raw.ok_or_else(|| {
                Fatal::new(
                    rustix::io::Errno::NOENT,
                    format!("reading {frontend}/{name}"),
                )
            })?;
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    Fatal::new(
                        rustix::io::Errno::INVAL,
                        format!("reading {frontend}/{name}"),
                    )
                })
        };
        let ring_ref = number(node::frontend::RING_REF, ring_ref)?;
        let event_channel = number(node::frontend::EVENT_CHANNEL, event_channel)?;
        let protocol = match protocol {
            None => PROTOCOLS[0].to_owned(),
            Some(raw) => {
                let text = String::from_utf8_lossy(raw).into_owned();
                if !PROTOCOLS.contains(&text.as_str()) {
                    return Err(Fatal::new(
                        rustix::io::Errno::NOSYS,
                        format!("unknown fe protocol {text}"),
                    ));
                }
                text
            }
        };
        Ok(RingInfo {
            ring_ref,
            event_channel,
            protocol,
        })
    }
}

/// What the loop read when the frontend's `state` fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendView {
    /// The frontend's state (Unknown when its dir is gone).
    pub state: XenbusState,
    /// The ring nodes, parsed (only consulted for Initialised/Connected).
    pub ring: Result<RingInfo, Fatal>,
    /// Backend `online`.
    pub online: bool,
    /// Backend `discard-enable` (absent = enabled).
    pub discard_enable: bool,
}

/// One step for the event loop to carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Delete a stale `error/<backend-path>` left by an earlier device.
    RemoveErrorNode,
    /// Write one backend node.
    Write(&'static str, String),
    /// Set the watch on `<backend>/physical-device` (fires once at once).
    WatchPhysicalDevice,
    /// Set the watch on `<frontend>/state` (fires once at once).
    WatchFrontend,
    /// Read the `physical-device` record again (after a reconnect).
    RecheckPhysicalDevice,
    /// Write the connect nodes in one transaction (retried on EAGAIN).
    Connect(Vec<(&'static str, String)>),
    /// Switch the backend `state` (skipped when the dir is gone).
    SwitchState(XenbusState),
    /// `xenbus_dev_fatal`: write the error node (a Closing switch follows).
    Fatal(Fatal),
    /// Something worth a log line.
    Log(String),
    /// The machine now holds a disk (the loop publishes it to observers).
    DiskHeld,
    /// The machine dropped its disk: the fd is closed.
    DiskReleased,
    /// The device is gone for this backend: forget it, drop its watches.
    Unregister,
}

/// How the machine was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new device (backend `state` = Initialising): blkback's probe.
    Probe,
    /// A device found in xenstore at startup, in this backend state: resume.
    Resume(XenbusState),
}

/// One vbd's backend state machine. See the module docs.
#[derive(Debug)]
pub struct VbdMachine<D> {
    state: XenbusState,
    physical: Option<DevNum>,
    vbd: Option<Vbd<D>>,
    ring: Option<RingInfo>,
    gone: bool,
}

#[derive(Debug)]
struct Vbd<D> {
    opened: Opened<D>,
    mode: Mode,
    cdrom: bool,
}

impl<D> VbdMachine<D> {
    /// Creates the machine and returns the effects of its probe (or resume).
    ///
    /// Probe, as blkback with the diskseq patches: feature nodes, `opened` =
    /// "0", *then* the `physical-device` watch (so a script waiting for
    /// `opened` can never see a "1" left from before), `max-ring-page-order`,
    /// InitWait, and the frontend watch.
    ///
    /// Resume after a restart keeps the state the previous run reached: a
    /// connected device is reopened and re-verified (the watch fires at once)
    /// without dropping to InitWait under a connected guest; a device that is
    /// closing or closed is only followed to its end.
    pub fn start(how: Start, features: ProbeFeatures) -> (Self, Vec<Effect>) {
        let mut machine = VbdMachine {
            state: XenbusState::Unknown,
            physical: None,
            vbd: None,
            ring: None,
            gone: false,
        };
        let mut fx = Vec::new();
        match how {
            Start::Probe | Start::Resume(XenbusState::Initialising | XenbusState::Unknown) => {
                if how == Start::Probe {
                    fx.push(Effect::RemoveErrorNode);
                }
                machine.probe(features, &mut fx);
            }
            Start::Resume(XenbusState::InitWait) => {
                machine.probe(features, &mut fx);
            }
            Start::Resume(state @ (XenbusState::Initialised | XenbusState::Connected)) => {
                machine.state = state;
                fx.push(Effect::Log(format!(
                    "resuming in state {state}: reopening and re-verifying the device"
                )));
                fx.push(Effect::WatchPhysicalDevice);
                fx.push(Effect::WatchFrontend);
            }
            Start::Resume(state) => {
                machine.state = state;
                fx.push(Effect::Log(format!(
                    "resuming in state {state}: following the device to its end"
                )));
                fx.push(Effect::WatchFrontend);
            }
        }
        (machine, fx)
    }

    fn probe(&mut self, features: ProbeFeatures, fx: &mut Vec<Effect>) {
        fx.push(Effect::Write(
            node::FEATURE_MAX_INDIRECT_SEGMENTS,
            features.max_indirect_segments.to_string(),
        ));
        fx.push(Effect::Write(
            node::MULTI_QUEUE_MAX_QUEUES,
            features.max_queues.to_string(),
        ));
        fx.push(Effect::Write(node::OPENED, "0".into()));
        fx.push(Effect::WatchPhysicalDevice);
        fx.push(Effect::Write(
            node::MAX_RING_PAGE_ORDER,
            features.max_ring_page_order.to_string(),
        ));
        self.switch(XenbusState::InitWait, fx);
        fx.push(Effect::WatchFrontend);
    }

    /// The state this backend last wrote.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// The device number in use, once `physical-device` was accepted.
    pub fn physical_device(&self) -> Option<DevNum> {
        self.physical
    }

    /// The disk held open, if any.
    pub fn disk(&self) -> Option<&D> {
        self.vbd.as_ref().map(|v| &v.opened.disk)
    }

    /// True once the device was unregistered; the loop drops the machine.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// The `physical-device` watch fired; `snap` was read in one transaction.
    ///
    /// `open` is called at most once, only when the record is complete and
    /// valid; it must prove the identity on the fd it returns.
    pub fn on_physical_device(
        &mut self,
        snap: &PhysicalSnapshot,
        policy: DiskseqPolicy,
        open: impl FnOnce(&OpenRequest) -> Result<Opened<D>, Fatal>,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.gone {
            return fx;
        }
        // Missing, empty or unparsable: the script has not written it yet
        // (the watch fires once at registration). blkback ignores these.
        let Some(dev) = snap
            .physical_device
            .as_deref()
            .and_then(|raw| schema::physical_device_from_node(raw).ok())
        else {
            return fx;
        };
        if let Some(current) = self.physical {
            if current != dev {
                fx.push(Effect::Log(format!(
                    "changing physical device (from {} to {}) not supported",
                    current.to_xenstore(),
                    dev.to_xenstore()
                )));
            }
            return fx;
        }
        if self.vbd.is_some()
            || !matches!(
                self.state,
                XenbusState::InitWait | XenbusState::Initialised | XenbusState::Connected
            )
        {
            // Closing/Closed after a failure: nothing may be opened any more.
            return fx;
        }
        let mode = match snap.mode.as_deref() {
            None => return self.fatal(Fatal::new(rustix::io::Errno::NOENT, "reading mode"), fx),
            Some(raw) => match Mode::from_node(raw) {
                Ok(mode) => mode,
                Err(e) => {
                    return self.fatal(
                        Fatal::new(rustix::io::Errno::INVAL, format!("reading mode: {e}")),
                        fx,
                    )
                }
            },
        };
        let expected = match expected_diskseq(snap.diskseq.as_deref(), policy) {
            Ok(expected) => expected,
            Err(fatal) => return self.fatal(fatal, fx),
        };
        // Checked like `diskseq`, and ignored with it (stock blkback).
        let partition = match snap.partition.as_deref() {
            Some(raw) if policy != DiskseqPolicy::Ignore => {
                match schema::partition_from_node(raw) {
                    Ok(partition) => Some(partition),
                    // The patched blkback's words for every malformed form
                    // (kernel/patches/0002), then the value.
                    Err(_) => {
                        let value = String::from_utf8_lossy(raw);
                        let message = format!("invalid {}: {value:?}", node::PARTITION);
                        return self.fatal(Fatal::new(rustix::io::Errno::INVAL, message), fx);
                    }
                }
            }
            _ => None,
        };
        let request = OpenRequest {
            dev,
            expected,
            partition,
            mode,
            cdrom: snap.frontend_device_type.as_deref() == Some(b"cdrom"),
        };
        match open(&request) {
            Ok(opened) => {
                self.physical = Some(dev);
                self.vbd = Some(Vbd {
                    opened,
                    mode,
                    cdrom: request.cdrom,
                });
                fx.push(Effect::DiskHeld);
                fx.push(Effect::Write(node::OPENED, "1".into()));
                self.try_connect(snap.discard_enable, &mut fx);
                fx
            }
            Err(fatal) => self.fatal(fatal, fx),
        }
    }

    /// The frontend's `state` fired; `view` was read in one transaction.
    pub fn on_frontend(&mut self, view: &FrontendView) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.gone {
            return fx;
        }
        match view.state {
            XenbusState::Initialising => {
                if self.state == XenbusState::Closed {
                    fx.push(Effect::Log("prepare for reconnect".into()));
                    self.switch(XenbusState::InitWait, &mut fx);
                    if self.vbd.is_none() {
                        fx.push(Effect::RecheckPhysicalDevice);
                    }
                }
            }
            XenbusState::Initialised | XenbusState::Connected => {
                // Two watches may fire in close succession; a missed
                // intermediate value must not stop us from connecting.
                if self.state == XenbusState::Connected {
                    return fx;
                }
                if matches!(self.state, XenbusState::Closing | XenbusState::Closed) {
                    return fx;
                }
                self.ring = None;
                match &view.ring {
                    Ok(ring) => self.ring = Some(ring.clone()),
                    Err(fatal) => return self.fatal(fatal.clone(), fx),
                }
                self.try_connect(view.discard_enable, &mut fx);
            }
            XenbusState::Closing => self.switch(XenbusState::Closing, &mut fx),
            XenbusState::Closed => {
                self.ring = None;
                if view.online {
                    self.switch(XenbusState::Closed, &mut fx);
                } else {
                    // Release first: the toolstack runs the script's
                    // `remove` as soon as it sees Closed, and the device
                    // must not be held then (blkback writes Closed first
                    // and frees the device a moment later).
                    self.unregister(&mut fx);
                }
            }
            XenbusState::Unknown => {
                // The frontend dir is gone: blkback unregisters the device.
                self.ring = None;
                self.unregister(&mut fx);
            }
            other => {
                return self.fatal(
                    Fatal::new(
                        rustix::io::Errno::INVAL,
                        format!("saw state {other} at frontend"),
                    ),
                    fx,
                )
            }
        }
        fx
    }

    /// The backend directory was removed: release everything, write nothing.
    pub fn on_removed(&mut self) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.gone {
            return fx;
        }
        self.release(&mut fx);
        self.gone = true;
        fx.push(Effect::Unregister);
        fx
    }

    /// Connects once both halves are there: the disk is open and the
    /// frontend's ring is known (`xen_update_blkif_status`).
    fn try_connect(&mut self, discard_enable: bool, fx: &mut Vec<Effect>) {
        if self.state == XenbusState::Connected {
            return;
        }
        let (Some(vbd), Some(_ring)) = (&self.vbd, &self.ring) else {
            return;
        };
        fx.push(Effect::Connect(connect_nodes(
            &vbd.opened.facts,
            vbd.mode,
            vbd.cdrom,
            discard_enable,
        )));
        self.switch(XenbusState::Connected, fx);
    }

    fn unregister(&mut self, fx: &mut Vec<Effect>) {
        self.release(fx);
        // xenbus_dev_remove switches to Closed (skipped if already there or
        // if the dir is gone).
        self.switch(XenbusState::Closed, fx);
        self.gone = true;
        fx.push(Effect::Unregister);
    }

    fn release(&mut self, fx: &mut Vec<Effect>) {
        if self.vbd.take().is_some() {
            fx.push(Effect::DiskReleased);
        }
        self.physical = None;
        self.ring = None;
    }

    /// `xenbus_dev_fatal`: error node, then Closing. Like blkback, a failed
    /// open leaves no device number recorded.
    fn fatal(&mut self, fatal: Fatal, mut fx: Vec<Effect>) -> Vec<Effect> {
        fx.push(Effect::Fatal(fatal));
        self.switch(XenbusState::Closing, &mut fx);
        fx
    }

    /// `xenbus_switch_state`: no write when unchanged.
    fn switch(&mut self, to: XenbusState, fx: &mut Vec<Effect>) {
        if self.state != to {
            self.state = to;
            fx.push(Effect::SwitchState(to));
        }
    }
}

/// VDISK_* bits of the `info` node.
const VDISK_CDROM: u32 = 1;
const VDISK_REMOVABLE: u32 = 2;
const VDISK_READONLY: u32 = 4;

/// The nodes blkback's `connect()` writes, from the opened disk.
pub fn connect_nodes(
    facts: &DiskFacts,
    mode: Mode,
    cdrom: bool,
    discard_enable: bool,
) -> Vec<(&'static str, String)> {
    let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
    let mut nodes = vec![(node::FEATURE_FLUSH_CACHE, flag(facts.flush))];
    if discard_enable {
        if let Some(discard) = facts.discard {
            nodes.push((node::DISCARD_GRANULARITY, discard.granularity.to_string()));
            nodes.push((node::DISCARD_ALIGNMENT, discard.alignment.to_string()));
            nodes.push((node::DISCARD_SECURE, flag(discard.secure)));
            nodes.push((node::FEATURE_DISCARD, "1".into()));
        }
    }
    nodes.push((node::FEATURE_BARRIER, flag(facts.flush)));
    nodes.push((node::FEATURE_PERSISTENT, "1".into()));
    nodes.push((node::SECTORS, facts.sectors.to_string()));
    let mut info = 0;
    if cdrom {
        info |= VDISK_CDROM;
    }
    if facts.removable {
        info |= VDISK_REMOVABLE;
    }
    if !mode.is_writable() {
        info |= VDISK_READONLY;
    }
    nodes.push((node::INFO, info.to_string()));
    nodes.push((node::SECTOR_SIZE, facts.sector_size.to_string()));
    nodes.push((
        node::PHYSICAL_SECTOR_SIZE,
        facts.physical_sector_size.to_string(),
    ));
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use XenbusState::*;

    /// Stands in for the open fd: counts how often it is closed.
    #[derive(Debug)]
    struct FakeDisk(Arc<AtomicUsize>);

    impl Drop for FakeDisk {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    const FEATURES: ProbeFeatures = ProbeFeatures {
        max_indirect_segments: 256,
        max_queues: 2,
        max_ring_page_order: 4,
    };

    fn facts() -> DiskFacts {
        DiskFacts {
            sectors: 2048,
            sector_size: 512,
            physical_sector_size: 4096,
            removable: false,
            flush: true,
            discard: Some(DiscardFacts {
                granularity: 4096,
                alignment: 0,
                secure: false,
            }),
        }
    }

    fn snapshot(pd: Option<&str>, seq: Option<&str>, mode: &str) -> PhysicalSnapshot {
        PhysicalSnapshot {
            physical_device: pd.map(|s| s.as_bytes().to_vec()),
            diskseq: seq.map(|s| s.as_bytes().to_vec()),
            partition: None,
            mode: Some(mode.as_bytes().to_vec()),
            frontend_device_type: Some(b"disk".to_vec()),
            discard_enable: true,
        }
    }

    fn ring() -> Result<RingInfo, Fatal> {
        RingInfo::from_nodes("/fe", Some(b"8"), Some(b"16"), Some(b"x86_64-abi"))
    }

    fn frontend(state: XenbusState, online: bool) -> FrontendView {
        FrontendView {
            state,
            ring: ring(),
            online,
            discard_enable: true,
        }
    }

    fn probed() -> VbdMachine<FakeDisk> {
        VbdMachine::start(Start::Probe, FEATURES).0
    }

    /// Feeds a record; the opener succeeds and records its request.
    fn open_ok(
        m: &mut VbdMachine<FakeDisk>,
        snap: &PhysicalSnapshot,
        policy: DiskseqPolicy,
        closes: &Arc<AtomicUsize>,
    ) -> (Vec<Effect>, Option<OpenRequest>) {
        let mut seen = None;
        let fx = m.on_physical_device(snap, policy, |req| {
            seen = Some(*req);
            Ok(Opened {
                disk: FakeDisk(Arc::clone(closes)),
                facts: facts(),
            })
        });
        (fx, seen)
    }

    /// A probed machine that opened a record (7:0, diskseq 2a, w); the
    /// counter counts closes of its disk.
    fn holding() -> (VbdMachine<FakeDisk>, Arc<AtomicUsize>) {
        let closes = Arc::new(AtomicUsize::new(0));
        let mut m = probed();
        open_ok(
            &mut m,
            &snapshot(Some("7:0"), Some("2a"), "w"),
            DiskseqPolicy::Verify,
            &closes,
        );
        (m, closes)
    }

    fn position(fx: &[Effect], want: &Effect) -> usize {
        fx.iter()
            .position(|e| e == want)
            .unwrap_or_else(|| panic!("{want:?} not in {fx:?}"))
    }

    #[test]
    fn probe_writes_opened_zero_before_the_physical_device_watch() {
        let (m, fx) = VbdMachine::<FakeDisk>::start(Start::Probe, FEATURES);
        let opened = position(&fx, &Effect::Write(node::OPENED, "0".into()));
        let watch = position(&fx, &Effect::WatchPhysicalDevice);
        let init_wait = position(&fx, &Effect::SwitchState(InitWait));
        assert!(position(&fx, &Effect::RemoveErrorNode) < opened);
        assert!(
            position(
                &fx,
                &Effect::Write(node::FEATURE_MAX_INDIRECT_SEGMENTS, "256".into())
            ) < watch
        );
        assert!(
            position(
                &fx,
                &Effect::Write(node::MULTI_QUEUE_MAX_QUEUES, "2".into())
            ) < watch
        );
        assert!(opened < watch && watch < init_wait, "{fx:?}");
        assert!(position(&fx, &Effect::Write(node::MAX_RING_PAGE_ORDER, "4".into())) < init_wait);
        assert!(init_wait < position(&fx, &Effect::WatchFrontend));
        assert_eq!(m.state(), InitWait);
    }

    #[test]
    fn incomplete_physical_device_is_ignored_without_opening() {
        let mut m = probed();
        for pd in [
            None,
            Some(""),
            Some("7"),
            Some("zz:1"),
            Some("7:0:1"),
            Some("7:-1"),
        ] {
            let fx = m.on_physical_device(
                &snapshot(pd, Some("2a"), "w"),
                DiskseqPolicy::Verify,
                |_| panic!("opened for {pd:?}"),
            );
            assert_eq!(fx, [], "{pd:?}");
        }
        assert_eq!(m.state(), InitWait);
    }

    #[test]
    fn verified_open_then_connect_when_the_frontend_is_ready() {
        let closes = Arc::new(AtomicUsize::new(0));
        let mut m = probed();
        let (fx, req) = open_ok(
            &mut m,
            &snapshot(Some("7:c"), Some("2a"), "w"),
            DiskseqPolicy::Verify,
            &closes,
        );
        let req = req.expect("opened");
        assert_eq!(
            req.dev,
            DevNum {
                major: 7,
                minor: 12
            }
        );
        assert_eq!(req.expected.map(DiskSeq::get), Some(0x2a));
        assert_eq!(req.mode, Mode::ReadWrite);
        assert_eq!(
            fx,
            [Effect::DiskHeld, Effect::Write(node::OPENED, "1".into())]
        );
        assert!(m.disk().is_some());

        let fx = m.on_frontend(&frontend(Initialising, true));
        assert_eq!(fx, []);
        let fx = m.on_frontend(&frontend(Initialised, true));
        let Some(Effect::Connect(nodes)) = fx.first() else {
            panic!("{fx:?}")
        };
        assert!(nodes.contains(&(node::SECTORS, "2048".into())));
        assert!(nodes.contains(&(node::INFO, "0".into())));
        assert!(nodes.contains(&(node::FEATURE_DISCARD, "1".into())));
        assert_eq!(fx[1], Effect::SwitchState(Connected));
        // A second Connected event does not reconnect.
        assert_eq!(m.on_frontend(&frontend(Connected, true)), []);
        assert_eq!(closes.load(Ordering::SeqCst), 0, "fd still held");
    }

    #[test]
    fn frontend_first_connects_as_soon_as_the_disk_is_open() {
        let closes = Arc::new(AtomicUsize::new(0));
        let mut m = probed();
        assert_eq!(m.on_frontend(&frontend(Initialised, true)), []);
        let (fx, _) = open_ok(
            &mut m,
            &snapshot(Some("7:0"), Some("5"), "r"),
            DiskseqPolicy::Verify,
            &closes,
        );
        assert!(
            matches!(fx[2], Effect::Connect(ref nodes) if nodes.contains(&(node::INFO, "4".into()))),
            "{fx:?}"
        );
        assert_eq!(fx[3], Effect::SwitchState(Connected));
    }

    #[test]
    fn identity_mismatch_is_fatal_and_nothing_is_held() {
        let mut m = probed();
        let fx = m.on_physical_device(
            &snapshot(Some("7:0"), Some("2a"), "w"),
            DiskseqPolicy::Verify,
            |_| {
                Err(Fatal::new(
                    rustix::io::Errno::NODEV,
                    "creating vbd structure: stale",
                ))
            },
        );
        assert_eq!(
            fx,
            [
                Effect::Fatal(Fatal::new(
                    rustix::io::Errno::NODEV,
                    "creating vbd structure: stale"
                )),
                Effect::SwitchState(Closing)
            ]
        );
        assert_eq!(
            Fatal::new(rustix::io::Errno::NODEV, "x").to_string(),
            "19 x"
        );
        assert!(m.disk().is_none() && m.physical_device().is_none());
        // Closing: a corrected record is not opened any more.
        let fx = m.on_physical_device(
            &snapshot(Some("7:1"), Some("2c"), "w"),
            DiskseqPolicy::Verify,
            |_| panic!("opened while closing"),
        );
        assert_eq!(fx, []);
        // Nor does the frontend get connected.
        assert_eq!(m.on_frontend(&frontend(Initialised, true)), []);
    }

    #[test]
    fn malformed_diskseq_is_fatal_before_any_open() {
        for (seq, message) in [
            ("", "diskseq must not be empty"),
            ("00002a", "diskseq must not start with 0"),
            ("10000000000000000", "diskseq too long"),
            ("2x", "invalid diskseq"),
        ] {
            let mut m = probed();
            let fx = m.on_physical_device(
                &snapshot(Some("7:0"), Some(seq), "w"),
                DiskseqPolicy::Verify,
                |_| panic!("opened with diskseq {seq:?}"),
            );
            let Some(Effect::Fatal(fatal)) = fx.first() else {
                panic!("{seq:?}: {fx:?}")
            };
            assert!(fatal.message.starts_with(message), "{seq:?}: {fatal}");
            assert_eq!(fx[1], Effect::SwitchState(Closing));
        }
    }

    /// The partition node, as the patched blkback reads it (patch 0002):
    /// every malformed form is EINVAL with the kernel's words first; a
    /// well-formed one, however large its numbers, goes to the open, where
    /// only the device decides (kernel-differential-partition on real Xen).
    #[test]
    fn the_partition_node_is_read_as_the_kernel_reads_it() {
        for bad in ["", "1:800", "0:800:1", "1:0800:1", "1:800:1:2", "1:800:1G"] {
            let mut m = probed();
            let mut snap = snapshot(Some("7:0"), Some("2a"), "w");
            snap.partition = Some(bad.as_bytes().to_vec());
            let fx = m.on_physical_device(&snap, DiskseqPolicy::Verify, |_| {
                panic!("opened with diskseq-partition {bad:?}")
            });
            let Some(Effect::Fatal(fatal)) = fx.first() else {
                panic!("{bad:?}: {fx:?}")
            };
            assert_eq!(fatal.errno, 22, "{bad:?}");
            assert!(
                fatal.message.starts_with("invalid diskseq-partition"),
                "{bad:?}: {fatal}"
            );
        }
        let mut m = probed();
        let mut snap = snapshot(Some("7:0"), Some("2a"), "w");
        snap.partition = Some(b"100000000:800:2000".to_vec());
        let mut asked = None;
        m.on_physical_device(&snap, DiskseqPolicy::Verify, |req| {
            asked = req.partition;
            Err(Fatal::new(rustix::io::Errno::NODEV, "no such partition"))
        });
        assert_eq!(asked.map(|p| p.number), Some(1 << 32));
        // Stock blkback ignores it with diskseq.
        let mut m = probed();
        let mut snap = snapshot(Some("7:0"), Some("2a"), "w");
        snap.partition = Some(b"garbage".to_vec());
        let mut asked = None;
        m.on_physical_device(&snap, DiskseqPolicy::Ignore, |req| {
            asked = Some(req.partition);
            Err(Fatal::new(rustix::io::Errno::NODEV, "stop here"))
        });
        assert_eq!(asked, Some(None));
    }

    #[test]
    fn legacy_record_is_served_unless_diskseq_is_required() {
        let closes = Arc::new(AtomicUsize::new(0));
        let mut m = probed();
        let (_, req) = open_ok(
            &mut m,
            &snapshot(Some("7:0"), None, "w"),
            DiskseqPolicy::Verify,
            &closes,
        );
        assert_eq!(req.expect("legacy record opened").expected, None);

        let mut m = probed();
        let fx = m.on_physical_device(
            &snapshot(Some("7:0"), None, "w"),
            DiskseqPolicy::Require,
            |_| panic!("legacy record opened under --require-diskseq"),
        );
        assert!(
            matches!(&fx[0], Effect::Fatal(f) if f.errno == 2 && f.message.contains("diskseq")),
            "{fx:?}"
        );

        // The stock-blkback model never checks, even a present value.
        let mut m = probed();
        let (_, req) = open_ok(
            &mut m,
            &snapshot(Some("7:0"), Some("2a"), "w"),
            DiskseqPolicy::Ignore,
            &closes,
        );
        assert_eq!(req.expect("opened").expected, None);
    }

    #[test]
    fn missing_or_bad_mode_is_fatal() {
        let mut m = probed();
        let mut snap = snapshot(Some("7:0"), Some("2a"), "w");
        snap.mode = None;
        let fx = m.on_physical_device(&snap, DiskseqPolicy::Verify, |_| panic!("opened"));
        assert!(
            matches!(&fx[0], Effect::Fatal(f) if f.message == "reading mode"),
            "{fx:?}"
        );
        let mut m = probed();
        let fx = m.on_physical_device(
            &snapshot(Some("7:0"), Some("2a"), "x"),
            DiskseqPolicy::Verify,
            |_| panic!("opened"),
        );
        assert!(
            matches!(&fx[0], Effect::Fatal(f) if f.message.starts_with("reading mode")),
            "{fx:?}"
        );
    }

    #[test]
    fn a_changed_physical_device_is_logged_and_ignored() {
        let (mut m, closes) = holding();
        let fx = m.on_physical_device(
            &snapshot(Some("7:1"), Some("2c"), "w"),
            DiskseqPolicy::Verify,
            |_| panic!("reopened"),
        );
        assert_eq!(
            fx,
            [Effect::Log(
                "changing physical device (from 7:0 to 7:1) not supported".into()
            )]
        );
        let fx = m.on_physical_device(
            &snapshot(Some("7:0"), Some("2a"), "w"),
            DiskseqPolicy::Verify,
            |_| panic!("reopened"),
        );
        assert_eq!(fx, []);
        assert_eq!(closes.load(Ordering::SeqCst), 0, "the held disk stays open");
        assert_eq!(m.physical_device(), Some(DevNum { major: 7, minor: 0 }));
    }

    #[test]
    fn close_sequence_releases_the_disk_only_when_offline() {
        let (mut m, closes) = holding();
        m.on_frontend(&frontend(Initialised, true));
        assert_eq!(
            m.on_frontend(&frontend(Closing, true)),
            [Effect::SwitchState(Closing)]
        );
        // Closed while online: the device stays (the guest may reconnect).
        assert_eq!(
            m.on_frontend(&frontend(Closed, true)),
            [Effect::SwitchState(Closed)]
        );
        assert_eq!(closes.load(Ordering::SeqCst), 0);
        assert!(!m.is_gone());
        // The toolstack's online=0, and the frontend's Closed again.
        let fx = m.on_frontend(&frontend(Closed, false));
        assert_eq!(fx, [Effect::DiskReleased, Effect::Unregister]);
        assert_eq!(closes.load(Ordering::SeqCst), 1, "fd closed on release");
        assert!(m.is_gone());
        assert_eq!(m.on_frontend(&frontend(Initialising, true)), []);
    }

    #[test]
    fn detach_from_connected_releases_before_closed() {
        let (mut m, closes) = holding();
        m.on_frontend(&frontend(Initialised, true));
        let fx = m.on_frontend(&frontend(Closed, false));
        assert_eq!(
            fx,
            [
                Effect::DiskReleased,
                Effect::SwitchState(Closed),
                Effect::Unregister
            ]
        );
        assert_eq!(closes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn removed_dir_releases_without_writing() {
        let (mut m, closes) = holding();
        assert_eq!(m.on_removed(), [Effect::DiskReleased, Effect::Unregister]);
        assert_eq!(closes.load(Ordering::SeqCst), 1);
        assert_eq!(m.on_removed(), []);
    }

    #[test]
    fn vanished_frontend_unregisters() {
        let (mut m, closes) = holding();
        let fx = m.on_frontend(&frontend(Unknown, true));
        assert_eq!(
            fx,
            [
                Effect::DiskReleased,
                Effect::SwitchState(Closed),
                Effect::Unregister
            ]
        );
        assert_eq!(closes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn unexpected_frontend_state_is_fatal() {
        let mut m = probed();
        let fx = m.on_frontend(&frontend(InitWait, true));
        assert_eq!(
            fx,
            [
                Effect::Fatal(Fatal::new(
                    rustix::io::Errno::INVAL,
                    "saw state 2 at frontend"
                )),
                Effect::SwitchState(Closing)
            ]
        );
    }

    #[test]
    fn frontend_without_ring_is_fatal() {
        let mut m = probed();
        let view = FrontendView {
            state: Initialised,
            ring: RingInfo::from_nodes("/local/domain/5/device/vbd/51712", None, Some(b"16"), None),
            online: true,
            discard_enable: true,
        };
        let fx = m.on_frontend(&view);
        assert!(
            matches!(&fx[0], Effect::Fatal(f) if f.to_string() == "2 reading /local/domain/5/device/vbd/51712/ring-ref"),
            "{fx:?}"
        );
        let bad =
            RingInfo::from_nodes("/fe", Some(b"8"), Some(b"16"), Some(b"vax-abi")).unwrap_err();
        assert_eq!(bad.message, "unknown fe protocol vax-abi");
        assert_eq!(
            RingInfo::from_nodes("/fe", Some(b"8"), Some(b"16"), None)
                .unwrap()
                .protocol,
            "x86_64-abi"
        );
    }

    #[test]
    fn resume_of_a_connected_device_reverifies_without_reprobing() {
        let closes = Arc::new(AtomicUsize::new(0));
        let (mut m, fx) = VbdMachine::<FakeDisk>::start(Start::Resume(Connected), FEATURES);
        assert!(
            !fx.iter().any(|e| matches!(
                e,
                Effect::Write(..) | Effect::SwitchState(_) | Effect::RemoveErrorNode
            )),
            "{fx:?}"
        );
        assert!(fx.contains(&Effect::WatchPhysicalDevice) && fx.contains(&Effect::WatchFrontend));
        let (fx, req) = open_ok(
            &mut m,
            &snapshot(Some("7:0"), Some("2a"), "w"),
            DiskseqPolicy::Verify,
            &closes,
        );
        assert!(req.is_some());
        assert_eq!(
            fx,
            [Effect::DiskHeld, Effect::Write(node::OPENED, "1".into())]
        );
        assert_eq!(m.on_frontend(&frontend(Connected, true)), []);
        assert_eq!(m.state(), Connected);

        // A resumed connected device whose disk changed meanwhile is refused.
        let (mut m, _) = VbdMachine::<FakeDisk>::start(Start::Resume(Connected), FEATURES);
        let fx = m.on_physical_device(
            &snapshot(Some("7:0"), Some("2a"), "w"),
            DiskseqPolicy::Verify,
            |_| Err(Fatal::new(rustix::io::Errno::NODEV, "stale")),
        );
        assert_eq!(fx[1], Effect::SwitchState(Closing));
    }

    #[test]
    fn resume_of_a_closing_device_does_not_reopen() {
        let (mut m, fx) = VbdMachine::<FakeDisk>::start(Start::Resume(Closing), FEATURES);
        assert!(!fx.contains(&Effect::WatchPhysicalDevice), "{fx:?}");
        assert_eq!(
            m.on_frontend(&frontend(Closed, false)),
            [Effect::SwitchState(Closed), Effect::Unregister]
        );
    }

    #[test]
    fn resume_in_init_wait_probes_again() {
        let (m, fx) = VbdMachine::<FakeDisk>::start(Start::Resume(InitWait), FEATURES);
        assert!(fx.contains(&Effect::Write(node::OPENED, "0".into())));
        assert!(!fx.contains(&Effect::RemoveErrorNode));
        assert_eq!(m.state(), InitWait);
    }

    #[test]
    fn reconnect_after_closed_rechecks_the_record() {
        let mut m = probed();
        m.on_physical_device(
            &snapshot(Some("7:0"), Some("2a"), "w"),
            DiskseqPolicy::Verify,
            |_| Err(Fatal::new(rustix::io::Errno::NODEV, "stale")),
        );
        m.on_frontend(&frontend(Closed, true));
        let fx = m.on_frontend(&frontend(Initialising, true));
        assert_eq!(
            fx,
            [
                Effect::Log("prepare for reconnect".into()),
                Effect::SwitchState(InitWait),
                Effect::RecheckPhysicalDevice
            ]
        );
    }

    #[test]
    fn connect_nodes_follow_mode_media_and_discard() {
        let mut f = facts();
        let nodes = connect_nodes(&f, Mode::ReadOnly, true, true);
        assert!(nodes.contains(&(node::INFO, "5".into())), "{nodes:?}");
        assert!(nodes.contains(&(node::PHYSICAL_SECTOR_SIZE, "4096".into())));
        assert!(nodes.contains(&(node::DISCARD_GRANULARITY, "4096".into())));
        let nodes = connect_nodes(&f, Mode::ReadWrite, false, false);
        assert!(!nodes
            .iter()
            .any(|(n, _)| n.starts_with("discard") || *n == node::FEATURE_DISCARD));
        f.removable = true;
        f.discard = None;
        f.flush = false;
        let nodes = connect_nodes(&f, Mode::ReadWrite, false, true);
        assert!(nodes.contains(&(node::INFO, "2".into())));
        assert!(nodes.contains(&(node::FEATURE_FLUSH_CACHE, "0".into())));
        assert!(!nodes.iter().any(|(n, _)| *n == node::FEATURE_DISCARD));
    }
}
