//! `diskseq ls`, `diskseq show`, `diskseq open`: block devices by identity.
//! The work is in the `diskseq` crate; this module parses and prints.
//!
//! On the command line and in JSON, device numbers and diskseq values are
//! decimal, as `lsblk` and sysfs show them (the hex forms are xenstore's).

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Args;
use diskseq::{
    list_devices, open_by_diskseq, open_verified, Access, BlockDevice, DevNum, DeviceEntry, DiskId,
    DiskSeq,
};
use serde::Serialize;

use crate::exit::{CmdResult, Failure};

/// The fd number `diskseq open` hands the device over on.
const HANDOFF_FD: i32 = 3;

/// Maps a library error to the exit status: 3 when the named instance is
/// not there (stale), 1 otherwise.
pub(crate) fn failure(err: diskseq::Error) -> Failure {
    if err.is_stale() {
        Failure::Stale(err.to_string())
    } else {
        Failure::Error(err.to_string())
    }
}

#[derive(Args)]
pub struct LsArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// A device named on the command line: a decimal number or a path.
#[derive(Clone, Debug)]
pub(crate) enum DeviceArg {
    /// `7:0`.
    Number(DevNum),
    /// `/dev/loop0` (anything with a `/`).
    Path(PathBuf),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.parse::<DevNum>() {
            Ok(dev) => Ok(DeviceArg::Number(dev)),
            Err(_) if text.contains('/') => Ok(DeviceArg::Path(PathBuf::from(text))),
            Err(e) => Err(format!("{e}; give a decimal MAJ:MIN or a device path")),
        }
    }
}

