//! `diskseq demo`: the project's main job. Runs the whole handoff on this
//! host (no Xen needed) and reproduces the race the diskseq check closes;
//! `xen_sim::demo` does the work and reports events, [`narration`] words
//! them.

mod narration;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use xen_sim::demo::{DemoOptions, DemoReport};

use crate::exit::{CmdResult, Failure};

#[derive(Args)]
pub struct DemoArgs {
    /// Print a JSON summary instead of the narration.
    #[arg(long)]
    json: bool,
    /// Hotplug script to attach with (default: block-diskseq next to this
    /// executable, else this executable run as block-diskseq).
    #[arg(long, value_name = "PATH")]
    script: Option<PathBuf>,
}

/// The hotplug script's file name; `diskseq` run under it is the script.
pub const HOTPLUG_SCRIPT_NAME: &str = "block-diskseq";

pub fn run(args: DemoArgs) -> CmdResult {
    // Held until the demo ends: the link to ourselves, when we need one.
    let mut _multicall_dir = None;
    let script = match args.script {
        Some(script) => script,
        None => {
            let (script, dir) = default_script()?;
            _multicall_dir = dir;
            script
        }
    };
    let options = DemoOptions {
        script: Some(script),
    };
    let json = args.json;
    let mut out = std::io::stdout().lock();
    if !json {
        let _ = writeln!(
            out,
            "diskseq demo: handing a block device to a Xen guest, race-free, on this host (no Xen)\n"
        );
    }
    let mut narrate = |event: xen_sim::demo::Event<'_>| {
        if !json {
            let _ = narration::narrate(&mut out, &event);
        }
    };
    let report =
        xen_sim::demo::run(&options, &mut narrate).map_err(|e| Failure::Error(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::Error(format!("encoding the summary: {e}")))?;
        let _ = writeln!(out, "{text}");
    } else {
        let _ = writeln!(out, "\n{}", verdict(&report));
    }
    if report.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure::Error(
            "the demo's expectations did not hold (see above)".into(),
        ))
    }
}

/// `block-diskseq` next to this executable (built and installed together:
/// `cargo build`, the package); without it (`cargo run` builds only
/// `diskseq`), a link named `block-diskseq` to this executable in a private
/// directory, which runs the same script code (see `main`).
fn default_script() -> Result<(PathBuf, Option<tempfile::TempDir>), Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::Error(format!("locating this executable: {e}")))?;
    let sibling = exe.with_file_name(HOTPLUG_SCRIPT_NAME);
    if sibling.exists() {
        return Ok((sibling, None));
    }
    let dir = tempfile::Builder::new()
        .prefix("diskseq-demo-script-")
        .tempdir()
        .map_err(|e| Failure::Error(format!("creating a directory for the script link: {e}")))?;
    let link = dir.path().join(HOTPLUG_SCRIPT_NAME);
    std::os::unix::fs::symlink(&exe, &link).map_err(|e| {
        Failure::Error(format!(
            "linking {} to {}: {e}",
            link.display(),
            exe.display()
        ))
    })?;
    Ok((link, Some(dir)))
}

fn verdict(report: &DemoReport) -> String {
    if report.ok {
        format!(
            "OK: the backend with the diskseq check refused the reused device number {} \
             (diskseq {} published, {} found);\n    without the check, guest 2 was served image B. \
             Nothing is left attached.",
            report.race_checked.published.dev,
            report.race_checked.published.diskseq,
            report.race_checked.swapped_in.diskseq
        )
    } else {
        "FAILED: see the steps above (or run with --json for details)".into()
    }
}
