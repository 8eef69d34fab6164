//! The backend: a userspace model of xen-blkback's xenstore protocol, with
//! the diskseq check of the 2023 patch series.
//!
//! - [`machine`]: one device's state machine as pure logic (probe, the
//!   `physical-device` record, connect, close), returning effects;
//! - [`policy`]: what the `diskseq` node means (`--require-diskseq`);
//! - [`disk`]: opening the published device and proving its identity on the
//!   fd (by number, or by sequence number with `--open-by-diskseq`);
//! - [`service`]: the blocking event loop on one xenstore connection that
//!   feeds the machines, and the handle tests and the demo start it with.
//!
//! `diskseq backend` is the thin command-line front of [`service::Backend`].

mod config;
pub mod disk;
mod handle;
pub mod machine;
pub mod policy;
pub mod service;

use std::fmt;

pub use config::{BackendConfig, BackendError, BeforeOpen, HeldDisk, Logger};
pub use disk::OpenMethod;
pub use handle::BackendHandle;
pub use machine::{OpenRequest, VbdMachine};
pub use policy::DiskseqPolicy;
pub use service::Backend;

/// A fatal device error, as `xenbus_dev_fatal` reports it: the value of the
/// error node is `"<errno> <message>"` (e.g. `19 creating vbd structure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    /// Positive errno.
    pub errno: i32,
    /// What failed.
    pub message: String,
}

impl Fatal {
    /// A fatal error with the kernel's errno for it.
    pub fn new(errno: rustix::io::Errno, message: impl Into<String>) -> Self {
        Fatal {
            errno: errno.raw_os_error(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Fatal {
    /// The error node's value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.errno, self.message)
    }
}
