//! The test bed: what the workspace's integration tests and benchmarks
//! share, in one place (a dev-dependency only, never published).
//!
//! Every helper here works on real parts — real loop devices, real files,
//! real FIFOs, real sockets — and cleans up after itself (autoclear or
//! RAII), touching only what the test created: the machine's loop devices
//! are shared with other work.
//!
//! - [`root`]: whether a test may use loop devices;
//! - [`images`], [`loops`], [`fifo`]: files, loop devices and FIFOs;
//! - [`race`]: the race injector (another file bound on a freed minor);
//! - [`daemon_under_test`]: which xenstore daemon a differential suite
//!   talks to — ours in-process (the default), ours in a separate process,
//!   or an external one (`XENSTORE_TEST_DAEMON`, `…_KIND`, `…_GUESTS`);
//!   the environment variables are the contract with the real-Xen harness
//!   (`tests/xen`, scenario `xs-suites-real`);
//! - [`guest_relay`]: a guest domain's connection reached from dom0's test
//!   process through an agent running in the guest
//!   (`XENSTORE_TEST_RELAY_AGENT`).

pub mod daemon_under_test;
pub mod fifo;
pub mod guest_relay;
pub mod images;
pub mod loops;
pub mod race;
pub mod root;

pub use root::require_root;
