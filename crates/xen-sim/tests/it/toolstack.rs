//! The toolstack end to end: libxl's attach and detach over our xenstored,
//! the real `block-diskseq` script as a child process, the backend and
//! frontend models, and real loop devices.
//!
//! The script binary is built with the workspace (`scripts/test` builds
//! every target first); run alone: `cargo build -p diskseq-cli` first.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crate::support::*;
use testbed::images::read_at;
use testbed::loops::attach_loop;
use testbed::loops::image_attached;
use testbed::loops::wait_detached;
use testbed::require_root;
use vbd::schema::{node, Mode, XenbusState};
use xen_sim::toolstack::{DeviceType, DiskSpec, ScriptAction, Toolstack, ToolstackError, Vdev};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(10);

/// `block-diskseq`, built next to this test's target directory.
fn block_script() -> PathBuf {
    workspace_binary("block-diskseq")
}

fn spec(fe: u32, vdev: &str, target: &Path, mode: Mode, script: &Path) -> DiskSpec {
    DiskSpec {
        frontend_domid: fe,
        backend_domid: 0,
        vdev: vdev.parse().expect("vdev"),
        target: target.to_owned(),
        mode,
        device_type: DeviceType::Disk,
        script: script.to_owned(),
        discard_enable: true,
    }
}

fn shell_script(env: &Env, name: &str, body: &str) -> PathBuf {
    let path = env.dir.path().join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn assert_gone(env: &Env, fe: u32, devid: u32) {
    let mut xs = env.dom0();
    let be = backend_path(fe, devid);
    assert_eq!(read(&mut xs, &be.dir()), None, "backend dir left");
    assert_eq!(
        read(&mut xs, &format!("/local/domain/{fe}/device/vbd/{devid}")),
        None,
        "frontend dir left"
    );
}

#[test]
fn file_and_device_targets_attach_and_detach_read_only_and_writable() {
    if !require_root("file_and_device_targets_attach_and_detach_read_only_and_writable") {
        return;
    }
    let env = Env::new(&[1]);
    let backend = env.start_backend(env.backend_config(0));
    let guest = env.start_frontend(1);
    let toolstack = Toolstack::new(Some(env.socket()));
    let script = block_script();
    for (round, mode) in [Mode::ReadOnly, Mode::ReadWrite].into_iter().enumerate() {
        // A file target: the script makes the loop device.
        let image = env.image(
            &format!("file-{round}.img"),
            &format!("FILE-{round}"),
            4 * MIB,
        );
        let report = toolstack
            .attach(&spec(1, "xvda", &image, mode, &script))
            .unwrap_or_else(|e| panic!("attach file {mode}: {e}\n{}", env.backend_log()));
        assert!(report.script.as_ref().unwrap().success());
        assert_eq!(report.hotplug_status.as_deref(), Some("connected"));
        let seq = report
            .diskseq_node
            .clone()
            .expect("script published a diskseq");
        let view = guest
            .wait_state(51712, XenbusState::Connected, WAIT)
            .expect("connected");
        assert_eq!(view.disk.unwrap().read_only(), !mode.is_writable());
        let held = backend.held_disks();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].id.seq.to_xenstore(), seq);
        assert_eq!(Some(held[0].id.seq.get()), report.diskseq);
        assert_eq!(
            Some(held[0].id.dev().to_xenstore()),
            report.physical_device_node
        );
        assert_eq!(Some(held[0].id.dev().to_string()), report.dev);
        let (marker, backing) = backend
            .with_held_disk(&held[0].path, |d| {
                (
                    read_at(d, 0, 6),
                    diskseq::loop_info(d).unwrap().unwrap().backing,
                )
            })
            .unwrap();
        assert_eq!(marker, format!("FILE-{round}").as_bytes());
        assert_eq!(
            backing,
            diskseq::FileId::of(fs::File::open(&image).unwrap()).unwrap()
        );

        let detach = toolstack
            .detach(1, &"xvda".parse().unwrap(), 0)
            .expect("detach file");
        assert!(detach.backend_was_present && detach.closed, "{detach:?}");
        assert!(detach.script.as_ref().unwrap().success(), "{detach:?}");
        assert_gone(&env, 1, 51712);
        assert!(backend.held_disks().is_empty());
        wait_detached(&image);

        // A device target: the test's own loop device stands for a disk.
        let disk_image = env.image(
            &format!("dev-{round}.img"),
            &format!("DEV-{round}"),
            2 * MIB,
        );
        let dev = attach_loop(&disk_image, !mode.is_writable());
        toolstack
            .attach(&spec(1, "xvdb", dev.path(), mode, &script))
            .unwrap_or_else(|e| panic!("attach device {mode}: {e}\n{}", env.backend_log()));
        let view = guest
            .wait_state(51728, XenbusState::Connected, WAIT)
            .expect("connected");
        assert_eq!(view.disk.unwrap().sectors, 2 * MIB / 512);
        assert_eq!(backend.held_disks()[0].id, dev.id());
        let detach = toolstack
            .detach(1, &"xvdb".parse().unwrap(), 0)
            .expect("detach device");
        assert!(detach.closed);
        assert_gone(&env, 1, 51728);
        assert!(backend.held_disks().is_empty());
        assert!(
            image_attached(&disk_image),
            "a device target is not the script's to detach"
        );
        drop(dev);
        wait_detached(&disk_image);
    }
}