#[derive(Args)]
pub struct ShowArgs {
    /// A device path (/dev/loop0) or a decimal device number (7:0).
    device: DeviceArg,
    /// Print a JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("by").args(["partition", "dev"]).multiple(false)))]
pub struct OpenArgs {
    /// The disk's sequence number (decimal, or hex with 0x).
    #[arg(long, value_name = "N")]
    diskseq: DiskSeq,
    /// Open partition P of the disk with that diskseq.
    #[arg(long, value_name = "P")]
    partition: Option<u32>,
    /// Open this device number and require that diskseq (decimal MAJ:MIN).
    #[arg(long, value_name = "MAJ:MIN")]
    dev: Option<DevNum>,
    /// Open read-write (default: read-only).
    #[arg(long)]
    write: bool,
    /// The command to run with the device on fd 3.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// One device as `ls` and `show` print it (JSON keys are the field names).
#[derive(Serialize)]
struct DeviceRow {
    name: String,
    dev: String,
    major: u32,
    minor: u32,
    diskseq: Option<u64>,
    size: u64,
    ro: bool,
    kind: &'static str,
    parent: Option<String>,
    backing_file: Option<PathBuf>,
}

impl From<&DeviceEntry> for DeviceRow {
    fn from(entry: &DeviceEntry) -> Self {
        DeviceRow {
            name: entry.name.clone(),
            dev: entry.dev.to_string(),
            major: entry.dev.major,
            minor: entry.dev.minor,
            diskseq: entry.seq.map(DiskSeq::get),
            size: entry.size_bytes,
            ro: entry.read_only,
            kind: entry.kind.as_str(),
            parent: entry.parent.clone(),
            backing_file: entry.loop_backing.clone(),
        }
    }
}

fn print_table(rows: &[DeviceRow]) {
    println!(
        "{:<12} {:>9} {:>10} {:>14} {:>2} {:<4} BACKING-FILE",
        "NAME", "DEV", "DISKSEQ", "SIZE", "RO", "KIND"
    );
    for row in rows {
        println!(
            "{:<12} {:>9} {:>10} {:>14} {:>2} {:<4} {}",
            row.name,
            row.dev,
            row.diskseq
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            row.size,
            u8::from(row.ro),
            row.kind,
            row.backing_file
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string()),
        );
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(value).map_err(|e| Failure::Error(format!("encoding JSON: {e}")))
}

/// `diskseq ls`: every block device the kernel knows.
pub fn ls(args: LsArgs) -> CmdResult {
    let devices = list_devices().map_err(failure)?;
    let rows: Vec<DeviceRow> = devices.iter().map(DeviceRow::from).collect();
    if args.json {
        println!("{}", to_json(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// `diskseq show`: one device, by path or by number. For a path, the
/// number and diskseq come from the opened fd, not from the name.
pub fn show(args: ShowArgs) -> CmdResult {
    let (dev, seq_from_fd) = match &args.device {
        DeviceArg::Number(dev) => (*dev, None),
        DeviceArg::Path(path) => {
            let device = BlockDevice::open(path, Access::ReadOnly).map_err(failure)?;
            (device.dev(), Some(device.id().seq))
        }
    };
    let entry = list_devices()
        .map_err(failure)?
        .into_iter()
        .find(|entry| entry.dev == dev)
        .ok_or_else(|| Failure::Error(format!("no block device {dev}")))?;
    let mut row = DeviceRow::from(&entry);
    if let Some(seq) = seq_from_fd {
        row.diskseq = Some(seq.get());
    }
    if args.json {
        println!("{}", to_json(&row)?);
    } else {
        println!("name:         {}", row.name);
        println!("dev:          {}", row.dev);
        let seq = row
            .diskseq
            .map_or_else(|| "-".to_owned(), |s| s.to_string());
        println!("diskseq:      {seq}");
        println!("size:         {}", row.size);
        println!("ro:           {}", u8::from(row.ro));
        println!("kind:         {}", row.kind);
        if let Some(parent) = &row.parent {
            println!("parent:       {parent}");
        }
        if let Some(backing) = &row.backing_file {
            println!("backing-file: {}", backing.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `diskseq open`: opens the named instance, proves it on the fd, and
/// replaces this process with CMD holding the device on fd 3. CMD's exit
/// status is therefore the command's own.
pub fn open(args: OpenArgs) -> CmdResult {
    let access = if args.write {
        Access::ReadWrite
    } else {
        Access::ReadOnly
    };
    let device = match args.dev {
        Some(dev) => open_verified(DiskId::new(dev, args.diskseq), access),
        None => open_by_diskseq(args.diskseq, args.partition, access),
    }
    .map_err(failure)?;
    let handoff = place_on_handoff_fd(&device)?;

    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| Failure::Error("no command given".to_owned()))?;
    let err = Command::new(program)
        .args(rest)
        .env("DISKSEQ_FD", HANDOFF_FD.to_string())
        .exec();
    drop(handoff);
    Err(Failure::Error(format!(
        "running {}: {err}",
        program.to_string_lossy()
    )))
}

/// Makes the device available as fd 3 across `exec` and clears
/// close-on-exec on that fd only. The device usually is fd 3 already (the
/// first fd this process opens); otherwise it is duplicated to the lowest
/// free fd from 3, which is 3 unless our own caller left fd 3 open.
fn place_on_handoff_fd(device: &BlockDevice) -> Result<Option<OwnedFd>, Failure> {
    let io_err = |e: rustix::io::Errno| {
        Failure::Error(format!(
            "handing {} over on fd {HANDOFF_FD}: {e}",
            device.path().display()
        ))
    };
    if device.as_fd().as_raw_fd() == HANDOFF_FD {
        rustix::io::fcntl_setfd(device, rustix::io::FdFlags::empty()).map_err(io_err)?;
        return Ok(None);
    }
    let copy = rustix::io::fcntl_dupfd_cloexec(device, HANDOFF_FD).map_err(io_err)?;
    if copy.as_raw_fd() != HANDOFF_FD {
        return Err(Failure::Error(format!(
            "fd {HANDOFF_FD} is already open in this process (inherited from the caller); \
             cannot hand the device over on it"
        )));
    }
    rustix::io::fcntl_setfd(&copy, rustix::io::FdFlags::empty()).map_err(io_err)?;
    Ok(Some(copy))
}
