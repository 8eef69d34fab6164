//! Exit codes shared by every subcommand: 0 ok, 1 error, 2 usage (clap),
//! 3 identity mismatch (the device is not the instance that was named).
//!
//! `diskseq open` runs a command and exits with that command's status, so
//! its own outcomes take the codes `env` and `timeout` use, which a command
//! rarely does: 124 stale, 125 `open` itself failed (usage included), 126
//! the command cannot be run, 127 the command was not found.

use std::fmt;
use std::process::ExitCode;

/// Why a subcommand failed; decides the exit status.
#[derive(Debug)]
pub enum Failure {
    /// Any error: exit 1.
    Error(String),
    /// The device exists but is not the instance that was asked for: exit 3.
    Stale(String),
    /// A failure with its own exit status (`open`'s 124–127).
    Code(u8, String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error(m) | Failure::Stale(m) | Failure::Code(_, m) => f.write_str(m),
        }
    }
}

/// What every subcommand returns: its own exit code on success (a child's
/// status for `diskseq open`), or a [`Failure`].
pub type CmdResult = Result<ExitCode, Failure>;

/// Exit status for a stale device (identity mismatch).
pub const EXIT_STALE: u8 = 3;
/// `open`: the device is not the instance named (the command did not run).
pub const EXIT_OPEN_STALE: u8 = 124;
/// `open`: open itself failed (usage, no such device, permission...).
pub const EXIT_OPEN_FAILED: u8 = 125;
/// `open`: the command was found but could not be run.
pub const EXIT_CANNOT_RUN: u8 = 126;
/// `open`: the command was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// The exit statuses, for `--help` and the man pages.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    success (for `open`: the command's own status; for `doctor`: safe)
  1    failure
  2    usage error
  3    stale: the device is not the instance named (`loop detach`, `show`)
  4    doctor: degraded (block-diskseq works; nothing in the kernel checks diskseq)
  5    doctor: unsafe (a guest can be handed the wrong disk)
  124  open: stale, the command did not run
  125  open: open itself failed (usage included), the command did not run
  126  open: the command cannot be run
  127  open: the command was not found";

/// Parses the command line. Usage errors exit 2, except under `open`,
/// whose own failures are 125 (as `env` and `timeout`).
pub fn parse<P: clap::Parser>() -> P {
    match P::try_parse() {
        Ok(parsed) => parsed,
        Err(e) if e.use_stderr() && std::env::args_os().nth(1).is_some_and(|a| a == "open") => {
            let _ = e.print();
            std::process::exit(EXIT_OPEN_FAILED.into())
        }
        Err(e) => e.exit(),
    }
}

/// Prints a failure to stderr and turns the result into the process status.
pub fn finish(result: CmdResult) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("diskseq: {failure}");
            match failure {
                Failure::Error(_) => ExitCode::from(1),
                Failure::Stale(_) => ExitCode::from(EXIT_STALE),
                Failure::Code(code, _) => ExitCode::from(code),
            }
        }
    }
}
