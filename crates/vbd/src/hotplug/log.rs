//! One log line per decision, each naming the backend directory, appended to
//! Xen's hotplug log (or stderr), so an administrator can reconstruct what a
//! run did from the log alone.
//!
//! Logging never fails the script: if the file cannot be opened the line
//! goes to stderr, which libxl captures too.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::config::LogTarget;

/// A sink for log lines about one backend directory.
#[derive(Debug)]
pub struct Log {
    file: Option<File>,
    prefix: String,
    capture: Option<Vec<String>>,
}

impl Log {
    /// Opens the log for `backend` (the directory as the script names it).
    pub fn open(target: &LogTarget, backend: &str) -> Self {
        let file = match target {
            LogTarget::File(path) => open_append(path),
            LogTarget::Stderr => None,
        };
        Log {
            file,
            prefix: format!("block-diskseq[{}] {backend}", std::process::id()),
            capture: None,
        }
    }

    /// A log that keeps its lines in memory (unit tests of the decisions).
    pub fn capturing(backend: &str) -> Self {
        Log {
            file: None,
            prefix: format!("block-diskseq {backend}"),
            capture: Some(Vec::new()),
        }
    }

    /// The lines kept by a capturing log.
    pub fn captured(&self) -> &[String] {
        self.capture.as_deref().unwrap_or(&[])
    }

    /// Writes one line: `block-diskseq[pid] <backend>: <time> <message>`.
    /// The line goes out in a single `write` on an `O_APPEND` file, so lines
    /// of concurrent runs never interleave.
    pub fn line(&mut self, message: impl std::fmt::Display) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let text = format!(
            "{}: {}.{:06} {}\n",
            self.prefix,
            now.as_secs(),
            now.subsec_micros(),
            message.to_string().replace('\n', " ")
        );
        if let Some(lines) = &mut self.capture {
            lines.push(text.trim_end().to_owned());
            return;
        }
        let written = match &mut self.file {
            Some(file) => file.write_all(text.as_bytes()).is_ok(),
            None => false,
        };
        if !written {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
}

fn open_append(path: &Path) -> Option<File> {
    OpenOptions::new().append(true).create(true).open(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_append_with_the_backend_and_no_embedded_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xen-hotplug.log");
        std::fs::write(&path, "earlier line\n").unwrap();
        let mut log = Log::open(&LogTarget::File(path.clone()), "backend/vbd/3/768");
        log.line("add: opened /img");
        log.line("two\nlines");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "earlier line");
        assert!(
            lines[1].contains("backend/vbd/3/768: ") && lines[1].ends_with(" add: opened /img")
        );
        assert!(lines[2].ends_with(" two lines"));
    }
}
