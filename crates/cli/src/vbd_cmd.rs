//! `diskseq backend`, `diskseq attach`, `diskseq detach`: the backend model
//! in the foreground, and libxl's attach/detach of a disk. The work is in
//! `xen_sim::backend` and `xen_sim::toolstack`; this module parses and prints.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::Args;
use vbd::schema::Mode;
use xen_sim::backend::{Backend, BackendConfig, DiskseqPolicy, OpenMethod};
use xen_sim::toolstack::{DetachReport, DeviceType, DiskSpec, Toolstack, ToolstackError, Vdev};
use xenstore::Client;

use crate::exit::{CmdResult, Failure};

/// Where the xenstore daemon is (shared by the three commands).
#[derive(Args)]
pub struct SocketArg {
    /// Daemon socket; default: $XENSTORED_PATH, $XENSTORED_RUNDIR/socket,
    /// /var/run/xenstored/socket, then /dev/xen/xenbus (as libxenstore).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

impl SocketArg {
    fn connect(&self) -> Result<Client, Failure> {
        match &self.socket {
            Some(path) => Client::connect_socket(path),
            None => Client::connect(),
        }
        .map_err(|e| Failure::Error(format!("connecting to xenstore: {e}")))
    }
}

#[derive(Args)]
pub struct BackendArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// The backend domain whose `backend/vbd` is served.
    #[arg(long, default_value_t = 0, value_name = "N")]
    domid: u32,
    /// Refuse records without a `diskseq` node (legacy scripts).
    #[arg(long)]
    require_diskseq: bool,
    /// Open the device by its sequence number, then check the device number.
    #[arg(long)]
    open_by_diskseq: bool,
}

/// Runs the backend until killed (SIGTERM/SIGINT end it; its fds close with
/// it and xenstore keeps the state a restarted backend resumes from).
pub fn backend(args: BackendArgs) -> CmdResult {
    let client = args.socket.connect()?;
    let mut config = BackendConfig::new(args.domid);
    if args.require_diskseq {
        config.policy = DiskseqPolicy::Require;
    }
    if args.open_by_diskseq {
        config.open_method = OpenMethod::ByDiskseq;
    }
    let never = AtomicBool::new(false);
    Backend::new(client, config)
        .run(&never)
        .map_err(|e| Failure::Error(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

/// Which disk of which guest, served by which domain: what attach and
/// detach both name.
#[derive(Args)]
pub struct GuestDisk {
    /// The guest domain.
    #[arg(long, value_name = "N")]
    domain: u32,
    /// The guest's device: xvda, sdb, hdc, or a device id such as 51712.
    #[arg(long)]
    vdev: Vdev,
    /// The domain running the backend.
    #[arg(long, default_value_t = 0, value_name = "N")]
    backend_domain: u32,
}

#[derive(Args)]
pub struct AttachArgs {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    disk: GuestDisk,
    /// A block device or a regular file.
    #[arg(long, value_name = "PATH")]
    target: PathBuf,
    /// r (read-only) or w (read-write); w! waives the sharing check.
    #[arg(long, default_value = "w")]
    mode: Mode,
    /// Attach as a cdrom.
    #[arg(long)]
    cdrom: bool,
    /// Hotplug script (default: block-diskseq next to this executable).
    #[arg(long, value_name = "PATH")]
    script: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn attach(args: AttachArgs) -> CmdResult {
    let script = match args.script {
        Some(script) => script,
        None => xen_sim::toolstack::script::default_script()
            .map_err(|e| Failure::Error(format!("locating block-diskseq: {e}")))?,
    };
    let spec = DiskSpec {
        frontend_domid: args.disk.domain,
        backend_domid: args.disk.backend_domain,
        vdev: args.disk.vdev,
        target: args.target,
        mode: args.mode,
        device_type: if args.cdrom {
            DeviceType::Cdrom
        } else {
            DeviceType::Disk
        },
        script,
        discard_enable: true,
    };
    let toolstack = Toolstack::new(args.socket.socket);
    match toolstack.attach(&spec) {
        Ok(report) => {
            if args.json {
                print_json(&serde_json::json!({ "ok": true, "attach": report }))?;
            } else {
                // Decimal, as the kernel and sysfs; xenstore's nodes are hex.
                let diskseq = match (report.diskseq, report.diskseq_node.as_deref()) {
                    (Some(seq), _) => seq.to_string(),
                    (None, Some(node)) => format!("- (node {node:?} is not a diskseq)"),
                    (None, None) => "- (legacy script)".to_owned(),
                };
                outln!(
                    "attached {} to domain {} as {} ({}): dev {}, diskseq {diskseq}",
                    spec.target.display(),
                    spec.frontend_domid,
                    report.vdev,
                    report.devid,
                    report.dev.as_deref().unwrap_or("-"),
                );
                outln!("backend {}", report.backend);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if args.json {
                let hotplug_error = match &e {
                    ToolstackError::Hotplug { hotplug_error, .. } => hotplug_error.clone(),
                    _ => None,
                };
                print_json(&serde_json::json!({
                    "ok": false,
                    "error": e.to_string(),
                    "hotplug_error": hotplug_error,
                }))?;
            }
            Err(Failure::Error(e.to_string()))
        }
    }
}

#[derive(Args)]
pub struct DetachArgs {
    #[command(flatten)]
    socket: SocketArg,
    #[command(flatten)]
    disk: GuestDisk,
    /// Seconds to wait for the backend to close (libxl's 10) before removing
    /// the disk anyway; a backend with no guest frontend never closes.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = parse_seconds)]
    timeout: f64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// A non-negative, finite number of seconds.
fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=3600.0).contains(&secs) => Ok(secs),
        _ => Err(format!(
            "'{text}' is not a number of seconds from 0 to 3600"
        )),
    }
}

pub fn detach(args: DetachArgs) -> CmdResult {
    let mut toolstack = Toolstack::new(args.socket.socket);
    toolstack.timeouts.destroy = std::time::Duration::from_secs_f64(args.timeout);
    let report = match toolstack.detach(args.disk.domain, &args.disk.vdev, args.disk.backend_domain)
    {
        Ok(report) => report,
        Err(e) => {
            if args.json {
                print_json(&serde_json::json!({ "ok": false, "error": e.to_string() }))?;
            }
            return Err(Failure::Error(e.to_string()));
        }
    };
    if args.json {
        print_json(&serde_json::json!({ "ok": true, "detach": report }))?;
    } else if !report.backend_was_present {
        outln!("{}: no backend; removed the frontend only", report.backend);
    } else {
        outln!(
            "detached domain {} {}: {}",
            args.disk.domain,
            args.disk.vdev,
            describe_detach(&report)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How a detach went, in words: `backend Closed, script remove: exit status 0`
/// (`diskseq detach` and the demo's step 6 both say it so).
pub fn describe_detach(report: &DetachReport) -> String {
    format!(
        "{}{}",
        if report.closed {
            "backend Closed"
        } else {
            "backend did not close in time; removed anyway"
        },
        report
            .script
            .as_ref()
            .map(|s| format!(", script remove: {}", s.describe()))
            .unwrap_or_default()
    )
}

fn print_json(value: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::Error(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    Ok(())
}
