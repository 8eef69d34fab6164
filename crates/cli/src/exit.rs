//! Exit codes shared by every subcommand: 0 ok, 1 error, 2 usage (clap),
//! 3 identity mismatch (the device is not the instance that was named).

use std::fmt;
use std::process::ExitCode;

/// Why a subcommand failed; decides the exit status.
#[derive(Debug)]
pub enum Failure {
    /// Any error: exit 1.
    Error(String),
    /// The device exists but is not the instance that was asked for: exit 3.
    Stale(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error(m) | Failure::Stale(m) => f.write_str(m),
        }
    }
}

/// What every subcommand returns: its own exit code on success (a child's
/// status for `diskseq open`), or a [`Failure`].
pub type CmdResult = Result<ExitCode, Failure>;

/// Exit status for a stale device (identity mismatch).
pub const EXIT_STALE: u8 = 3;

/// Prints a failure to stderr and turns the result into the process status.
pub fn finish(result: CmdResult) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("diskseq: {failure}");
            match failure {
                Failure::Error(_) => ExitCode::from(1),
                Failure::Stale(_) => ExitCode::from(EXIT_STALE),
            }
        }
    }
}
