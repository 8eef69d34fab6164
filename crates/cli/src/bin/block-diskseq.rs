//! `block-diskseq add|remove`: the Xen block hotplug script, invoked by libxl
//! with `XENBUS_PATH` and friends in the environment. All logic lives in
//! `vbd::hotplug`; this only hands it argv (after `--help`/`--version`) and
//! turns the result into the exit status libxl judges success by (0 ok, 1
//! failed). No clap here: the script's start-up is benchmarked.

#[macro_use]
#[path = "../out.rs"]
mod out;

#[path = "../hotplug_help.rs"]
mod hotplug_help;

use std::process::ExitCode;

fn main() -> ExitCode {
    hotplug_help::main(std::env::args_os().skip(1))
}
