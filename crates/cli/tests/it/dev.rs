//! The `diskseq ls/show/open/loop` subcommands, run as the built binary on
//! real loop devices. Every device a test attaches is detached by identity
//! (or autoclear) before the test ends, even when it fails.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diskseq::{
    detach_verified, list_loops, open_verified, Access, DevNum, DiskId, DiskSeq, Error, FileId,
    LoopDevice, LoopOptions,
};
use serde_json::Value;
use tempfile::NamedTempFile;
use testbed::loops::eventually;
use testbed::require_root;

const MIB: u64 = 1 << 20;

fn diskseq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diskseq"))
        .args(args)
        .output()
        .expect("run diskseq")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

fn json(out: &Output) -> Value {
    assert_exit(out, 0);
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

fn backing(size: u64, tag: u8) -> NamedTempFile {
    let file = NamedTempFile::new().unwrap();
    std::fs::write(file.path(), vec![tag; size as usize]).unwrap();
    file
}

/// A loop device attached through the CLI, detached by identity on drop.
struct CliLoop {
    id: DiskId,
    device: PathBuf,
}

impl CliLoop {
    fn attach(file: &Path, extra: &[&str]) -> CliLoop {
        let mut args = vec!["loop", "attach", file.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let value = json(&diskseq(&args));
        let dev: DevNum = value["dev"].as_str().unwrap().parse().unwrap();
        let seq = DiskSeq::new(value["diskseq"].as_u64().unwrap()).unwrap();
        CliLoop {
            id: DiskId::new(dev, seq),
            device: PathBuf::from(value["device"].as_str().unwrap()),
        }
    }
}

impl Drop for CliLoop {
    fn drop(&mut self) {
        let _ = detach_verified(&self.id, None);
    }
}

fn backed_by(file: &Path) -> Vec<diskseq::LoopInfo> {
    let id = FileId::of(std::fs::File::open(file).unwrap()).unwrap();
    list_loops()
        .unwrap()
        .into_iter()
        .filter(|info| info.backing == id)
        .collect()
}

#[test]
fn attach_show_ls_detach() {
    if !require_root("attach_show_ls_detach") {
        return;
    }
    let file = backing(MIB, 1);
    let attached = CliLoop::attach(file.path(), &[]);
    assert_eq!(
        attached.device,
        Path::new(&format!("/dev/loop{}", attached.id.minor))
    );

    // Persistent by default: still bound after the command exited.
    let bound = backed_by(file.path());
    assert_eq!(bound.len(), 1);
    assert_eq!(bound[0].id, attached.id);
    assert!(!bound[0].autoclear);

    let dev = attached.id.dev().to_string();
    let shown = json(&diskseq(&["show", &dev, "--json"]));
    assert_eq!(shown["name"], format!("loop{}", attached.id.minor));
    assert_eq!(shown["dev"], dev);
    assert_eq!(shown["major"], 7);
    assert_eq!(shown["minor"], attached.id.minor);
    assert_eq!(shown["diskseq"], attached.id.seq.get());
    assert_eq!(shown["size"], MIB);
    assert_eq!(shown["ro"], false);
    assert_eq!(shown["kind"], "loop");
    assert_eq!(shown["backing_file"], file.path().to_str().unwrap());
    let by_path = json(&diskseq(&[
        "show",
        attached.device.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(by_path, shown);
    let text = diskseq(&["show", &dev]);
    assert_exit(&text, 0);
    assert!(stdout(&text).contains(&format!("diskseq:      {}", attached.id.seq)));

    let listed = json(&diskseq(&["ls", "--json"]));
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["dev"] == dev)
        .expect("listed by ls");
    assert_eq!(row, &shown);
    for key in [
        "name",
        "dev",
        "major",
        "minor",
        "diskseq",
        "size",
        "ro",
        "kind",
        "backing_file",
    ] {
        assert!(listed[0].get(key).is_some(), "ls JSON lacks {key}");
    }
    // The table: lsblk-style sizes (bytes with --bytes), no trailing blanks,
    // and the DEV column where `loop ls` has it.
    let table = stdout(&diskseq(&["ls"]));
    let line = table
        .lines()
        .find(|line| line.contains(file.path().to_str().unwrap()))
        .expect("ls lists the loop device");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], "1M", "{line}");
    assert!(
        table.lines().all(|l| l == l.trim_end()),
        "trailing blanks:\n{table}"
    );
    let bytes = stdout(&diskseq(&["ls", "--bytes"]));
    assert!(bytes.contains(&format!(" {MIB} ")), "{bytes}");
    let loop_table = stdout(&diskseq(&["loop", "ls"]));
    let dev_end = |table: &str, line: &str| {
        let header = table.lines().next().unwrap();
        (
            header.find("DEV ").unwrap() + 3,
            line.find(&format!("{dev} ")).unwrap() + dev.len(),
        )
    };
    let (header_end, value_end) = dev_end(&table, line);
    assert_eq!(header_end, value_end, "ls DEV column:\n{table}");
    let loop_line = loop_table
        .lines()
        .find(|l| l.contains(&format!(" {dev} ")))
        .unwrap();
    assert_eq!(
        dev_end(&loop_table, loop_line),
        (header_end, value_end),
        "loop ls DEV column:\n{loop_table}"
    );
    assert!(
        loop_table.lines().all(|l| l == l.trim_end()),
        "trailing blanks:\n{loop_table}"
    );

    let loops = json(&diskseq(&["loop", "ls", "--json"]));
    let row = loops
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["dev"] == dev)
        .expect("listed by loop ls");
    assert_eq!(row["diskseq"], attached.id.seq.get());
    assert_eq!(row["backing_file"], file.path().to_str().unwrap());
    assert_eq!(row["backing_inode"], bound[0].backing.ino);
    assert_eq!(row["autoclear"], false);
    assert!(stdout(&diskseq(&["loop", "ls"])).contains(&attached.device.display().to_string()));

    // A wrong diskseq is refused with exit 3 and the device stays.
    let wrong = (attached.id.seq.get() + 1).to_string();
    let refused = diskseq(&["loop", "detach", &dev, "--diskseq", &wrong]);
    assert_exit(&refused, 3);
    assert!(stderr(&refused).contains("stale"), "{}", stderr(&refused));
    assert_eq!(backed_by(file.path()).len(), 1);

    // The right one, by path, with the hex input form.
    let hex = format!("{:#x}", attached.id.seq.get());
    let done = diskseq(&[
        "loop",
        "detach",
        attached.device.to_str().unwrap(),
        "--diskseq",
        &hex,
    ]);
    assert_exit(&done, 0);
    eventually("the device is detached", || {
        backed_by(file.path()).is_empty()
    });
    // Again: that instance is gone.
    assert_exit(&diskseq(&["loop", "detach", &dev, "--diskseq", &hex]), 3);
}

#[test]
fn detach_refuses_a_reused_minor() {
    if !require_root("detach_refuses_a_reused_minor") {
        return;
    }
    let first = backing(MIB, 1);
    let second = NamedTempFile::new().unwrap();
    second.as_file().set_len(MIB).unwrap();
    let autoclear = LoopOptions {
        autoclear: true,
        ..LoopOptions::default()
    };
    // Attach via the CLI, detach, and put another file on the same minor.
    let (old, new) = (0..20)
        .find_map(|_| {
            let old = CliLoop::attach(first.path(), &[]);
            let old_id = old.id;
            drop(old);
            LoopDevice::attach_at(old_id.minor, second.as_file().as_fd(), &autoclear)
                .ok()
                .map(|new| (old_id, new))
        })
        .expect("reuse a minor");
    let out = diskseq(&[
        "loop",
        "detach",
        &old.dev().to_string(),
        "--diskseq",
        &old.seq.to_string(),
    ]);
    assert_exit(&out, 3);
    let info = diskseq::loop_info(new.block_device())
        .unwrap()
        .expect("untouched");
    assert_eq!(info.id, new.id());
    assert_eq!(info.backing, FileId::of(second.as_file()).unwrap());

    // `open` refuses the old instance too, and does not run the command.
    let marker = tempfile::tempdir().unwrap();
    let flag = marker.path().join("ran");
    let out = diskseq(&[
        "open",
        "--dev",
        &old.dev().to_string(),
        "--diskseq",
        &old.seq.to_string(),
        "--",
        "touch",
        flag.to_str().unwrap(),
    ]);
    assert_exit(&out, 124);
    assert!(!flag.exists(), "command ran on a stale device");
}

#[test]
fn open_hands_the_device_over_on_fd_3() {
    if !require_root("open_hands_the_device_over_on_fd_3") {
        return;
    }
    let file = backing(MIB, 0);
    let attached = CliLoop::attach(file.path(), &[]);
    let seq = attached.id.seq.to_string();
    let dev = attached.id.dev().to_string();

    let out = diskseq(&[
        "open",
        "--diskseq",
        &seq,
        "--",
        "sh",
        "-c",
        "readlink /proc/self/fd/3; echo \"$DISKSEQ_FD\"; exit 7",
    ]);
    assert_exit(&out, 7);
    assert_eq!(stdout(&out), format!("{}\n3\n", attached.device.display()));

    // By number, read-write: the command writes through fd 3.
    let out = diskseq(&[
        "open",
        "--dev",
        &dev,
        "--diskseq",
        &seq,
        "--write",
        "--",
        "sh",
        "-c",
        "printf hello >&3",
    ]);
    assert_exit(&out, 0);
    let device = open_verified(attached.id, Access::ReadOnly).unwrap();
    let mut buf = [0u8; 5];
    rustix::io::pread(&device, &mut buf, 0).unwrap();
    assert_eq!(&buf, b"hello");
    drop(device);

    // Read-only by default: writing through fd 3 fails.
    let out = diskseq(&["open", "--diskseq", &seq, "--", "sh", "-c", "printf x >&3"]);
    assert_ne!(out.status.code(), Some(0));

    // A diskseq no disk has (seq + 1 may be another disk's: the counter is global).
    let gone = (u64::MAX - 7).to_string();
    assert_exit(&diskseq(&["open", "--diskseq", &gone, "--", "true"]), 124);
    // A command exiting 3 is told apart from a stale device.
    assert_exit(
        &diskseq(&["open", "--diskseq", &seq, "--", "sh", "-c", "exit 3"]),
        3,
    );
    // As `env`: no such command 127, not executable 126.
    let out = diskseq(&["open", "--diskseq", &seq, "--", "/nonexistent/cmd"]);
    assert_exit(&out, 127);
    assert!(
        stderr(&out).contains("/nonexistent/cmd"),
        "{}",
        stderr(&out)
    );
    let not_executable = NamedTempFile::new().unwrap();
    assert_exit(
        &diskseq(&[
            "open",
            "--diskseq",
            &seq,
            "--",
            not_executable.path().to_str().unwrap(),
        ]),
        126,
    );
}

#[test]
fn open_by_diskseq_and_partition() {
    if !require_root("open_by_diskseq_and_partition") {
        return;
    }
    let file = backing(2 * MIB, 0);
    let opts = LoopOptions {
        autoclear: true,
        partscan: true,
        ..LoopOptions::default()
    };
    let device = LoopDevice::attach(file.as_file().as_fd(), &opts).unwrap();
    diskseq::ioctl::add_partition(device.as_fd(), 1, MIB, MIB / 2).unwrap();
    let seq = device.id().seq.to_string();
    let out = diskseq(&[
        "open",
        "--diskseq",
        &seq,
        "--partition",
        "1",
        "--",
        "readlink",
        "/proc/self/fd/3",
    ]);
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out).trim(),
        format!("/dev/loop{}p1", device.id().minor)
    );

    let part = format!("/dev/loop{}p1", device.id().minor);
    let shown = json(&diskseq(&["show", &part, "--json"]));
    assert_eq!(shown["kind"], "part");
    assert_eq!(shown["diskseq"], device.id().seq.get());
    assert_eq!(shown["parent"], format!("loop{}", device.id().minor));
    assert_eq!(shown["size"], MIB / 2);

    let out = diskseq(&["open", "--diskseq", &seq, "--partition", "2", "--", "true"]);
    assert_exit(&out, 125);
    assert!(stderr(&out).contains("no partition 2"), "{}", stderr(&out));
}

