//! `diskseq backend` as a real process, killed with SIGKILL mid-way and
//! started again: the kernel closes its fds, xenstore keeps the state, and
//! the new process resumes from xenstore.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;
use testbed::loops::attach_loop;
use testbed::loops::wait_detached;
use testbed::require_root;
use vbd::schema::{node, Mode, XenbusState};
use xen_sim::toolstack::{DeviceType, DiskSpec, Toolstack};

const WAIT: Duration = Duration::from_secs(10);

/// Kills the child on drop, so a failing test leaves no backend running.
struct BackendProcess(Child);

impl BackendProcess {
    fn start(socket: &Path) -> Self {
        let child = Command::new(workspace_binary("diskseq"))
            .arg("backend")
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start diskseq backend");
        BackendProcess(child)
    }

    fn kill(mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reap");
    }

    /// The block devices the process holds open, from /proc.
    fn open_devices(&self) -> Vec<PathBuf> {
        let fds = format!("/proc/{}/fd", self.0.id());
        std::fs::read_dir(fds)
            .map(|dir| {
                dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter(|p| p.to_string_lossy().starts_with("/dev/loop"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn disk(vdev: &str, target: &Path) -> DiskSpec {
    DiskSpec {
        frontend_domid: 1,
        backend_domid: 0,
        vdev: vdev.parse().unwrap(),
        target: target.to_owned(),
        mode: Mode::ReadWrite,
        device_type: DeviceType::Disk,
        script: workspace_binary("block-diskseq"),
        discard_enable: true,
    }
}

#[test]
fn a_killed_backend_process_is_resumed_by_the_next_one() {
    if !require_root("a_killed_backend_process_is_resumed_by_the_next_one") {
        return;
    }
    let env = Env::new(&[1]);
    let guest = env.start_frontend(1);
    let toolstack = Toolstack::new(Some(env.socket()));
    let mut xs = env.dom0();

    let backend = BackendProcess::start(&env.socket());
    // xvda: a file; the script's loop device is autoclear and, once the
    // backend opened it, held by the backend alone.
    let file = env.image("file.img", "FILE", 1 << 20);
    toolstack.attach(&disk("xvda", &file)).expect("attach file");
    // xvdb: a device the test holds, so it outlives the backend.
    let held = env.image("held.img", "HELD", 1 << 20);
    let dev = attach_loop(&held, false);
    toolstack
        .attach(&disk("xvdb", dev.path()))
        .expect("attach device");
    for devid in [51712, 51728] {
        guest
            .wait_state(devid, XenbusState::Connected, WAIT)
            .unwrap();
    }
    assert_eq!(
        backend.open_devices().len(),
        2,
        "the backend holds both disks"
    );

    backend.kill();
    // The kernel closed the killed backend's fds: the file's loop device,
    // held by nobody else, detached itself.
    wait_detached(&file);

    let backend = BackendProcess::start(&env.socket());
    let xvda = backend_path(1, 51712);
    let xvdb = backend_path(1, 51728);
    // The file's device is gone: its record is stale and must be refused.
    wait_backend_failed(&mut xs, &xvda);
    let error = read(&mut xs, &xvda.error_node(0)).expect("error node");
    assert!(error.starts_with("19 creating vbd structure"), "{error}");
    // The held device is the same instance: resumed, still Connected.
    wait_node(&mut xs, &xvdb.node(node::OPENED), WAIT, "reopened", |v| {
        v == Some("1")
    });
    let deadline = std::time::Instant::now() + WAIT;
    while backend.open_devices() != [dev.path().to_owned()] {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            backend.open_devices()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(read(&mut xs, &xvdb.node(node::STATE)).as_deref(), Some("4"));
    assert_eq!(guest.vbd(51728).unwrap().state, XenbusState::Connected);

    for vdev in ["xvda", "xvdb"] {
        let report = toolstack.detach(1, &vdev.parse().unwrap(), 0).unwrap();
        assert!(report.closed, "{vdev}: {report:?}");
    }
    assert!(backend.open_devices().is_empty());
    backend.kill();
    drop(dev);
    wait_detached(&held);
}
