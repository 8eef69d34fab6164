//! `diskseq attach` / `diskseq detach` as a user runs them: the binary,
//! against a daemon, backend and guest set up by the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;
use testbed::loops::wait_detached;
use testbed::require_root;
use vbd::schema::XenbusState;

fn diskseq() -> Command {
    Command::new(workspace_binary("diskseq"))
}

fn run(command: &mut Command) -> (Output, serde_json::Value) {
    let output = command.output().expect("run diskseq");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, json)
}

fn attach(socket: &Path, target: &Path, mode: &str) -> Command {
    let mut command = diskseq();
    command
        .arg("attach")
        .arg("--socket")
        .arg(socket)
        .args(["--domain", "1", "--vdev", "xvda", "--mode", mode, "--json"])
        .arg("--target")
        .arg(target);
    command
}

#[test]
fn attach_and_detach_from_the_command_line() {
    if !require_root("attach_and_detach_from_the_command_line") {
        return;
    }
    let env = Env::new(&[1]);
    let backend = env.start_backend(env.backend_config(0));
    let guest = env.start_frontend(1);
    let socket = env.socket();
    let image = env.image("cli.img", "CLI", 1 << 20);

    let (output, json) = run(&mut attach(&socket, &image, "r"));
    assert!(output.status.success(), "{json}");
    assert_eq!(json["ok"], true);
    assert_eq!(json["attach"]["devid"], 51712);
    // JSON numbers are decimal; the hex form is only the xenstore node's.
    let seq = json["attach"]["diskseq"].as_u64().expect("decimal diskseq");
    let node = json["attach"]["diskseq_node"]
        .as_str()
        .expect("diskseq node");
    let view = guest
        .wait_state(51712, XenbusState::Connected, Duration::from_secs(10))
        .unwrap();
    assert!(view.disk.unwrap().read_only());
    assert_eq!(backend.held_disks()[0].id.seq.get(), seq);
    assert_eq!(backend.held_disks()[0].id.seq.to_xenstore(), node);

    // Attaching it again is refused, exit 1.
    let (output, json) = run(&mut attach(&socket, &image, "r"));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        json["error"].as_str().unwrap().contains("already exists"),
        "{json}"
    );

    let (output, json) = run(diskseq()
        .arg("detach")
        .arg("--socket")
        .arg(&socket)
        .args(["--domain", "1", "--vdev", "51712", "--json"]));
    assert!(output.status.success(), "{json}");
    assert_eq!(json["detach"]["closed"], true);
    wait_detached(&image);
    assert!(backend.held_disks().is_empty());

    // Detaching it again: nothing is there, an error as with xl.
    let (output, json) = run(diskseq().arg("detach").arg("--socket").arg(&socket).args([
        "--domain",
        "1",
        "--vdev",
        "xvda",
        "--timeout",
        "0.5",
        "--json",
    ]));
    assert_eq!(output.status.code(), Some(1), "{json}");
    assert_eq!(json["ok"], false);
    assert!(
        json["error"].as_str().unwrap().contains("not attached"),
        "{json}"
    );
}

#[test]
fn a_failing_attach_exits_1_with_the_hotplug_error() {
    if !require_root("a_failing_attach_exits_1_with_the_hotplug_error") {
        return;
    }
    let env = Env::new(&[1]);
    let _backend = env.start_backend(env.backend_config(0));
    let missing = PathBuf::from("/nonexistent/disk.img");
    let (output, json) = run(&mut attach(&env.socket(), &missing, "w"));
    assert_eq!(output.status.code(), Some(1), "{json}");
    assert_eq!(json["ok"], false);
    assert!(
        json["hotplug_error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/disk.img"),
        "{json}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("hotplug-error"), "{stderr}");
    let mut xs = env.dom0();
    assert_eq!(read(&mut xs, "/local/domain/0/backend/vbd/1/51712"), None);

    // Bad arguments are usage errors (exit 2), before anything is written.
    let status = diskseq()
        .args([
            "attach", "--domain", "1", "--vdev", "xvd1", "--target", "/x",
        ])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

/// A pinned name (`diskseq ls` prints it) as the target: the partition of
/// a disk found by its sequence number on a host without udev's links, and
/// served by the backend with the partition checked.
#[test]
fn attach_takes_a_pinned_partition_target() {
    if !require_root("attach_takes_a_pinned_partition_target") {
        return;
    }
    let env = Env::new(&[1]);
    let backend = env.start_backend(env.backend_config(0));
    let guest = env.start_frontend(1);
    let image = env.image("disk.img", "DISK", 4 << 20);
    let disk = testbed::loops::attach_partitioned(&image, &[(1 << 20, 1 << 20)]);
    let target = PathBuf::from(format!("/dev/disk/by-diskseq/{}-part1", disk.id().seq));

    let (output, json) = run(&mut attach(&env.socket(), &target, "r"));
    assert!(output.status.success(), "{json}");
    assert_eq!(json["attach"]["diskseq"], disk.id().seq.get());
    guest
        .wait_state(51712, XenbusState::Connected, Duration::from_secs(10))
        .unwrap();
    let held = backend.held_disks();
    assert_eq!(held[0].id.seq, disk.id().seq);
    assert_ne!(
        held[0].id.dev(),
        disk.id().dev(),
        "the partition, not the disk"
    );

    // `diskseq ls` names the partition by the same pinned path.
    let (output, rows) = run(diskseq().args(["ls", "--json"]));
    assert!(output.status.success());
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["dev"] == held[0].id.dev().to_string())
        .expect("the partition is listed");
    assert_eq!(row["target"], target.display().to_string());

    let (output, json) = run(diskseq()
        .arg("detach")
        .arg("--socket")
        .arg(env.socket())
        .args(["--domain", "1", "--vdev", "xvda", "--json"]));
    assert!(output.status.success(), "{json}");
    assert!(backend.held_disks().is_empty());
}
