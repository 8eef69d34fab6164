//! The command line's integration tests, in one binary (as ripgrep's are):
//! `diskseq` and `block-diskseq` run as users and libxl run them.

mod dev;
mod hotplug;
mod xs;
