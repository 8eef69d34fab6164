//! How one run of the script was invoked: the command, the backend directory
//! and the tunables, all from argv and the environment (libxl passes its
//! environment through to hotplug scripts, so that is where a host
//! administrator can set them).
//!
//! Every tunable has a safe default, and a value that does not parse is an
//! error rather than a silent fallback: a typo in a timeout must not turn
//! into an unbounded wait or none at all.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::schema::{BackendPath, SchemaError};

/// `BLOCK_DISKSEQ_TIMEOUT`: seconds to wait for the backend to take the device.
pub const ENV_TIMEOUT: &str = "BLOCK_DISKSEQ_TIMEOUT";
/// `BLOCK_DISKSEQ_SYSFS`: the sysfs root (tests point it at a directory they control).
pub const ENV_SYSFS: &str = "BLOCK_DISKSEQ_SYSFS";
/// `BLOCK_DISKSEQ_HANDOFF`: `auto`, `opened` or `persistent`.
pub const ENV_HANDOFF: &str = "BLOCK_DISKSEQ_HANDOFF";
/// `BLOCK_DISKSEQ_LOG`: log file, overriding `/var/log/xen/xen-hotplug.log`.
pub const ENV_LOG: &str = "BLOCK_DISKSEQ_LOG";
/// `BLOCK_DISKSEQ_PROC`: the procfs root (mountinfo); tests may redirect it.
pub const ENV_PROC: &str = "BLOCK_DISKSEQ_PROC";

/// The default handoff wait: well below libxl's 40 s script timeout, so the
/// script fails and cleans up by itself instead of being SIGKILLed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait accepted from the environment.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The script's two commands, as libxl passes them in `argv[1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Turn `params` into a device and publish it.
    Add,
    /// Withdraw the record and detach what `add` created.
    Remove,
}

impl Command {
    /// Parses `argv[1]`.
    pub fn parse(arg: &OsStr) -> Result<Self, ConfigError> {
        match arg.to_str() {
            Some("add") => Ok(Command::Add),
            Some("remove") => Ok(Command::Remove),
            _ => Err(ConfigError::Usage(format!(
                "unknown command {:?}: expected add or remove",
                arg
            ))),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "add",
            Command::Remove => "remove",
        })
    }
}

/// How a loop device made for the backend stays the published disk until
/// the backend holds it (see `hotplug::handoff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffPolicy {
    /// `opened` if the backend wrote that node at probe (it checks
    /// `diskseq`), else `persistent`.
    Auto,
    /// Autoclear, held until the backend's `opened` node turns "1".
    Opened,
    /// Attached persistent; `remove` detaches it. No wait.
    Persistent,
}

impl HandoffPolicy {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "auto" => Some(HandoffPolicy::Auto),
            "opened" => Some(HandoffPolicy::Opened),
            "persistent" => Some(HandoffPolicy::Persistent),
            _ => None,
        }
    }
}

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Append to this file.
    File(PathBuf),
    /// Standard error (libxl captures it).
    Stderr,
}

/// Everything one run needs to know before it touches xenstore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `argv[1]`.
    pub command: Command,
    /// `XENBUS_PATH`, parsed.
    pub backend: BackendPath,
    /// How long `add` waits for the backend to take the device.
    pub timeout: Duration,
    /// Root of sysfs (`/sys`).
    pub sysfs_root: PathBuf,
    /// Root of procfs (`/proc`).
    pub proc_root: PathBuf,
    /// The handoff policy.
    pub handoff: HandoffPolicy,
    /// Where log lines go.
    pub log: LogTarget,
}

