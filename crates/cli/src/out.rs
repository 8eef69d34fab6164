//! Standard output for the commands: a line at a time, and a quiet end
//! when the reader goes away (`diskseq ls | head`) instead of the panic
//! `println!` gives on a closed pipe. Rust ignores SIGPIPE, so the write
//! fails with EPIPE; like ripgrep, we then stop with status 0 — the reader
//! has all it wanted. Any other write error is reported and ends with 1.

use std::fmt;
use std::io::{self, Write};

/// Writes `args` to standard output (no newline).
pub fn text(args: fmt::Arguments<'_>) {
    if let Err(e) = io::stdout().lock().write_fmt(args) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("diskseq: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that ends quietly on a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::text(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends quietly on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::text(format_args!($($arg)*))
    };
}