#[test]
fn a_failed_script_is_reported_and_leaves_nothing() {
    if !require_root("a_failed_script_is_reported_and_leaves_nothing") {
        return;
    }
    let env = Env::new(&[2]);
    let backend = env.start_backend(env.backend_config(0));
    let guest = env.start_frontend(2);
    let toolstack = Toolstack::new(Some(env.socket()));
    let missing = env.dir.path().join("no-such.img");
    let err = toolstack
        .attach(&spec(2, "xvda", &missing, Mode::ReadWrite, &block_script()))
        .expect_err("attach of a missing target");
    let ToolstackError::Hotplug {
        outcome,
        hotplug_error,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(outcome.exit_code, Some(1));
    let message = hotplug_error.as_deref().expect("hotplug-error reported");
    assert!(message.contains("no-such.img"), "{message}");
    assert!(err.to_string().contains("hotplug-error"), "{err}");
    assert_gone(&env, 2, 51712);
    assert!(backend.held_disks().is_empty());
    // Nothing is left to detach (an error, as xl's "not connected"); the
    // guest's next disk works.
    let err = toolstack
        .detach(2, &"xvda".parse().unwrap(), 0)
        .expect_err("detaching a disk that is gone");
    assert!(matches!(err, ToolstackError::NotAttached { .. }), "{err}");
    let image = env.image("ok.img", "OK", MIB);
    toolstack
        .attach(&spec(2, "xvda", &image, Mode::ReadWrite, &block_script()))
        .expect("attach after a failure");
    guest
        .wait_state(51712, XenbusState::Connected, WAIT)
        .unwrap();
    toolstack.detach(2, &"xvda".parse().unwrap(), 0).unwrap();
    wait_detached(&image);
}

/// libxl's contract with the script: argv, environment, stdin, and the
/// exit status as the only verdict; a hung script is killed.
#[test]
fn scripts_get_libxls_argv_and_environment_and_are_judged_by_exit_status() {
    let env = Env::new(&[3]);
    let _backend = env.start_backend(env.backend_config(0));
    let mut toolstack = Toolstack::new(Some(env.socket()));
    let record = env.dir.path().join("script-saw");
    let script = shell_script(
        &env,
        "record.sh",
        &format!(
            "echo \"$# $1 $XENBUS_TYPE $XENBUS_PATH $XENBUS_BASE_PATH $script $XENSTORED_PATH $(readlink /proc/self/fd/0)\" >> {}\nexit 1",
            record.display()
        ),
    );
    let err = toolstack
        .attach(&spec(
            3,
            "xvdc",
            Path::new("/x.img"),
            Mode::ReadOnly,
            &script,
        ))
        .unwrap_err();
    assert!(
        matches!(err, ToolstackError::Hotplug { ref hotplug_error, .. } if hotplug_error.is_none()),
        "{err}"
    );
    let saw = fs::read_to_string(&record).unwrap();
    let mut lines = saw.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!(
            "1 add vbd backend/vbd/3/51744 backend {} {} /dev/null",
            script.display(),
            env.socket().display()
        )
    );
    // The failed add was followed by `remove` to clean up.
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("1 remove vbd backend/vbd/3/51744"),
        "{saw}"
    );
    assert_gone(&env, 3, 51744);

    // A script that never ends is killed at the timeout.
    toolstack.timeouts.hotplug = Duration::from_millis(300);
    let hang = shell_script(&env, "hang.sh", "exec sleep 600");
    let err = toolstack
        .attach(&spec(3, "xvdd", Path::new("/x.img"), Mode::ReadOnly, &hang))
        .unwrap_err();
    let ToolstackError::Hotplug { outcome, .. } = &err else {
        panic!("{err}")
    };
    assert!(
        outcome.timed_out && outcome.signal == Some(9),
        "{outcome:?}"
    );
    assert_eq!(outcome.action, ScriptAction::Add);
    assert_gone(&env, 3, 51760);
}

#[test]
fn no_backend_means_init_wait_timeout_and_cleanup() {
    let env = Env::new(&[4]);
    let mut toolstack = Toolstack::new(Some(env.socket()));
    toolstack.timeouts.init_wait = Duration::from_millis(300);
    let err = toolstack
        .attach(&spec(
            4,
            "xvda",
            Path::new("/x.img"),
            Mode::ReadOnly,
            Path::new("/bin/true"),
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ToolstackError::Timeout {
                want: XenbusState::InitWait,
                ..
            }
        ),
        "{err}"
    );
    assert_gone(&env, 4, 51712);
}

