//! `diskseq doctor`: tells a host administrator whether this host's block
//! handoff is race-free, and how. It gathers facts read-only (sysfs, procfs,
//! the scripts directory, xenstore), then judges them in [`assess`], a pure
//! function the unit tests drive with made-up hosts.
//!
//! Verdicts and exit statuses:
//! - `safe` (0): the backend checks diskseq on the device it opened
//!   (patched xen-blkback, `docs/kernel.md`) and block-diskseq hands off by
//!   its `opened` node;
//! - `degraded` (4): block-diskseq can run, but nothing in the kernel
//!   checks the disk it opens (stock blkback, or no Xen here): the script
//!   attaches loop devices persistent and verifies on `remove`, and a
//!   stale record can still name a reused device number;
//! - `unsafe` (5): the kernel cannot tell disk instances apart (no diskseq,
//!   before Linux 5.15), or a Xen host has no block-diskseq to run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::exit::{CmdResult, Failure};

/// Exit status of a `degraded` verdict.
pub const EXIT_DEGRADED: u8 = 4;
/// Exit status of an `unsafe` verdict.
pub const EXIT_UNSAFE: u8 = 5;

/// Where libxl looks for hotplug scripts.
const SCRIPTS_DIR: &str = "/etc/xen/scripts";
/// How long xenstore may take to answer before it counts as unreachable
/// (`/dev/xen/xenbus` blocks without a daemon behind it).
const XENSTORE_WAIT: Duration = Duration::from_secs(3);

#[derive(Args)]
pub struct DoctorArgs {
    /// Print a JSON object (verdict, exit_status, checks) instead of text.
    #[arg(long)]
    json: bool,
}

/// What was found on this host; everything [`assess`] judges.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Facts {
    /// `uname -r`.
    pub kernel_release: String,
    /// Major and minor version parsed from it.
    pub kernel_version: Option<(u32, u32)>,
    /// Block devices in `/sys/block`, and how many have a `diskseq` attribute.
    pub block_devices: usize,
    pub with_diskseq: usize,
    /// `/proc/xen/capabilities` (`control_d` in dom0); `None`: not Xen.
    pub xen_capabilities: Option<String>,
    /// `/sys/module/xen_blkback` exists.
    pub blkback_loaded: bool,
    /// `/sys/module/xen_blkback/taint` (`O`: an out-of-tree build).
    pub blkback_taint: Option<String>,
    /// vbd backends in this domain's xenstore, and how many have `opened`.
    pub vbds: Option<(usize, usize)>,
    /// Why xenstore could not be asked (`None`: it answered).
    pub xenstore_error: Option<String>,
    /// `BLOCK_DISKSEQ_HANDOFF` in this environment.
    pub handoff_env: Option<String>,
    /// `/etc/xen/scripts/block-diskseq` exists and is executable.
    pub script_installed: bool,
    /// What `/etc/xen/scripts/block` resolves to (`None`: absent).
    pub default_block: Option<PathBuf>,
    /// That resolves to block-diskseq.
    pub default_is_ours: bool,
}

/// One judged fact.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub summary: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Informational: does not change the verdict.
    Info,
    Ok,
    /// Makes the verdict at most `degraded`.
    Warn,
    /// Makes the verdict `unsafe`.
    Fail,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Safe,
    Degraded,
    Unsafe,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub exit_status: u8,
    pub checks: Vec<Check>,
    pub facts: Facts,
}

pub fn run(args: DoctorArgs) -> CmdResult {
    let report = assess(gather());
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::Error(format!("encoding JSON: {e}")))?;
        outln!("{text}");
    } else {
        print_human(&report);
    }
    Ok(ExitCode::from(report.exit_status))
}

