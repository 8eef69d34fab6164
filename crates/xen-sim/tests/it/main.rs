//! The `xen-sim` crate's integration tests, in one binary (as ripgrep's
//! are): the simulated blkback, blkfront and libxl against our xenstored,
//! real loop devices (as root) and the real `block-diskseq` script; and the
//! demo end to end.

mod backend;
mod backend_process;
mod demo;
mod support;
mod toolstack;
mod toolstack_cli;
