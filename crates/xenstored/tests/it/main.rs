//! The daemon's integration tests, one binary (each former test binary is
//! a module; one link instead of eight). Tests that need a process of their
//! own re-execute this binary for one test (`--exact module::test`):
//! `advisories` (the daemon whose memory they measure), `foreground`
//! (signals), `vanishing_peer` (CPU time of its one daemon thread), and
//! `model`'s run against a separate daemon process.
//!
//! The real-Xen harness (`tests/xen`, scenario `xs-suites-real`) runs the
//! `model` module of this binary (`xenstored_it model::`) against the C
//! xenstored.

mod advisories;
mod common;
mod foreground;
mod interop;
mod isolation;
mod malformed;
mod model;
mod semantics;
mod vanishing_peer;