#[test]
fn attach_read_only_and_autoclear() {
    if !require_root("attach_read_only_and_autoclear") {
        return;
    }
    let file = backing(MIB, 2);
    let attached = CliLoop::attach(file.path(), &["--read-only"]);
    let info = &backed_by(file.path())[0];
    assert!(info.read_only);
    let out = diskseq(&[
        "open",
        "--diskseq",
        &attached.id.seq.to_string(),
        "--write",
        "--",
        "true",
    ]);
    assert_exit(&out, 125);
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
    drop(attached);

    // Autoclear: nobody else holds it, so it is gone once the command exits.
    let out = diskseq(&[
        "loop",
        "attach",
        file.path().to_str().unwrap(),
        "--autoclear",
    ]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let field = |label: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label} line in {text}"))
            .trim()
            .to_owned()
    };
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(field("device:").starts_with("/dev/loop"), "{text}");
    let id = DiskId::new(
        field("dev:").parse().unwrap(),
        field("diskseq:").parse().unwrap(),
    );
    eventually("the autoclear device is gone", || {
        matches!(
            open_verified(id, Access::ReadOnly),
            Err(Error::Stale { .. })
        )
    });
    assert!(backed_by(file.path()).is_empty());
}

#[test]
fn bad_inputs_give_specific_errors() {
    // Usage errors: exit 2, before touching anything. These need no root.
    for args in [
        &["loop", "detach", "7:0"][..],
        &["loop", "detach", "7:0", "--diskseq", "0"],
        &["loop", "detach", "7:0", "--diskseq", "abc"],
    ] {
        let out = diskseq(args);
        assert_exit(&out, 2);
    }
    // `open`'s own usage errors: 125, as `env` (its 1-3 may be CMD's).
    for args in [
        &["open", "--diskseq", "1"][..],
        &[
            "open",
            "--diskseq",
            "1",
            "--dev",
            "7:0",
            "--partition",
            "1",
            "--",
            "true",
        ],
    ] {
        let out = diskseq(args);
        assert_exit(&out, 125);
    }
    // Anything but a decimal MAJ:MIN is a path, relative ones included.
    let out = diskseq(&["loop", "detach", "7-0", "--diskseq", "1"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("stat 7-0"), "{}", stderr(&out));
    let out = diskseq(&["show", "no-such-image.img"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("no-such-image.img"),
        "{}",
        stderr(&out)
    );
    let out = diskseq(&["loop", "detach", "7:0", "--diskseq", "0"]);
    assert!(
        stderr(&out).contains("0 is never a diskseq"),
        "{}",
        stderr(&out)
    );

    let file = NamedTempFile::new().unwrap();
    let out = diskseq(&["show", file.path().to_str().unwrap()]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("is a regular file, not a block device"),
        "{}",
        stderr(&out)
    );
    let out = diskseq(&["show", "/dev/null"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("a character device"),
        "{}",
        stderr(&out)
    );
    let out = diskseq(&["show", "/nonexistent/disk"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("/nonexistent/disk"),
        "{}",
        stderr(&out)
    );
    let out = diskseq(&["loop", "attach", "/nonexistent/file"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("/nonexistent/file"),
        "{}",
        stderr(&out)
    );
    let dir = tempfile::tempdir().unwrap();
    let out = diskseq(&["loop", "attach", dir.path().to_str().unwrap()]);
    assert_exit(&out, 1);
    let out = diskseq(&["loop", "detach", "/dev/null", "--diskseq", "1"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("not a block device"),
        "{}",
        stderr(&out)
    );
}

/// A persistent loop device carrying `label` (none: a foreign device),
/// detached by identity on drop unless already gone.
fn labelled_loop(file: &Path, label: Option<&str>) -> CliLoop {
    let fd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let device = LoopDevice::attach(
        fd.as_fd(),
        &LoopOptions {
            label: label.map(|l| diskseq::LoopLabel::new(l).unwrap()),
            ..LoopOptions::default()
        },
    )
    .unwrap();
    CliLoop {
        id: device.id(),
        device: device.path().to_owned(),
    }
}

fn bound(device: &CliLoop) -> bool {
    open_verified(device.id, Access::ReadOnly)
        .is_ok_and(|d| diskseq::loop_info(&d).is_ok_and(|info| info.is_some()))
}

/// `loop gc` lists every device labelled by block-diskseq with its verdict
/// against the backend's record, then detaches only the leaked ones; a
/// device without the label is neither listed nor touched. The labels name
/// a backend domain of this test's own (`--backend-domain`), so devices of
/// tests running meanwhile are outside the sweep.
#[test]
fn loop_gc_lists_then_detaches_only_leaked_labelled_devices() {
    if !require_root("loop_gc_lists_then_detaches_only_leaked_labelled_devices") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("xenstored.sock");
    let _daemon = xenstored::Daemon::start(xenstored::Config::new(&socket)).unwrap();
    let mut client = xenstore::client::Client::connect_socket(&socket).unwrap();
    let be = 30000 + std::process::id() % 30000;
    let label = |fe: u32| format!("diskseq-vbd:{be}/vbd/{fe}/768");
    let node = |fe: u32, name: &str| format!("/local/domain/{be}/backend/vbd/{fe}/768/{name}");

    let files: Vec<NamedTempFile> = (0..4).map(|i| backing(MIB, i)).collect();
    let leaked = labelled_loop(files[0].path(), Some(&label(9)));
    let in_use = labelled_loop(files[1].path(), Some(&label(3)));
    let pending = labelled_loop(files[2].path(), Some(&label(4)));
    let foreign = labelled_loop(files[3].path(), None);
    // Backend 3 publishes `in_use`; backend 4 exists without a record;
    // backend 9 is gone.
    client.write(&node(3, "state"), "4").unwrap();
    client
        .write(
            &node(3, "physical-device"),
            in_use.id.dev().to_xenstore().as_str(),
        )
        .unwrap();
    client
        .write(&node(3, "diskseq"), in_use.id.seq.to_xenstore().as_str())
        .unwrap();
    client.write(&node(4, "state"), "2").unwrap();

    let be_arg = be.to_string();
    let socket_arg = socket.to_str().unwrap();
    let gc = |extra: &[&str]| {
        let mut args = vec![
            "loop",
            "gc",
            "--backend-domain",
            &be_arg,
            "--socket",
            socket_arg,
        ];
        args.extend_from_slice(extra);
        diskseq(&args)
    };
    let out = gc(&["--dry-run"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let line = |device: &CliLoop| {
        text.lines()
            .find(|l| l.starts_with(&format!("{} ", device.device.display())))
            .unwrap_or_else(|| panic!("{} not listed:\n{text}", device.device.display()))
            .to_owned()
    };
    assert!(
        line(&leaked).contains("leaked: backend directory"),
        "{text}"
    );
    assert!(line(&in_use).contains("in use"), "{text}");
    assert!(line(&pending).contains("pending"), "{text}");
    assert!(
        !text.contains(&format!("{} ", foreign.device.display())),
        "a foreign device is not listed:\n{text}"
    );
    assert!(
        text.contains(&format!("{}: would detach", leaked.device.display())),
        "{text}"
    );
    assert!(
        [&leaked, &in_use, &pending, &foreign]
            .iter()
            .all(|d| bound(d)),
        "a dry run detaches nothing"
    );

    let rows = json(&gc(&["--dry-run", "--json"]));
    let verdicts: Vec<(&str, &str)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["verdict"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
            )
        })
        .collect();
    let mut sorted = verdicts.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("in-use", "kept"),
            ("leaked", "would detach"),
            ("pending", "kept")
        ],
        "{rows}"
    );

    let out = gc(&[]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains(&format!("{}: detached", leaked.device.display())),
        "{}",
        stdout(&out)
    );
    eventually("the leaked device is detached", || !bound(&leaked));
    assert!(bound(&in_use) && bound(&pending) && bound(&foreign));
}

/// `diskseq ls | head`: the reader goes away, and the listing ends quietly
/// (exit 0, nothing on stderr) instead of panicking on EPIPE. The pipe's
/// read end is closed before the command starts, so its very first write
/// meets a closed pipe.
#[test]
fn a_closed_pipe_ends_the_listing_quietly() {
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_diskseq"))
        .arg("ls")
        .stdout(std::process::Stdio::from(writer))
        .output()
        .expect("run diskseq ls");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}