fn print_human(report: &Report) {
    outln!("diskseq doctor: is this host's block handoff race-free?\n");
    for check in &report.checks {
        let tag = match check.status {
            Status::Info => "info",
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        outln!("[{tag:<4}] {:<9} {}", check.name, check.summary);
    }
    let verdict = match report.verdict {
        Verdict::Safe => "safe: the backend refuses any disk but the one published",
        Verdict::Degraded => {
            "degraded: block-diskseq works, but nothing in the kernel checks the disk \
             the backend opens (see WARN)"
        }
        Verdict::Unsafe => "unsafe: a guest can be handed the wrong disk (see FAIL)",
    };
    outln!("\nverdict: {verdict} (exit {})", report.exit_status);
}

/// Reads everything, read-only. Missing files are facts, not errors.
pub fn gather() -> Facts {
    let read = |path: &str| fs::read_to_string(path).ok().map(|s| s.trim().to_owned());
    let kernel_release = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (mut block_devices, mut with_diskseq) = (0, 0);
    if let Ok(entries) = fs::read_dir("/sys/block") {
        for entry in entries.flatten() {
            block_devices += 1;
            if entry.path().join("diskseq").exists() {
                with_diskseq += 1;
            }
        }
    }
    let (vbds, xenstore_error) = match ask_xenstore() {
        Ok(vbds) => (Some(vbds), None),
        Err(e) => (None, Some(e)),
    };
    let script = Path::new(SCRIPTS_DIR).join(crate::hotplug_help::NAME);
    let default = Path::new(SCRIPTS_DIR).join("block");
    let ours = fs::canonicalize(&script).ok();
    let default_block = fs::canonicalize(&default).ok();
    Facts {
        kernel_version: parse_version(&kernel_release),
        kernel_release,
        block_devices,
        with_diskseq,
        xen_capabilities: read("/proc/xen/capabilities"),
        blkback_loaded: Path::new("/sys/module/xen_blkback").exists(),
        blkback_taint: read("/sys/module/xen_blkback/taint"),
        vbds,
        xenstore_error,
        handoff_env: std::env::var("BLOCK_DISKSEQ_HANDOFF").ok(),
        script_installed: rustix::fs::access(&script, rustix::fs::Access::EXEC_OK).is_ok(),
        default_is_ours: default_block.is_some() && default_block == ours,
        default_block,
    }
}

/// `6.1.0-27-amd64` -> (6, 1).
fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// (vbd backends, those with `opened`) in this domain, bounded in time.
fn ask_xenstore() -> Result<(usize, usize), String> {
    let (tx, rx) = mpsc::channel();
    // The thread may stay blocked on a xenbus device nobody serves; it
    // dies with the process.
    std::thread::spawn(move || {
        let result = (|| -> Result<(usize, usize), xenstore::client::Error> {
            let mut client = xenstore::Client::connect()?;
            let (mut vbds, mut opened) = (0, 0);
            let frontends = match client.directory("backend/vbd") {
                Ok(list) => list,
                Err(e) if e.is_not_found() => Vec::new(),
                Err(e) => return Err(e),
            };
            for frontend in frontends {
                let devices = match client.directory(&format!("backend/vbd/{frontend}")) {
                    Ok(list) => list,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                };
                for devid in devices {
                    vbds += 1;
                    if client.exists(&format!("backend/vbd/{frontend}/{devid}/opened"))? {
                        opened += 1;
                    }
                }
            }
            Ok((vbds, opened))
        })();
        let _ = tx.send(result.map_err(|e| e.to_string()));
    });
    rx.recv_timeout(XENSTORE_WAIT)
        .unwrap_or_else(|_| Err(format!("no answer within {} s", XENSTORE_WAIT.as_secs())))
}

/// Judges the facts: one check per question, then the verdict.
pub fn assess(facts: Facts) -> Report {
    let mut checks = Vec::new();
    let mut check = |name, status, summary: String| {
        checks.push(Check {
            name,
            status,
            summary,
        })
    };
    let at_least = |want: (u32, u32)| facts.kernel_version.is_some_and(|v| v >= want);

    // The kernel: diskseq at all (5.15), and loop devices that get a new
    // one on every attach (6.5).
    let release = &facts.kernel_release;
    if facts.with_diskseq > 0 || (facts.block_devices == 0 && at_least((5, 15))) {
        check(
            "kernel",
            Status::Ok,
            format!(
                "{release}: disks carry a diskseq (BLKGETDISKSEQ, sysfs; {} of {} block devices)",
                facts.with_diskseq, facts.block_devices
            ),
        );
    } else {
        check(
            "kernel",
            Status::Fail,
            format!(
                "{release}: no diskseq (needs Linux 5.15): disk instances cannot be told apart"
            ),
        );
    }
    if at_least((6, 5)) {
        check(
            "loop",
            Status::Ok,
            "a loop device gets a new diskseq on every attach and detach (Linux 6.5+)".into(),
        );
    } else if at_least((5, 15)) {
        check(
            "loop",
            Status::Ok,
            "a loop device gets a new diskseq on every attach (5.15+; the detach bump came in 6.5)"
                .into(),
        );
    } else {
        check(
            "loop",
            Status::Fail,
            format!("{release}: loop devices carry no diskseq before Linux 5.15"),
        );
    }

    // Xen and its block backend.
    let dom0 = facts
        .xen_capabilities
        .as_deref()
        .is_some_and(|c| c.contains("control_d"));
    match &facts.xen_capabilities {
        None => check(
            "xen",
            Status::Warn,
            "not a Xen host (no /proc/xen): no backend here hands disks to guests; \
             `diskseq demo` shows the handoff without Xen"
                .into(),
        ),
        Some(_) if !dom0 => check(
            "xen",
            Status::Info,
            "a Xen guest or driver domain (not dom0)".into(),
        ),
        Some(_) => check("xen", Status::Ok, "Xen dom0".into()),
    }
    let checks_diskseq = backend_checks_diskseq(&facts);
    if facts.xen_capabilities.is_some() {
        let (status, summary) = match (facts.blkback_loaded, &checks_diskseq) {
            (false, _) => (
                Status::Warn,
                "xen-blkback is not loaded: no kernel backend serves phy disks yet".to_owned(),
            ),
            (true, Some(how)) => (
                Status::Ok,
                format!("xen-blkback checks diskseq on the disk it opens ({how})"),
            ),
            (true, None) => (
                Status::Warn,
                "xen-blkback is Debian's stock module: it opens the device number without \
                 checking diskseq (docs/kernel.md has the patched module)"
                    .to_owned(),
            ),
        };
        check("blkback", status, summary);
    }

    // What block-diskseq would do (its `auto` rule), in this environment.
    let handoff = facts.handoff_env.as_deref().unwrap_or("auto");
    let resolved = match handoff {
        "auto" if checks_diskseq.is_some() => "opened",
        "auto" => "persistent",
        other => other,
    };
    let (status, summary) = match resolved {
        "opened" => (
            Status::Ok,
            format!(
                "BLOCK_DISKSEQ_HANDOFF={handoff}: block-diskseq waits for the backend's \
                 `opened` = 1; loop devices keep autoclear"
            ),
        ),
        "persistent" => (
            Status::Warn,
            format!(
                "BLOCK_DISKSEQ_HANDOFF={handoff}: loop devices are attached persistent and \
                 `remove` detaches them, verified (no backend here writes `opened`)"
            ),
        ),
        other => (
            Status::Fail,
            format!("BLOCK_DISKSEQ_HANDOFF={other}: not auto, opened or persistent; block-diskseq add fails"),
        ),
    };
    check("handoff", status, summary);

    // The scripts libxl runs.
    let script = format!("{SCRIPTS_DIR}/{}", crate::hotplug_help::NAME);
    match (facts.script_installed, dom0) {
        (true, _) => check(
            "script",
            Status::Ok,
            format!("{script} is installed (disks with script=block-diskseq use it)"),
        ),
        (false, true) => check(
            "script",
            Status::Fail,
            format!("{script} is missing: every phy disk goes through Xen's stock script"),
        ),
        (false, false) => check("script", Status::Info, format!("{script} is not installed")),
    }
    let default = match (&facts.default_block, facts.default_is_ours) {
        (Some(_), true) => "libxl's default `block` script is block-diskseq".to_owned(),
        (Some(path), false) => format!(
            "libxl's default `block` script is {} (Xen's stock one): only disks naming \
             script=block-diskseq are handed off by diskseq (README.Debian: the opt-in)",
            path.display()
        ),
        (None, _) => format!("no {SCRIPTS_DIR}/block"),
    };
    check("default", Status::Info, default);

    // xenstore, which the script talks to.
    match (&facts.xenstore_error, facts.vbds) {
        (None, Some((vbds, opened))) => check(
            "xenstore",
            Status::Ok,
            format!("reachable; {vbds} vbd backend(s) in this domain, {opened} with `opened`"),
        ),
        (Some(e), _) if dom0 => check("xenstore", Status::Warn, format!("not reachable: {e}")),
        (e, _) => check(
            "xenstore",
            Status::Info,
            format!(
                "not reachable{}",
                e.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
        ),
    }

    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    let (verdict, exit_status) = match worst {
        Status::Fail => (Verdict::Unsafe, EXIT_UNSAFE),
        Status::Warn => (Verdict::Degraded, EXIT_DEGRADED),
        Status::Ok | Status::Info => (Verdict::Safe, 0),
    };
    Report {
        verdict,
        exit_status,
        checks,
        facts,
    }
}

/// Whether the backend checks diskseq, and the evidence: backends that
/// wrote `opened` (only a checking backend does), else an out-of-tree
/// xen-blkback build (taint `O`, the patched module of docs/kernel.md).
fn backend_checks_diskseq(facts: &Facts) -> Option<String> {
    match facts.vbds {
        Some((vbds, opened)) if vbds > 0 && opened == vbds => {
            return Some(format!("all {vbds} vbd backend(s) wrote `opened`"))
        }
        Some((vbds, opened)) if vbds > 0 && opened > 0 => {
            return Some(format!("{opened} of {vbds} vbd backend(s) wrote `opened`"))
        }
        Some((vbds, _)) if vbds > 0 => return None,
        _ => {}
    }
    let out_of_tree = facts
        .blkback_taint
        .as_deref()
        .is_some_and(|t| t.contains('O'));
    (facts.blkback_loaded && out_of_tree)
        .then(|| "an out-of-tree xen-blkback build (taint O); no vbd yet to confirm".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Debian 12 dom0 with Xen 4.17 and block-diskseq installed.
    fn dom0() -> Facts {
        Facts {
            kernel_release: "6.6.0-amd64".into(),
            kernel_version: Some((6, 6)),
            block_devices: 3,
            with_diskseq: 3,
            xen_capabilities: Some("control_d".into()),
            blkback_loaded: true,
            blkback_taint: Some(String::new()),
            vbds: Some((2, 0)),
            script_installed: true,
            default_block: Some("/etc/xen/scripts/block".into()),
            ..Facts::default()
        }
    }

    fn status(report: &Report, name: &str) -> Status {
        report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .status
    }

    #[test]
    fn stock_blkback_is_degraded() {
        let report = assess(dom0());
        assert_eq!(report.verdict, Verdict::Degraded);
        assert_eq!(report.exit_status, EXIT_DEGRADED);
        assert_eq!(status(&report, "blkback"), Status::Warn);
        assert_eq!(status(&report, "handoff"), Status::Warn);
    }

    #[test]
    fn patched_blkback_is_safe() {
        let report = assess(Facts {
            vbds: Some((2, 2)),
            ..dom0()
        });
        assert_eq!(report.verdict, Verdict::Safe, "{:?}", report.checks);
        assert_eq!(report.exit_status, 0);
        // Before any vbd exists, the out-of-tree module is the evidence.
        let report = assess(Facts {
            vbds: Some((0, 0)),
            blkback_taint: Some("OE".into()),
            ..dom0()
        });
        assert_eq!(report.verdict, Verdict::Safe, "{:?}", report.checks);
        // Forcing persistent gives the check up.
        let report = assess(Facts {
            vbds: Some((2, 2)),
            handoff_env: Some("persistent".into()),
            ..dom0()
        });
        assert_eq!(report.verdict, Verdict::Degraded);
    }

    #[test]
    fn old_kernels_and_missing_scripts_are_unsafe() {
        // Debian 12's 6.1: attach bumps the diskseq, enough for the check.
        let debian12 = assess(Facts {
            kernel_version: Some((6, 1)),
            vbds: Some((1, 1)),
            ..dom0()
        });
        assert_eq!(debian12.verdict, Verdict::Safe, "{:?}", debian12.checks);
        let no_diskseq = assess(Facts {
            kernel_version: Some((5, 10)),
            with_diskseq: 0,
            vbds: Some((1, 1)),
            ..dom0()
        });
        assert_eq!(no_diskseq.verdict, Verdict::Unsafe);
        assert_eq!(no_diskseq.exit_status, EXIT_UNSAFE);
        assert_eq!(status(&no_diskseq, "kernel"), Status::Fail);
        assert_eq!(status(&no_diskseq, "loop"), Status::Fail);
        let no_script = assess(Facts {
            script_installed: false,
            vbds: Some((1, 1)),
            ..dom0()
        });
        assert_eq!(no_script.verdict, Verdict::Unsafe);
        let typo = assess(Facts {
            handoff_env: Some("sysfs".into()),
            vbds: Some((1, 1)),
            ..dom0()
        });
        assert_eq!(status(&typo, "handoff"), Status::Fail);
    }

    #[test]
    fn a_host_without_xen_says_so() {
        let report = assess(Facts {
            xen_capabilities: None,
            blkback_loaded: false,
            vbds: None,
            xenstore_error: Some("no xenstore daemon reachable".into()),
            script_installed: false,
            default_block: None,
            ..dom0()
        });
        assert_eq!(report.verdict, Verdict::Degraded);
        let xen = report.checks.iter().find(|c| c.name == "xen").unwrap();
        assert!(xen.summary.contains("not a Xen host"), "{xen:?}");
        assert!(report.checks.iter().all(|c| c.name != "blkback"));
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_version("6.1.0-27-amd64"), Some((6, 1)));
        assert_eq!(parse_version("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(parse_version("garbage"), None);
    }
}
