//! The `diskseq` crate's integration tests, in one binary (as ripgrep's
//! are): the real kernel's loop devices and block devices, as root.

mod bad_inputs;
mod loop_devices;
