//! `block-diskseq --help` / `--version` and the words of its man page.
//!
//! The script's start-up is on the critical path of every VM start and is
//! benchmarked, so it does not parse with clap: `add` and `remove` go
//! straight to `vbd::hotplug::main`, and only `-h`/`--help`/`-V`/`--version`
//! are recognised here, printing text kept in constants. The man page
//! generator (`diskseq`'s hidden `generate-docs`) builds a clap `Command`
//! from the same constants, so help and man page cannot drift apart.
//!
//! Shared by the `block-diskseq` binary and `diskseq` run under that name.

use std::ffi::OsString;
use std::process::ExitCode;

/// The script's name as libxl and `--help` know it.
pub const NAME: &str = "block-diskseq";

/// One line: what the program is.
pub const ABOUT: &str =
    "Xen block hotplug script: hands a file or block device to blkback by device number and diskseq";

/// What it does, for `--help` and the man page's DESCRIPTION.
pub const DESCRIPTION: &str = "\
libxl runs block-diskseq as a disk's hotplug script (script=block-diskseq in\n\
the xl disk spec, or as the default `block` script after the opt-in in\n\
/usr/share/doc/diskseq/README.Debian). `add` opens the disk's `params` once\n\
(a regular file is attached to a loop device, atomically), checks that no\n\
one else uses it read-write, and publishes `physical-device` and `diskseq`\n\
in one xenstore transaction; then it holds the device until the backend\n\
proves it has opened that very instance. `remove` withdraws the record and\n\
detaches only the loop device it created, verified by number, diskseq and\n\
backing file. Its decisions go to the hotplug log, one line each,\n\
timestamped in RFC 3339.";

/// The environment it reads: (name, meaning).
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "XENBUS_PATH",
        "The backend directory, e.g. backend/vbd/5/51712 (set by libxl;\n\
         required).",
    ),
    (
        "XENBUS_TYPE",
        "The device type; must be vbd when set (set by libxl).",
    ),
    (
        "XENBUS_BASE_PATH",
        "The backend root; must end in backend when set (set by libxl).",
    ),
    (
        "BLOCK_DISKSEQ_TIMEOUT",
        "Seconds to wait for the backend to take the device (default 30; at most\n\
         3600; keep it below libxl's 40 s script timeout).",
    ),
    (
        "BLOCK_DISKSEQ_HANDOFF",
        "auto (default): when the backend wrote an `opened` node at probe (a\n\
         backend that checks diskseq), the loop device keeps autoclear and the\n\
         script waits for opened = 1; otherwise the loop device is attached\n\
         persistent and `remove` detaches it, verified. opened or persistent\n\
         force one of the two.",
    ),
    (
        "BLOCK_DISKSEQ_LOG",
        "Log file (absolute path). Default /var/log/xen/xen-hotplug.log if\n\
         /var/log/xen exists, else standard error.",
    ),
    (
        "XENSTORED_PATH, XENSTORED_RUNDIR",
        "Where xenstore is, as for libxenstore; default\n\
         /var/run/xenstored/socket, then /dev/xen/xenbus.",
    ),
    (
        "BLOCK_DISKSEQ_SYSFS, BLOCK_DISKSEQ_PROC",
        "Roots of sysfs and procfs (default /sys, /proc); for tests only.",
    ),
];

/// Its exit statuses: (status, meaning).
pub const EXIT_STATUS: &[(&str, &str)] = &[
    (
        "0",
        "Done (add: the backend has the device; remove: the record is gone and\n\
         what add created is detached). Also for --help and --version.",
    ),
    (
        "1",
        "Failed; the reason is in the log and, for add, in the backend's\n\
         hotplug-error node (hotplug-status = error). A value in the environment\n\
         that does not parse fails too. libxl judges the script by 0 or not 0\n\
         alone.",
    ),
];

/// `block-diskseq`'s entry point (both binaries): help and version here,
/// everything else to the script itself.
pub fn main(mut args: impl Iterator<Item = OsString>) -> ExitCode {
    let first = args.next();
    match first.as_deref().and_then(|a| a.to_str()) {
        Some("-h" | "--help" | "help") => {
            out!("{}", help_text());
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            outln!("{NAME} {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => match vbd::hotplug::main(first.into_iter().chain(args)) {
            0 => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        },
    }
}

/// The `--help` text.
pub fn help_text() -> String {
    let mut text = format!(
        "{ABOUT}\n\nUsage: {NAME} add|remove\n       {NAME} --help|--version\n\n{DESCRIPTION}\n"
    );
    for (title, entries) in [("Environment", ENVIRONMENT), ("Exit status", EXIT_STATUS)] {
        text.push_str(&format!("\n{title}:\n"));
        for (name, meaning) in entries {
            text.push_str(&format!(
                "  {name}\n      {}\n",
                meaning.replace('\n', "\n      ")
            ));
        }
    }
    text
}
