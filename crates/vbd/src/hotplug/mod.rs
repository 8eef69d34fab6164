//! The Xen block hotplug script (`block-diskseq add|remove`), race-free and
//! kill-safe. The binary only calls [`main`]; everything is here so it can
//! be tested in-process and by running it as libxl does.
//!
//! - [`config`]: argv and environment (libxl's `XENBUS_*`, our tunables);
//! - [`target`]: `params` opened once, classified, attached as a loop device;
//! - [`holders`] + [`sharing`] + [`mountinfo`] + [`loops`]: who else uses
//!   the device, and whether that allows this attach;
//! - [`add`] / [`remove`]: the two commands;
//! - [`handoff`]: how the device stays the published disk (autoclear held
//!   until `opened`, or persistent);
//! - [`leaks`]: labelled loop devices nothing will detach (`diskseq loop gc`);
//! - [`log`]: one line per decision; [`fault`]: test-only kill points.

pub mod add;
pub mod config;
pub mod error;
pub mod fault;
pub mod handoff;
pub mod holders;
pub mod leaks;
pub mod log;
pub mod loops;
pub mod mountinfo;
pub mod remove;
pub mod sharing;
pub mod target;

use std::ffi::OsString;

use xenstore::client::Client;

pub use add::{AddFailure, AddOutcome};
pub use config::{Command, Config, ConfigError, HandoffPolicy, LogTarget};
pub use error::HotplugError;
pub use remove::RemoveOutcome;

use crate::schema::{node, BackendPath, PublishedDevice};

/// Runs the script: argv without `argv[0]`, the process environment; returns
/// the exit status (0 success, 1 failure — libxl judges by it alone).
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args: Vec<OsString> = args.into_iter().collect();
    let config = match Config::from_env(args.iter().cloned()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("block-diskseq: {e}");
            if args.first().is_some_and(|cmd| cmd == "add") {
                report_config_error(&e);
            }
            return 1;
        }
    };
    let mut log = log::Log::open(&config.log, &config.backend.dir());
    if run(&config, &mut log) {
        0
    } else {
        1
    }
}

/// Runs one command with an open log; true on success. Failures are logged
/// and reported in xenstore (`hotplug-status`, `hotplug-error`) here, so
/// the caller only needs the verdict.
pub fn run(config: &Config, log: &mut log::Log) -> bool {
    let mut client = match Client::connect() {
        Ok(client) => client,
        Err(e) => {
            log.line(format_args!(
                "{}: cannot connect to xenstore: {e}",
                config.command
            ));
            return false;
        }
    };
    match config.command {
        Command::Add => match add::add(config, &mut client, log) {
            Ok(_) => true,
            Err(AddFailure {
                error,
                published,
                held,
            }) => {
                fail(&mut client, &config.backend, log, "add", &error, published);
                // Released only now that no record names it.
                drop(held);
                false
            }
        },
        Command::Remove => match remove::remove(config, &mut client, log) {
            Ok(_) => true,
            Err(error) => {
                // libxl ignores remove's status; the log is what an operator reads.
                log.line(format_args!("remove: failed: {error}"));
                false
            }
        },
    }
}

/// Reports a failed `add`: withdraws a record already published, then sets
/// `hotplug-error` and `hotplug-status` (`busy` or `error`), all in one
/// transaction — and only while the backend directory still exists, so a
/// directory the toolstack removed is not recreated.
fn fail(
    client: &mut Client,
    backend: &BackendPath,
    log: &mut log::Log,
    cmd: &str,
    error: &HotplugError,
    published: bool,
) {
    let status = error.status();
    log.line(format_args!("{cmd}: {status}: {error}"));
    let message = error.to_string();
    let result = client.transaction(|tx| -> Result<bool, xenstore::client::Error> {
        if tx.read_opt(&backend.node(node::STATE))?.is_none() {
            return Ok(false);
        }
        if published {
            for name in PublishedDevice::NODES {
                tx.rm(&backend.node(name))?;
            }
        }
        let error_node = backend.node(node::HOTPLUG_ERROR);
        let status_node = backend.node(node::HOTPLUG_STATUS);
        tx.write_many(&[
            (&error_node, message.as_bytes()),
            (&status_node, status.as_bytes()),
        ])?;
        Ok(true)
    });
    match result {
        Ok(true) => {}
        Ok(false) => log.line(format_args!(
            "{cmd}: backend directory is gone; no status written"
        )),
        Err(e) => log.line(format_args!("{cmd}: could not write hotplug-status: {e}")),
    }
}

/// A bad tunable for `add` with a usable `XENBUS_PATH` still gets reported
/// in xenstore, so the user sees why in libxl's error.
fn report_config_error(error: &ConfigError) {
    let Some(backend) = std::env::var("XENBUS_PATH")
        .ok()
        .and_then(|p| BackendPath::parse(&p).ok())
    else {
        return;
    };
    let Ok(mut client) = Client::connect() else {
        return;
    };
    let mut log = log::Log::open(&LogTarget::Stderr, &backend.dir());
    fail(
        &mut client,
        &backend,
        &mut log,
        "add",
        &HotplugError::Config(error.clone()),
        false,
    );
}
