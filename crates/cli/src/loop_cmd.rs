//! `diskseq loop attach|detach|ls`: loop devices by identity. Attach is
//! atomic and kill-safe, detach refuses any instance but the named one. The
//! work is in the `diskseq` crate; this module parses and prints.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use diskseq::{
    detach_verified, list_loops, DevNum, DiskId, DiskSeq, LoopDevice, LoopInfo, LoopOptions,
    PersistError,
};
use rustix::fs::FileType;
use serde::Serialize;

use crate::dev::{failure, print_line, DeviceArg, DEV_WIDTH};
use crate::exit::{CmdResult, Failure};

#[derive(Subcommand)]
pub enum LoopCommand {
    /// Attach a file to a free loop device (persistent unless --autoclear).
    Attach(AttachArgs),
    /// Detach a loop device, only if it is still the named instance.
    Detach(DetachArgs),
    /// List bound loop devices.
    Ls(LsArgs),
    /// Detach loop devices block-diskseq left behind (listed first; --dry-run).
    Gc(crate::loop_gc::GcArgs),
}

#[derive(Args)]
pub struct AttachArgs {
    /// The file to attach.
    file: PathBuf,
    /// The device refuses writes (the file is opened read-only).
    #[arg(long)]
    read_only: bool,
    /// Bypass the page cache for the file.
    #[arg(long)]
    direct_io: bool,
    /// Detach when the last user closes the device (which, unless someone
    /// else opened it meanwhile, is when this command exits).
    #[arg(long)]
    autoclear: bool,
    /// Print a JSON object (`device`, `dev`, `diskseq`).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DetachArgs {
    /// The loop device: decimal MAJ:MIN or its path (/dev/loopN).
    device: DeviceArg,
    /// The diskseq the device had when it was attached.
    #[arg(long, value_name = "N")]
    diskseq: DiskSeq,
}

#[derive(Args)]
pub struct LsArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(command: LoopCommand) -> CmdResult {
    match command {
        LoopCommand::Attach(args) => attach(args),
        LoopCommand::Detach(args) => detach(args),
        LoopCommand::Ls(args) => ls(args),
        LoopCommand::Gc(args) => crate::loop_gc::run(args),
    }
}

#[derive(Serialize)]
struct Attached {
    device: PathBuf,
    dev: String,
    diskseq: u64,
}

/// Attaches kill-safely: the device is autoclear until its identity has
/// been printed (our "record"), so a command killed before that, or whose
/// output cannot be written, leaves no device behind.
fn attach(args: AttachArgs) -> CmdResult {
    let file = open_backing(&args)?;
    let opts = LoopOptions {
        read_only: args.read_only,
        direct_io: args.direct_io,
        autoclear: args.autoclear,
        ..LoopOptions::default()
    };
    let print = |device: &LoopDevice| -> std::io::Result<()> {
        let id = device.id();
        let mut out = std::io::stdout().lock();
        if args.json {
            let attached = Attached {
                device: device.path().to_owned(),
                dev: id.dev().to_string(),
                diskseq: id.seq.get(),
            };
            let text = serde_json::to_string(&attached).map_err(std::io::Error::other)?;
            writeln!(out, "{text}")?;
        } else {
            writeln!(out, "device:  {}", device.path().display())?;
            writeln!(out, "dev:     {}", id.dev())?;
            writeln!(out, "diskseq: {}", id.seq)?;
        }
        out.flush()
    };
    match LoopDevice::attach_persistent(file.as_fd(), &opts, print) {
        Ok(_device) => Ok(ExitCode::SUCCESS),
        Err(PersistError::Attach(e)) => Err(failure(e)),
        Err(e) => Err(Failure::Error(e.to_string())),
    }
}

fn open_backing(args: &AttachArgs) -> Result<File, Failure> {
    let file = OpenOptions::new()
        .read(true)
        .write(!args.read_only)
        .open(&args.file)
        .map_err(|e| Failure::Error(format!("opening {}: {e}", args.file.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| Failure::Error(format!("stat {}: {e}", args.file.display())))?;
    if !meta.is_file() {
        return Err(Failure::Error(format!(
            "{}: not a regular file",
            args.file.display()
        )));
    }
    Ok(file)
}

/// The device number a detach target names. A path only gives a number
/// (`stat`); the instance is then proven on the fd by `detach_verified`.
fn target_dev(target: &DeviceArg) -> Result<DevNum, Failure> {
    let path = match target {
        DeviceArg::Number(dev) => return Ok(*dev),
        DeviceArg::Path(path) => path,
    };
    let stat = rustix::fs::stat(path)
        .map_err(|e| Failure::Error(format!("stat {}: {e}", path.display())))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::BlockDevice {
        return Err(Failure::Error(format!(
            "{}: not a block device",
            path.display()
        )));
    }
    Ok(DevNum::from_rdev(stat.st_rdev))
}

fn detach(args: DetachArgs) -> CmdResult {
    let dev = target_dev(&args.device)?;
    detach_verified(&DiskId::new(dev, args.diskseq), None).map_err(failure)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct LoopRow {
    device: PathBuf,
    dev: String,
    major: u32,
    minor: u32,
    diskseq: u64,
    backing_file: Option<PathBuf>,
    backing_dev: String,
    backing_inode: u64,
    offset: u64,
    size_limit: u64,
    read_only: bool,
    autoclear: bool,
    partscan: bool,
    direct_io: bool,
}

impl From<&LoopInfo> for LoopRow {
    fn from(info: &LoopInfo) -> Self {
        LoopRow {
            device: info.path.clone(),
            dev: info.id.dev().to_string(),
            major: info.id.major,
            minor: info.id.minor,
            diskseq: info.id.seq.get(),
            backing_file: info.backing_file.clone(),
            backing_dev: DevNum::from_rdev(info.backing.dev).to_string(),
            backing_inode: info.backing.ino,
            offset: info.offset,
            size_limit: info.size_limit,
            read_only: info.read_only,
            autoclear: info.autoclear,
            partscan: info.partscan,
            direct_io: info.direct_io,
        }
    }
}

impl LoopRow {
    fn flags(&self) -> String {
        let flags: Vec<&str> = [
            (self.read_only, "ro"),
            (self.autoclear, "autoclear"),
            (self.partscan, "partscan"),
            (self.direct_io, "dio"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if flags.is_empty() {
            "-".to_owned()
        } else {
            flags.join(",")
        }
    }
}

fn ls(args: LsArgs) -> CmdResult {
    let loops = list_loops().map_err(failure)?;
    let rows: Vec<LoopRow> = loops.iter().map(LoopRow::from).collect();
    if args.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| Failure::Error(format!("encoding JSON: {e}")))?;
        outln!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    print_line(&format!(
        "{:<12} {:>DEV_WIDTH$} {:>10} {:>DEV_WIDTH$} {:>10} {:<18} BACKING-FILE",
        "DEVICE", "DEV", "DISKSEQ", "B-DEV", "B-INODE", "FLAGS"
    ));
    for row in &rows {
        print_line(&format!(
            "{:<12} {:>DEV_WIDTH$} {:>10} {:>DEV_WIDTH$} {:>10} {:<18} {}",
            row.device.display(),
            row.dev,
            row.diskseq,
            row.backing_dev,
            row.backing_inode,
            row.flags(),
            row.backing_file
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string()),
        ));
    }
    Ok(ExitCode::SUCCESS)
}
