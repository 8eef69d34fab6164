//! `diskseq loop gc`: finds the loop devices `block-diskseq` attached that
//! nothing will detach any more (their backend directory is gone, or its
//! record names another device), lists every labelled device with its
//! verdict, then detaches the leaked ones — each verified on its fd. With
//! `--dry-run` it only lists. Devices without the script's label are never
//! listed nor touched. The judging lives in `vbd::hotplug::leaks`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;
use vbd::hotplug::leaks::{self, Labelled, Verdict};
use xenstore::client::Client;

use crate::exit::{CmdResult, Failure};

#[derive(Args)]
pub struct GcArgs {
    /// List what would be detached; detach nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print a JSON array (one object per labelled device) instead of text.
    #[arg(long)]
    json: bool,
    /// Only devices labelled for backends in domain N by an absolute
    /// backend path (`/local/domain/N/backend/...`).
    #[arg(long, value_name = "N")]
    backend_domain: Option<u32>,
    /// xenstore daemon socket or xenbus device (default: as libxenstore:
    /// $XENSTORED_PATH, $XENSTORED_RUNDIR/socket, /var/run/xenstored/socket,
    /// /dev/xen/xenbus).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

/// One labelled device in `--json`.
#[derive(Serialize)]
struct Row {
    device: PathBuf,
    dev: String,
    diskseq: u64,
    backend: String,
    verdict: &'static str,
    reason: String,
    action: String,
}

pub fn run(args: GcArgs) -> CmdResult {
    let mut client = match &args.socket {
        Some(path) => Client::connect_path(path),
        None => Client::connect(),
    }
    .map_err(|e| Failure::Error(format!("connecting to xenstore: {e}")))?;
    let found = leaks::survey(&mut client, args.backend_domain)
        .map_err(|e| Failure::Error(format!("surveying loop devices: {e}")))?;
    if !args.json {
        print_survey(&found);
    }
    let mut rows = Vec::with_capacity(found.len());
    let mut failed = 0;
    for device in &found {
        let action = if !device.verdict.is_leaked() {
            "kept".to_owned()
        } else if args.dry_run {
            "would detach".to_owned()
        } else {
            match leaks::reap(device) {
                Ok(()) => "detached".to_owned(),
                Err(e) => {
                    failed += 1;
                    format!("not detached: {e}")
                }
            }
        };
        if !args.json && device.verdict.is_leaked() {
            outln!("{}: {action}", device.info.path.display());
        }
        rows.push(row(device, action));
    }
    if args.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| Failure::Error(format!("encoding JSON: {e}")))?;
        outln!("{text}");
    }
    if failed > 0 {
        return Err(Failure::Error(format!(
            "{failed} leaked loop device(s) could not be detached"
        )));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_survey(found: &[Labelled]) {
    if found.is_empty() {
        outln!("no loop device carries a block-diskseq label");
        return;
    }
    outln!(
        "{:<12} {:>7} {:>10} {:<28} VERDICT",
        "DEVICE",
        "DEV",
        "DISKSEQ",
        "BACKEND"
    );
    for device in found {
        outln!(
            "{:<12} {:>7} {:>10} {:<28} {}",
            device.info.path.display(),
            device.info.id.dev().to_string(),
            device.info.id.seq.get(),
            device.backend.dir(),
            device.verdict
        );
    }
}

fn row(device: &Labelled, action: String) -> Row {
    let (verdict, reason) = match &device.verdict {
        Verdict::InUse => ("in-use", String::new()),
        Verdict::Pending => ("pending", String::new()),
        Verdict::Leaked { reason } => ("leaked", reason.clone()),
    };
    Row {
        device: device.info.path.clone(),
        dev: device.info.id.dev().to_string(),
        diskseq: device.info.id.seq.get(),
        backend: device.backend.dir(),
        verdict,
        reason,
        action,
    }
}