/// A bad invocation: names the variable or argument and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// argv is wrong.
    #[error("usage: block-diskseq add|remove: {0}")]
    Usage(String),
    /// A required variable is not set.
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    /// A variable has a value this script cannot use.
    #[error("environment variable {name}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl Config {
    /// Reads the invocation from argv (without `argv[0]`) and the process
    /// environment.
    pub fn from_env(args: impl IntoIterator<Item = OsString>) -> Result<Self, ConfigError> {
        Self::from_parts(args, |name| std::env::var_os(name), |p| p.is_dir())
    }

    /// Reads the invocation from argv and a variable lookup; `is_dir` decides
    /// whether the default log directory exists (injected so tests need not
    /// depend on the host's `/var/log/xen`).
    pub fn from_parts(
        args: impl IntoIterator<Item = OsString>,
        var: impl Fn(&str) -> Option<OsString>,
        is_dir: impl Fn(&std::path::Path) -> bool,
    ) -> Result<Self, ConfigError> {
        let mut args = args.into_iter();
        let command = match (args.next(), args.next()) {
            (Some(cmd), None) => Command::parse(&cmd)?,
            (None, _) => return Err(ConfigError::Usage("missing command".into())),
            (Some(_), Some(extra)) => {
                return Err(ConfigError::Usage(format!("unexpected argument {extra:?}")))
            }
        };
        let text = |name: &'static str| -> Result<Option<String>, ConfigError> {
            var(name)
                .map(|v| {
                    v.into_string().map_err(|v| ConfigError::Invalid {
                        name,
                        value: v.to_string_lossy().into_owned(),
                        reason: "not valid UTF-8".into(),
                    })
                })
                .transpose()
        };
        let invalid =
            |name: &'static str, value: &str, reason: &dyn fmt::Display| ConfigError::Invalid {
                name,
                value: value.to_owned(),
                reason: reason.to_string(),
            };

        let xenbus_path = text("XENBUS_PATH")?.ok_or(ConfigError::Missing("XENBUS_PATH"))?;
        let backend = BackendPath::parse(&xenbus_path)
            .map_err(|e: SchemaError| invalid("XENBUS_PATH", &xenbus_path, &e))?;
        if let Some(kind) = text("XENBUS_TYPE")? {
            if kind != "vbd" {
                return Err(invalid(
                    "XENBUS_TYPE",
                    &kind,
                    &"this script serves vbd devices only",
                ));
            }
        }
        if let Some(base) = text("XENBUS_BASE_PATH")? {
            let expected_suffix =
                !base.is_empty() && (base == "backend" || base.ends_with("/backend"));
            if !expected_suffix {
                return Err(invalid("XENBUS_BASE_PATH", &base, &"expected backend"));
            }
        }

        let timeout = match text(ENV_TIMEOUT)? {
            None => DEFAULT_TIMEOUT,
            Some(v) => parse_timeout(&v).map_err(|reason| invalid(ENV_TIMEOUT, &v, &reason))?,
        };
        let handoff = match text(ENV_HANDOFF)? {
            None => HandoffPolicy::Auto,
            Some(v) => HandoffPolicy::parse(&v)
                .ok_or_else(|| invalid(ENV_HANDOFF, &v, &"expected auto, opened or persistent"))?,
        };
        let root = |name: &'static str, default: &str| -> Result<PathBuf, ConfigError> {
            match var(name) {
                None => Ok(PathBuf::from(default)),
                Some(v) if PathBuf::from(&v).is_absolute() => Ok(PathBuf::from(v)),
                Some(v) => Err(invalid(
                    name,
                    &v.to_string_lossy(),
                    &"must be an absolute path",
                )),
            }
        };
        let sysfs_root = root(ENV_SYSFS, "/sys")?;
        let proc_root = root(ENV_PROC, "/proc")?;
        let log = match var(ENV_LOG) {
            Some(v) if PathBuf::from(&v).is_absolute() => LogTarget::File(PathBuf::from(v)),
            Some(v) => {
                return Err(invalid(
                    ENV_LOG,
                    &v.to_string_lossy(),
                    &"must be an absolute path",
                ))
            }
            None if is_dir(std::path::Path::new(DEFAULT_LOG_DIR)) => {
                LogTarget::File(PathBuf::from(DEFAULT_LOG_DIR).join("xen-hotplug.log"))
            }
            None => LogTarget::Stderr,
        };
        Ok(Config {
            command,
            backend,
            timeout,
            sysfs_root,
            proc_root,
            handoff,
            log,
        })
    }
}

/// Where Xen's own hotplug scripts log.
pub const DEFAULT_LOG_DIR: &str = "/var/log/xen";

