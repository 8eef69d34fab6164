//! The handoff: `add` holds its fd on the device until the backend proves it
//! holds the device itself — the `opened` node handshake (both ways, and
//! its timeout), the stock blkback sysfs attribute (against a stand-in
//! directory), a backend that gives up — and the device then lives exactly
//! as long as the backend holds it (autoclear).

mod hotplug_support;

use std::time::{Duration, Instant};

use diskseq::{Access, DevNum, DiskId, DiskSeq};
use hotplug_support::*;
use vbd::schema::node;

script_entry!();

#[test]
fn opened_handshake_hands_the_device_to_the_backend() {
    if !privileged() {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("opened.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    let blkback = OpenedBackend::start(&bed, &backend, true);
    let run = bed.run("add", &backend, &[]);
    run.assert_ok();
    assert!(
        run.log.contains("holding the device until opened = 1"),
        "{}",
        run.log
    );
    assert!(run.log.contains("backend holds the device"), "{}", run.log);
    assert_eq!(bed.read(&backend, node::OPENED).as_deref(), Some("1"));

    // The script is gone; the backend's fd is what keeps the device.
    let loops = image.loops();
    assert_eq!(loops.len(), 1);
    assert!(
        loops[0].autoclear,
        "the device must die with the backend's fd"
    );
    let held = blkback
        .release()
        .expect("backend opened the published device");
    assert_eq!(held, loops[0].id);
    assert_no_loops(&image);

    // remove after autoclear: the device is gone already; that is success.
    remove_finds_device_gone(&bed, &backend);
}

#[test]
fn opened_never_set_times_out_and_cleans_up() {
    if !privileged() {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("never.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    let blkback = OpenedBackend::start(&bed, &backend, false);
    let start = Instant::now();
    let run = bed.run("add", &backend, &[("BLOCK_DISKSEQ_TIMEOUT", "0.3")]);
    run.assert_failed();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the timeout must bound the wait"
    );
    assert_eq!(
        bed.read(&backend, node::HOTPLUG_STATUS).as_deref(),
        Some("error")
    );
    let err = bed.read(&backend, node::HOTPLUG_ERROR).unwrap();
    assert!(
        err.contains("backend/vbd/5/768: backend did not open the device within"),
        "{err}"
    );
    // The record is withdrawn: a late backend must not pick it up.
    assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
    assert_eq!(bed.read(&backend, node::DISKSEQ), None);
    // Our stand-in did open it; once it lets go nothing is left.
    assert_eq!(blkback.opens.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(blkback);
    assert_no_loops(&image);
}

#[test]
fn handoff_opened_policy_waits_even_without_the_node() {
    if !privileged() {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("policy.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    let run = bed.run(
        "add",
        &backend,
        &[
            ("BLOCK_DISKSEQ_HANDOFF", "opened"),
            ("BLOCK_DISKSEQ_TIMEOUT", "0.2"),
        ],
    );
    run.assert_failed();
    assert!(run.log.contains("did not open the device"), "{}", run.log);
    assert_no_loops(&image);
}

#[test]
fn backend_closing_during_the_wait_fails_at_once() {
    if !privileged() {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("closing.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    bed.write(&backend, node::OPENED, "0");
    let closer = {
        let mut client = bed.client();
        let (pd, state) = (
            backend.node(node::PHYSICAL_DEVICE),
            backend.node(node::STATE),
        );
        std::thread::spawn(move || {
            client.watch(&pd, "t").unwrap();
            while client.read_opt(&pd).unwrap().is_none() {
                client.next_event(Some(Duration::from_millis(50))).unwrap();
            }
            // A backend refusing the device (e.g. diskseq mismatch).
            client.write(&state, "5").unwrap();
        })
    };
    let start = Instant::now();
    let run = bed.run("add", &backend, &[("BLOCK_DISKSEQ_TIMEOUT", "20")]);
    closer.join().unwrap();
    run.assert_failed();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(bed
        .read(&backend, node::HOTPLUG_ERROR)
        .unwrap()
        .contains("switched to state 5"));
    assert_no_loops(&image);
}

/// Stock blkback: `vbd-<fe>-<devid>` exists from probe; `physical_device`
/// appears once it opened the device. The stand-in plays both.
#[test]
fn sysfs_attribute_ends_the_wait_only_for_the_published_device() {
    if !privileged() {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("sysfs.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    let dir = bed.blkback_dir(&backend);
    std::fs::create_dir_all(&dir).unwrap();
    bed.write(&backend, node::STATE, "2");

    let stand_in = {
        let mut client = bed.client();
        let dir = dir.clone();
        let (pd, seq) = (
            backend.node(node::PHYSICAL_DEVICE),
            backend.node(node::DISKSEQ),
        );
        std::thread::spawn(move || {
            client.watch(&pd, "t").unwrap();
            let raw = loop {
                if let Some(raw) = client.read_opt(&pd).unwrap() {
                    break raw;
                }
                client.next_event(Some(Duration::from_millis(50))).unwrap();
            };
            let dev = DevNum::parse_xenstore(std::str::from_utf8(&raw).unwrap()).unwrap();
            let seq = DiskSeq::parse_xenstore(&client.read_string(&seq).unwrap()).unwrap();
            // A wrong device number first: the script must keep waiting.
            std::fs::write(
                dir.join("physical_device"),
                format!("{:x}:{:x}\n", dev.major, dev.minor + 1),
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let device = diskseq::open_verified(
                DiskId {
                    major: dev.major,
                    minor: dev.minor,
                    seq,
                },
                Access::ReadOnly,
            )
            .unwrap();
            std::fs::write(
                dir.join("physical_device"),
                format!("{:x}:{:x}\n", dev.major, dev.minor),
            )
            .unwrap();
            device
        })
    };
    let start = Instant::now();
    let run = bed.run("add", &backend, &[]);
    let device = stand_in.join().unwrap();
    run.assert_ok();
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "a wrong attribute must not end the wait"
    );
    assert!(run.log.contains("physical_device ="), "{}", run.log);
    let loops = image.loops();
    assert_eq!(loops.len(), 1);
    assert!(loops[0].autoclear);
    drop(device);
    assert_no_loops(&image);
}

#[test]
fn sysfs_attribute_that_never_appears_times_out() {
    if !privileged() {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("sysfs-never.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "r");
    std::fs::create_dir_all(bed.blkback_dir(&backend)).unwrap();
    let run = bed.run("add", &backend, &[("BLOCK_DISKSEQ_TIMEOUT", "0.2")]);
    run.assert_failed();
    let err = bed.read(&backend, node::HOTPLUG_ERROR).unwrap();
    assert!(err.contains("physical_device"), "{err}");
    assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
    assert_no_loops(&image);
}

#[test]
fn handoff_off_keeps_the_device_until_remove() {
    if !privileged() {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("off.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    bed.write(&backend, node::OPENED, "0");
    let run = bed.run("add", &backend, &[("BLOCK_DISKSEQ_HANDOFF", "off")]);
    run.assert_ok();
    assert!(run.log.contains("made persistent"), "{}", run.log);
    assert_eq!(
        bed.read(&backend, node::AUTOCLEAR),
        None,
        "the record says: persistent"
    );
    let loops = image.loops();
    assert_eq!(loops.len(), 1);
    assert!(!loops[0].autoclear);
    bed.run("remove", &backend, &[]).assert_ok();
    assert_no_loops(&image);
}

/// `opened` = 1 before anything is published: the backend already holds a
/// device from an earlier attempt and will not take a new one. Waiting for
/// `opened` would end at once on the wrong premise: refuse instead.
#[test]
fn stale_opened_node_is_refused() {
    if !privileged() {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("stale-opened.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    bed.write(&backend, node::OPENED, "1");
    bed.run("add", &backend, &[]).assert_failed();
    let err = bed.read(&backend, node::HOTPLUG_ERROR).unwrap();
    assert!(err.contains("opened = 1"), "{err}");
    assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
    assert_no_loops(&image);
}

/// End to end with this project's backend (blkback's protocol with the
/// diskseq check and the `opened` node): libxl's order — directories, wait
/// for InitWait, run the script — hands the backend exactly the published
/// instance, and the device lives as long as the backend holds it.
#[test]
fn the_project_backend_takes_the_published_device() {
    if !privileged() {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("real-backend.img", 4);
    let mut config = vbd::backend::BackendConfig::new(0);
    config.logger = std::sync::Arc::new(|_| {});
    let backend_service = vbd::backend::Backend::new(bed.client(), config)
        .spawn()
        .unwrap();
    let backend = bed.libxl_add(5, 51712, image.path_bytes(), "w");
    wait_for(
        || bed.read(&backend, node::STATE).as_deref() == Some("2"),
        "backend InitWait",
    );
    assert_eq!(bed.read(&backend, node::OPENED).as_deref(), Some("0"));

    let run = bed.run("add", &backend, &[]);
    run.assert_ok();
    assert!(run.log.contains("backend holds the device"), "{}", run.log);
    let loops = image.loops();
    assert_eq!(loops.len(), 1);
    let held = backend_service.held_disks();
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].id, loops[0].id,
        "the backend holds the published instance"
    );

    // The backend lets go (as blkback at detach): the device goes with it.
    backend_service.stop().unwrap();
    assert_no_loops(&image);
    bed.run("remove", &backend, &[]).assert_ok();
    assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
}
