//! Xen's parts, simulated on a host without Xen, around the real ones: our
//! xenstored on a private socket, real loop devices, and the real
//! `block-diskseq` script run as a child process.
//!
//! - [`backend`]: xen-blkback's xenstore protocol, with the diskseq check of
//!   the 2023 patch series (or without it, as stock blkback);
//! - [`frontend`]: xen-blkfront's side of the handshake;
//! - [`toolstack`]: libxl's device directories and its hotplug-script calls;
//! - [`demo`]: `diskseq demo`'s scenario, which wires all of them and
//!   reproduces the race on cue (the CLI narrates it).
//!
//! Data flows one way: `diskseq` (identity) ← `xenstore` (client) ← `vbd`
//! (record + script) ← this crate ← the CLI.

pub mod backend;
pub mod demo;
pub mod frontend;
pub mod toolstack;