#[test]
fn attaching_the_same_vdev_twice_is_refused() {
    let env = Env::new(&[5]);
    let toolstack = Toolstack::new(Some(env.socket()));
    let mut xs = env.dom0();
    let disk = spec(
        5,
        "xvda",
        Path::new("/x.img"),
        Mode::ReadOnly,
        Path::new("/bin/true"),
    );
    toolstack.create(&mut xs, &disk).unwrap();
    let err = toolstack.create(&mut xs, &disk).unwrap_err();
    assert!(matches!(err, ToolstackError::Exists { .. }), "{err}");
}

/// A device the backend refused (identity mismatch: error node, Closing,
/// and the frontend model closed) detaches cleanly.
#[test]
fn a_refused_device_detaches_cleanly() {
    if !require_root("a_refused_device_detaches_cleanly") {
        return;
    }
    let env = Env::new(&[6]);
    let backend = env.start_backend(env.backend_config(0));
    let guest = env.start_frontend(6);
    let toolstack = Toolstack::new(Some(env.socket()));
    let mut xs = env.dom0();
    let disk = spec(
        6,
        "xvda",
        Path::new("/x.img"),
        Mode::ReadWrite,
        Path::new("/bin/true"),
    );
    let layout = toolstack.create(&mut xs, &disk).unwrap();
    wait_backend_state(&mut xs, &layout.backend, XenbusState::InitWait);
    let image = env.image("r.img", "R", MIB);
    let dev = attach_loop(&image, false);
    let stale = diskseq::DiskSeq::new(dev.id().seq.get() + 1).unwrap();
    publish(
        &mut xs,
        &layout.backend,
        &dev.id().dev().to_xenstore(),
        Some(&stale.to_xenstore()),
        dev.path(),
    );
    guest.wait_state(51712, XenbusState::Closed, WAIT).unwrap();
    wait_backend_state(&mut xs, &layout.backend, XenbusState::Closed);
    assert!(read(&mut xs, &layout.backend.error_node(0))
        .unwrap()
        .starts_with("19 "));
    let detach = toolstack.detach(6, &"xvda".parse().unwrap(), 0).unwrap();
    assert!(detach.closed, "{detach:?}");
    assert_gone(&env, 6, 51712);
    assert!(backend.held_disks().is_empty());
    drop(dev);
    wait_detached(&image);
}

/// Sixteen disks for four guests, attached and detached all at once.
#[test]
fn sixteen_disks_on_four_guests_concurrently() {
    if !require_root("sixteen_disks_on_four_guests_concurrently") {
        return;
    }
    let guests = [11, 12, 13, 14];
    let env = Env::new(&guests);
    let backend = env.start_backend(env.backend_config(0));
    let frontends: Vec<_> = guests.iter().map(|&g| env.start_frontend(g)).collect();
    let script = block_script();
    let disks: Vec<(u32, Vdev, PathBuf)> = guests
        .iter()
        .flat_map(|&g| {
            ["xvda", "xvdb", "xvdc", "xvdd"].map(|name| {
                let marker = format!("G{g}-{name}");
                (
                    g,
                    name.parse::<Vdev>().unwrap(),
                    env.image(&format!("{marker}.img"), &marker, MIB),
                )
            })
        })
        .collect();
    let socket = env.socket();
    thread::scope(|s| {
        let handles: Vec<_> = disks
            .iter()
            .enumerate()
            .map(|(i, (g, vdev, image))| {
                let toolstack = Toolstack::new(Some(socket.clone()));
                let mode = if i % 2 == 0 {
                    Mode::ReadWrite
                } else {
                    Mode::ReadOnly
                };
                let disk = spec(*g, &vdev.name, image, mode, &script);
                s.spawn(move || toolstack.attach(&disk))
            })
            .collect();
        for h in handles {
            h.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{e}\n{}", env.backend_log()));
        }
    });
    for (fe, (g, vdev, _)) in disks
        .iter()
        .enumerate()
        .map(|(i, d)| (&frontends[i / 4], d))
    {
        assert_eq!(fe.domid(), *g);
        fe.wait_state(vdev.devid, XenbusState::Connected, WAIT)
            .expect("connected");
    }
    let held = backend.held_disks();
    assert_eq!(held.len(), 16);
    for (g, vdev, _) in &disks {
        let marker = format!("G{g}-{}", vdev.name);
        let path = backend_path(*g, vdev.devid);
        let bytes = backend
            .with_held_disk(&path, |d| read_at(d, 0, marker.len()))
            .expect("held");
        assert_eq!(bytes, marker.as_bytes(), "each guest got its own image");
    }
    thread::scope(|s| {
        for (g, vdev, _) in &disks {
            let toolstack = Toolstack::new(Some(socket.clone()));
            s.spawn(move || {
                let report = toolstack.detach(*g, vdev, 0).unwrap();
                assert!(report.closed, "{report:?}");
            });
        }
    });
    assert!(backend.held_disks().is_empty());
    for (g, vdev, image) in &disks {
        assert_gone(&env, *g, vdev.devid);
        wait_detached(image);
    }
    let mut xs = env.dom0();
    assert_eq!(read(&mut xs, "/local/domain/0/backend/vbd/11"), None);
    let _ = node::STATE;
}
