//! `block-diskseq --help` / `--version` (both binaries: the standalone one
//! and `diskseq` run under that name), and the demo refusing a script that
//! is not a hotplug script.

use std::path::Path;
use std::process::{Command, Output};

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        // Never reach a real xenstore if the script ran after all.
        .env_remove("XENBUS_PATH")
        .output()
        .expect("run")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The standalone binary, and `diskseq` linked under the script's name.
fn both_binaries(dir: &Path) -> [std::path::PathBuf; 2] {
    let link = dir.join("block-diskseq");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_diskseq"), &link).unwrap();
    [env!("CARGO_BIN_EXE_block-diskseq").into(), link]
}

#[test]
fn help_documents_the_environment_and_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    for program in both_binaries(dir.path()) {
        for flag in ["--help", "-h"] {
            let out = run(&program, &[flag]);
            let help = text(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{}: {help}", program.display());
            for needle in [
                "Usage: block-diskseq add|remove",
                "Environment:",
                "XENBUS_PATH",
                "BLOCK_DISKSEQ_TIMEOUT",
                "BLOCK_DISKSEQ_HANDOFF",
                "BLOCK_DISKSEQ_LOG",
                "Exit status:",
            ] {
                assert!(help.contains(needle), "{needle} missing:\n{help}");
            }
        }
        let out = run(&program, &["--version"]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            text(&out.stdout),
            format!("block-diskseq {}\n", env!("CARGO_PKG_VERSION"))
        );
        // Anything else is still the script's: an unknown command fails (1).
        let out = run(&program, &["frobnicate"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("unknown command"));
    }
}

#[test]
fn demo_refuses_a_script_that_publishes_nothing() {
    if !testbed::require_root("demo_refuses_a_script_that_publishes_nothing") {
        return;
    }
    let started = std::time::Instant::now();
    let out = run(
        Path::new(env!("CARGO_BIN_EXE_diskseq")),
        &["demo", "--script", "/bin/true"],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("/bin/true exited 0 but published no physical-device"),
        "{stderr}"
    );
    // Words, not a Rust debug dump, and no "?" for values never published.
    for bad in ["Some(", "VbdView", " ? "] {
        assert!(
            !stdout.contains(bad) && !stderr.contains(bad),
            "{bad}:\n{stdout}\n{stderr}"
        );
    }
    // It stops at once instead of waiting for a guest that cannot connect.
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
}

/// `diskseq doctor` on this machine. On a host without Xen (CI) it says so
/// and answers `degraded` (exit 4): nothing here checks diskseq.
#[test]
fn doctor_reports_this_host() {
    let out = run(
        Path::new(env!("CARGO_BIN_EXE_diskseq")),
        &["doctor", "--json"],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)));
    let code = out.status.code().unwrap();
    assert_eq!(report["exit_status"], code);
    let verdict = report["verdict"].as_str().unwrap();
    assert_eq!(
        (verdict, code),
        match verdict {
            "safe" => ("safe", 0),
            "degraded" => ("degraded", 4),
            _ => ("unsafe", 5),
        }
    );
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "kernel", "loop", "xen", "handoff", "script", "default", "xenstore",
    ] {
        assert!(names.contains(&name), "no {name} check: {names:?}");
    }
    if !Path::new("/proc/xen").exists() {
        assert_eq!(verdict, "degraded", "{report:#}");
        let xen = &report["checks"][names.iter().position(|n| *n == "xen").unwrap()];
        assert!(
            xen["summary"].as_str().unwrap().contains("not a Xen host"),
            "{xen}"
        );
        let human = run(Path::new(env!("CARGO_BIN_EXE_diskseq")), &["doctor"]);
        assert_eq!(human.status.code(), Some(4));
        assert!(
            text(&human.stdout).contains("verdict: degraded"),
            "{}",
            text(&human.stdout)
        );
    }
}
