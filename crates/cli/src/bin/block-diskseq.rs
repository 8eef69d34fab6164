//! `block-diskseq add|remove`: the Xen block hotplug script, invoked by libxl
//! with `XENBUS_PATH` and friends in the environment. All logic lives in
//! `vbd::hotplug`; this only hands it argv and turns the result into the
//! exit status libxl judges success by (0 ok, 1 failed).

use std::process::ExitCode;

fn main() -> ExitCode {
    match vbd::hotplug::main(std::env::args_os().skip(1)) {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
