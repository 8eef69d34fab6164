//! The test bed: what the workspace's integration tests and benchmarks
//! share, in one place (a dev-dependency only, never published).
//!
//! Every helper here works on real parts — real loop devices, real files,
//! real FIFOs — and cleans up after itself (autoclear or RAII), touching only
//! what the test created: the machine's loop devices are shared with other
//! work.

pub mod fifo;
pub mod images;
pub mod loops;
pub mod race;
pub mod root;

pub use root::require_root;
