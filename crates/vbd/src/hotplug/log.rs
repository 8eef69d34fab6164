//! One log line per decision, each naming the backend directory, appended to
//! Xen's hotplug log (or stderr), so an administrator can reconstruct what a
//! run did from the log alone.
//!
//! Logging never fails the script: if the file cannot be opened the line
//! goes to stderr, which libxl captures too.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

    /// Writes one line: `block-diskseq[pid] <backend>: <time> <message>`,
    /// the time in RFC 3339 UTC with microseconds (`2026-12-02T04:43:02.123456Z`),
    /// the form `journalctl -o short-iso-precise` and `date --rfc-3339` use.
    /// The line goes out in a single `write` on an `O_APPEND` file, so lines
    /// of concurrent runs never interleave.
    pub fn line(&mut self, message: impl std::fmt::Display) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let text = format!(
            "{}: {} {}\n",
            self.prefix,
            rfc3339_utc(now),
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

/// `since_epoch` as RFC 3339 UTC with microseconds. Hand-written because
/// it is one calendar conversion (days to year-month-day, Howard Hinnant's
/// `civil_from_days`), not worth a date crate in a binary whose start-up is
/// benchmarked.
fn rfc3339_utc(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_micros()
    )
}

/// `O_APPEND | O_CREAT`, opened with one system call (std's open adds
/// musl's `fcntl(FD_CLOEXEC)`; on real Xen each call counts).
fn open_append(path: &Path) -> Option<File> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )
    .ok()
    .map(File::from)
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

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, micros: u32| rfc3339_utc(Duration::new(secs, micros * 1000));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day in a century leap year), `date -u -d 2000-02-29T23:59:59Z +%s`.
        assert_eq!(at(951_868_799, 7), "2000-02-29T23:59:59.000007Z");
        // `date -u -d @1796185382` = 2026-12-02T04:23:02Z.
        assert_eq!(at(1_796_185_382, 123_456), "2026-12-02T04:23:02.123456Z");
        // The day after 2100-02-28 is March 1st (2100 is not a leap year).
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }
}
