//! FIFOs: a file that is neither regular nor a device (every opener must
//! refuse it without hanging), and the pause point of the fault injector.

use std::path::Path;

use rustix::fs::{mknodat, FileType, Mode, CWD};

/// Creates a FIFO at `path` (mode 0600), replacing nothing: fails the test
/// if `path` exists.
#[track_caller]
pub fn mkfifo(path: &Path) {
    mknodat(CWD, path, FileType::Fifo, Mode::RUSR | Mode::WUSR, 0)
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}
