//! Running a block hotplug script the way libxl does: one child process,
//! argv `<script> add|remove`, the `XENBUS_*` environment, stdin from
//! /dev/null, stdout onto stderr, killed with SIGKILL after the timeout,
//! judged only by its exit status.
//!
//! The wait uses a pidfd: poll on it with the deadline, then reap. No timer
//! thread, and the kill can never hit a recycled pid because the child is
//! not reaped before it.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use vbd::schema::BackendPath;

/// libxl's `LIBXL_HOTPLUG_TIMEOUT`.
pub const HOTPLUG_TIMEOUT: Duration = Duration::from_secs(40);

/// The script's first argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptAction {
    /// Attach.
    Add,
    /// Detach.
    Remove,
}

impl ScriptAction {
    /// The argv word.
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptAction::Add => "add",
            ScriptAction::Remove => "remove",
        }
    }
}

/// How a script run ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScriptOutcome {
    /// The script.
    pub script: PathBuf,
    /// `add` or `remove`.
    pub action: ScriptAction,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Signal number, when it was killed.
    pub signal: Option<i32>,
    /// Killed by us at the timeout.
    pub timed_out: bool,
    /// Wall time, in milliseconds.
    pub elapsed_ms: f64,
}

impl ScriptOutcome {
    /// Success as libxl judges it: exit status 0, nothing else.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// "exit status 1", "killed by signal 9 after the 40 s timeout", ...
    pub fn describe(&self) -> String {
        match (self.exit_code, self.signal) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) if self.timed_out => {
                format!("killed by signal {sig} at the timeout")
            }
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "unknown status".into(),
        }
    }
}

/// Where the script is and what it is told.
#[derive(Debug, Clone)]
pub struct ScriptRun<'a> {
    /// The script.
    pub script: &'a Path,
    /// `add` or `remove`.
    pub action: ScriptAction,
    /// The device's backend dir; passed relative, as libxl does.
    pub backend: &'a BackendPath,
    /// The xenstore socket the script must use (`XENSTORED_PATH`), when
    /// not the system's.
    pub xenstored: Option<&'a Path>,
    /// Kill after this long.
    pub timeout: Duration,
    /// Append the script's stdout and stderr to this file instead of
    /// passing them to our stderr (the demo keeps its output readable so).
    pub log: Option<&'a Path>,
    /// Extra environment for the script (after libxl's variables).
    pub env: &'a [(String, String)],
}

/// Runs the script to completion (or to the timeout).
pub fn run(run: &ScriptRun<'_>) -> io::Result<ScriptOutcome> {
    let started = Instant::now();
    let context = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("{} {}: {e}", run.script.display(), run.action.as_str()),
        )
    };
    let (stdout, stderr) = match run.log {
        Some(log) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", log.display())))?;
            (Stdio::from(file.try_clone()?), Stdio::from(file))
        }
        None => (
            Stdio::from(io::stderr().as_fd().try_clone_to_owned().map_err(context)?),
            Stdio::inherit(),
        ),
    };
    let mut command = Command::new(run.script);
    command
        .arg(run.action.as_str())
        .env("script", run.script)
        .env("XENBUS_TYPE", "vbd")
        .env("XENBUS_PATH", run.backend.relative())
        .env("XENBUS_BASE_PATH", "backend")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if let Some(socket) = run.xenstored {
        command.env("XENSTORED_PATH", socket);
    }
    command.envs(run.env.iter().map(|(k, v)| (k, v)));
    let mut child = command.spawn().map_err(context)?;
    let pidfd =
        pidfd_open(Pid::from_child(&child), PidfdFlags::empty()).map_err(|e| context(e.into()))?;
    let deadline = started + run.timeout;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            // The child is not reaped yet, so the pidfd still names it.
            let _ = pidfd_send_signal(&pidfd, Signal::KILL);
            break;
        }
        let timeout = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => continue,
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(context(e.into())),
        }
    }
    let status: ExitStatus = child.wait().map_err(context)?;
    use std::os::unix::process::ExitStatusExt;
    Ok(ScriptOutcome {
        script: run.script.to_owned(),
        action: run.action,
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// The default script: `block-diskseq` next to the running executable (the
/// two binaries are built and installed together).
pub fn default_script() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name("block-diskseq"))
}
