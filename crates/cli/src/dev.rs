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
    DiskSeq, PinnedPath,
};
use serde::Serialize;

use crate::exit::{
    CmdResult, Failure, EXIT_CANNOT_RUN, EXIT_NOT_FOUND, EXIT_OPEN_FAILED, EXIT_OPEN_STALE,
};

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
    /// Print a JSON array instead of a table (sizes in bytes).
    #[arg(long)]
    json: bool,
    /// Print sizes in bytes instead of a human-readable format (as lsblk).
    #[arg(short, long)]
    bytes: bool,
}

/// Width of the DEV column in every table (`ls`, `loop ls`): the longest
/// usual `MAJ:MIN`, `259:65535`, right-aligned as `lsblk`'s MAJ:MIN.
pub(crate) const DEV_WIDTH: usize = 9;

/// Prints one table line without the padding a trailing empty column leaves.
pub(crate) fn print_line(line: &str) {
    outln!("{}", line.trim_end());
}

/// A size as `lsblk` prints it: powers of 1024 with a one-letter suffix and
/// at most one decimal (`512B`, `4K`, `1.5G`).
pub(crate) fn human_size(bytes: u64) -> String {
    const SUFFIXES: [&str; 7] = ["B", "K", "M", "G", "T", "P", "E"];
    let exp = (1..SUFFIXES.len())
        .take_while(|&e| bytes >> (10 * e) > 0)
        .last()
        .unwrap_or(0);
    if exp == 0 {
        return format!("{bytes}B");
    }
    let unit = 1u128 << (10 * exp);
    let tenths = (u128::from(bytes) * 10 + unit / 2) / unit;
    let (whole, frac) = (tenths / 10, tenths % 10);
    if frac == 0 {
        format!("{whole}{}", SUFFIXES[exp])
    } else {
        format!("{whole}.{frac}{}", SUFFIXES[exp])
    }
}

/// A device named on the command line: a decimal number or a path.
#[derive(Clone, Debug)]
pub(crate) enum DeviceArg {
    /// `7:0`.
    Number(DevNum),
    /// Anything else: `/dev/loop0`, `disk.img` (relative to the working
    /// directory, as every file argument; `./7:0` for a file named so).
    Path(PathBuf),
}

impl std::str::FromStr for DeviceArg {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text.parse::<DevNum>() {
            Ok(dev) => DeviceArg::Number(dev),
            Err(_) => DeviceArg::Path(PathBuf::from(text)),
        })
    }
}

#[derive(Args)]
pub struct ShowArgs {
    /// A decimal device number (7:0), else a path (/dev/loop0, disk.img).
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
    /// The pinned name to pass as a target (`diskseq attach --target`,
    /// libxl's `target=`): it can never come to mean another disk.
    target: Option<String>,
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
            target: entry.seq.map(|seq| {
                PinnedPath {
                    seq,
                    partition: entry.partition,
                }
                .to_string()
            }),
            backing_file: entry.loop_backing.clone(),
        }
    }
}

fn print_table(rows: &[DeviceRow], bytes: bool) {
    let size_width = if bytes { 14 } else { 6 };
    let target_width = rows
        .iter()
        .filter_map(|row| row.target.as_ref().map(String::len))
        .max()
        .unwrap_or(0)
        .max("TARGET".len());
    print_line(&format!(
        "{:<12} {:>DEV_WIDTH$} {:>10} {:>size_width$} {:>2} {:<4} {:<target_width$} BACKING-FILE",
        "NAME", "DEV", "DISKSEQ", "SIZE", "RO", "KIND", "TARGET"
    ));
    for row in rows {
        let size = if bytes {
            row.size.to_string()
        } else {
            human_size(row.size)
        };
        print_line(&format!(
            "{:<12} {:>DEV_WIDTH$} {:>10} {size:>size_width$} {:>2} {:<4} {:<target_width$} {}",
            row.name,
            row.dev,
            row.diskseq
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            u8::from(row.ro),
            row.kind,
            row.target.as_deref().unwrap_or("-"),
            row.backing_file
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string()),
        ));
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
        outln!("{}", to_json(&rows)?);
    } else {
        print_table(&rows, args.bytes);
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
        outln!("{}", to_json(&row)?);
    } else {
        outln!("name:         {}", row.name);
        outln!("dev:          {}", row.dev);
        let seq = row
            .diskseq
            .map_or_else(|| "-".to_owned(), |s| s.to_string());
        outln!("diskseq:      {seq}");
        outln!(
            "size:         {} ({} bytes)",
            human_size(row.size),
            row.size
        );
        outln!("ro:           {}", u8::from(row.ro));
        outln!("kind:         {}", row.kind);
        if let Some(parent) = &row.parent {
            outln!("parent:       {parent}");
        }
        if let Some(target) = &row.target {
            outln!("target:       {target}");
        }
        if let Some(backing) = &row.backing_file {
            outln!("backing-file: {}", backing.display());
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
    .map_err(|err| {
        let code = if err.is_stale() {
            EXIT_OPEN_STALE
        } else {
            EXIT_OPEN_FAILED
        };
        Failure::Code(code, err.to_string())
    })?;
    let handoff =
        place_on_handoff_fd(&device).map_err(|f| Failure::Code(EXIT_OPEN_FAILED, f.to_string()))?;

    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| Failure::Code(EXIT_OPEN_FAILED, "no command given".to_owned()))?;
    let err = Command::new(program)
        .args(rest)
        .env("DISKSEQ_FD", HANDOFF_FD.to_string())
        .exec();
    drop(handoff);
    // As `env`: 127 when there is no such command, 126 when it cannot run.
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_RUN
    };
    Err(Failure::Code(
        code,
        format!("running {}: {err}", program.to_string_lossy()),
    ))
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

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_read_as_lsblk_prints_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(1023), "1023B");
        assert_eq!(human_size(1024), "1K");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(1 << 20), "1M");
        assert_eq!(human_size((1 << 20) - 1), "1024K");
        assert_eq!(human_size(8 << 30), "8G");
        assert_eq!(human_size(476_940 << 20), "465.8G");
        assert_eq!(human_size(u64::MAX), "16E");
    }
}
