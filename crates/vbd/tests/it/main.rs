//! The `vbd` crate's integration tests, in one binary (as ripgrep's are):
//! the hotplug script run as libxl runs it — its own process, a private
//! xenstored, real loop devices (as root) — and killed at every step.

mod handoff;
mod hotplug;
mod kill;
mod pinned;
mod sharing;
mod support;
