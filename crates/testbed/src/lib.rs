//! The test bed of the workspace's integration tests (a dev-dependency,
//! never published). Each module is self-contained; the environment
//! variables and behaviour they have are the contract with the real-Xen
//! harness (`tests/xen`, scenario `xs-suites-real`), which runs the suites
//! against the C xenstored.
//!
//! - [`daemon_under_test`]: which xenstore daemon a differential suite
//!   talks to — ours in-process (the default), ours in a separate process,
//!   or an external one (`XENSTORE_TEST_DAEMON`, `…_KIND`, `…_GUESTS`);
//!   unique node prefixes; running a whole suite against a separate
//!   process of ours.
//! - [`guest_relay`]: a guest domain's connection reached from dom0's test
//!   process through an agent running in the guest
//!   (`XENSTORE_TEST_RELAY_AGENT`).

pub mod daemon_under_test;
pub mod guest_relay;