/// Seconds, decimal, fractions allowed ("30", "0.5"); > 0 and at most an hour.
fn parse_timeout(value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| "expected seconds, e.g. 30 or 0.5".to_string())?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err("must be a positive number of seconds".into());
    }
    let timeout = Duration::from_secs_f64(secs);
    if timeout > MAX_TIMEOUT {
        return Err(format!("must be at most {} s", MAX_TIMEOUT.as_secs()));
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(args: &[&str], vars: &[(&str, &str)], log_dir: bool) -> Result<Config, ConfigError> {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Config::from_parts(
            args.iter().map(OsString::from),
            |name| vars.get(name).cloned(),
            |_| log_dir,
        )
    }

    const LIBXL: &[(&str, &str)] = &[
        ("XENBUS_PATH", "backend/vbd/3/51712"),
        ("XENBUS_TYPE", "vbd"),
        ("XENBUS_BASE_PATH", "backend"),
    ];

    #[test]
    fn libxl_invocation_gets_safe_defaults() {
        let c = config(&["add"], LIBXL, true).unwrap();
        assert_eq!(c.command, Command::Add);
        assert_eq!(c.backend, BackendPath::new(3, 51712));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert!(c.timeout < Duration::from_secs(40));
        assert_eq!(c.handoff, HandoffPolicy::Auto);
        assert_eq!(c.sysfs_root, PathBuf::from("/sys"));
        assert_eq!(
            c.log,
            LogTarget::File("/var/log/xen/xen-hotplug.log".into())
        );
        assert_eq!(
            config(&["remove"], LIBXL, false).unwrap().log,
            LogTarget::Stderr
        );
    }

    #[test]
    fn overrides_are_read_and_checked() {
        let mut vars = LIBXL.to_vec();
        vars.extend([
            (ENV_TIMEOUT, "0.25"),
            (ENV_HANDOFF, "persistent"),
            (ENV_SYSFS, "/tmp/fake-sys"),
            (ENV_LOG, "/tmp/h.log"),
        ]);
        let c = config(&["add"], &vars, true).unwrap();
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.handoff, HandoffPolicy::Persistent);
        assert_eq!(c.sysfs_root, PathBuf::from("/tmp/fake-sys"));
        assert_eq!(c.log, LogTarget::File("/tmp/h.log".into()));
    }

    #[test]
    fn bad_invocations_name_what_is_wrong() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (&[], LIBXL, "missing command"),
            (&["online"], LIBXL, "unknown command"),
            (&["add", "x"], LIBXL, "unexpected argument"),
            (&["add"], &[], "XENBUS_PATH is not set"),
            (
                &["add"],
                &[("XENBUS_PATH", "backend/vif/3/0")],
                "XENBUS_PATH=",
            ),
            (
                &["add"],
                &[("XENBUS_PATH", "backend/vbd/3/1"), ("XENBUS_TYPE", "vif")],
                "XENBUS_TYPE=",
            ),
            (
                &["add"],
                &[("XENBUS_PATH", "backend/vbd/3/1"), (ENV_TIMEOUT, "0")],
                "BLOCK_DISKSEQ_TIMEOUT=",
            ),
            (
                &["add"],
                &[("XENBUS_PATH", "backend/vbd/3/1"), (ENV_TIMEOUT, "inf")],
                "BLOCK_DISKSEQ_TIMEOUT=",
            ),
            (
                &["add"],
                &[("XENBUS_PATH", "backend/vbd/3/1"), (ENV_TIMEOUT, "7200")],
                "at most",
            ),
            (
                &["add"],
                &[("XENBUS_PATH", "backend/vbd/3/1"), (ENV_HANDOFF, "maybe")],
                "BLOCK_DISKSEQ_HANDOFF=",
            ),
            (
                &["add"],
                &[("XENBUS_PATH", "backend/vbd/3/1"), (ENV_SYSFS, "sys")],
                "BLOCK_DISKSEQ_SYSFS=",
            ),
            (
                &["add"],
                &[("XENBUS_PATH", "backend/vbd/3/1"), (ENV_LOG, "x.log")],
                "BLOCK_DISKSEQ_LOG=",
            ),
        ];
        for (args, vars, expected) in cases {
            let err = config(args, vars, false).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?} {vars:?}: {err}");
        }
    }

    #[test]
    fn absolute_xenbus_path_is_accepted() {
        let vars = [("XENBUS_PATH", "/local/domain/0/backend/vbd/3/768")];
        let c = config(&["remove"], &vars, false).unwrap();
        assert_eq!(c.backend.backend_domid(), Some(0));
        assert_eq!(c.command, Command::Remove);
    }
}
