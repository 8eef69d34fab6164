//! Block-device identity for race-free handoff: name a disk instance by
//! `(major:minor, diskseq)` and prove, on an open fd, that it is that
//! instance.
//!
//! Device numbers are reused (`/dev/loop0` is `7:0` whatever it is bound
//! to); the kernel's disk sequence number is not. This crate opens devices
//! by number or by diskseq and checks the pair on the fd, attaches loop
//! devices atomically and kill-safely, and detaches them only when the
//! instance still matches. See `docs/design/diskseq.md`.

mod device;
mod error;
mod id;
// The crate's only unsafe code: typed ioctls, one SAFETY comment each.
#[allow(unsafe_code)]
pub mod ioctl;
mod loop_device;
mod loop_label;
mod loop_status;
mod pinned;
pub mod sysfs;

pub use device::{
    open_by_diskseq, open_by_number, open_verified, Access, BlockDevice, PartitionExtent,
};
pub use error::{Error, Result};
pub use id::{DevNum, DiskId, DiskSeq, DiskSeqParseError, FileId, ParseError, LOOP_MAJOR};
pub use loop_device::{LoopDevice, LoopOptions, PersistError};
pub use loop_label::{LoopLabel, LoopLabelError};
pub use loop_status::{detach_labeled, detach_verified, list_loops, loop_info, LoopInfo};
pub use pinned::{PinnedPath, BY_DISKSEQ_DIR};
pub use sysfs::{list_devices, DeviceEntry, DeviceKind};
