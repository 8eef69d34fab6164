//! The handoff: with a backend that checks diskseq (`opened` node at probe),
//! `add` holds its fd on an autoclear device until the backend says it holds
//! the device — the handshake both ways, its timeout, a backend that gives
//! up — and the device then lives exactly as long as the backend holds it.
//! With any other backend the device is persistent from the start, labelled
//! for its backend, and nothing is waited for.

use std::time::{Duration, Instant};

use crate::support::*;
use testbed::require_root;
use vbd::schema::node;

#[test]
fn opened_handshake_hands_the_device_to_the_backend() {
    if !require_root("opened_handshake_hands_the_device_to_the_backend") {
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
    if !require_root("opened_never_set_times_out_and_cleans_up") {
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
    if !require_root("handoff_opened_policy_waits_even_without_the_node") {
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
    if !require_root("backend_closing_during_the_wait_fails_at_once") {
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

/// Stock blkback checks nothing (and writes no `opened`): the device is
/// attached persistent, so nothing can free its number under the record,
/// and the script does not wait for the backend at all — even where stock
/// blkback's sysfs directory exists.
#[test]
fn a_backend_without_the_check_gets_a_persistent_device_at_once() {
    if !require_root("a_backend_without_the_check_gets_a_persistent_device_at_once") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("stock.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    std::fs::create_dir_all(bed.blkback_dir(&backend)).unwrap();
    // A timeout this short would fail any wait.
    let run = bed.run("add", &backend, &[("BLOCK_DISKSEQ_TIMEOUT", "0.001")]);
    run.assert_ok();
    assert!(
        run.log.contains("stays attached until remove"),
        "{}",
        run.log
    );
    assert_eq!(
        bed.read(&backend, node::HOTPLUG_STATUS).as_deref(),
        Some("connected")
    );
    let loops = image.loops();
    assert_eq!(loops.len(), 1);
    assert!(!loops[0].autoclear, "persistent from the start");
    assert_eq!(
        loops[0].label.as_ref().map(|l| l.as_str()),
        Some("diskseq-vbd:vbd/5/768"),
        "labelled with its backend"
    );
    let record = record(&bed, &backend);
    assert_eq!(record.backing, Some(image.id), "the backing inode recorded");
    assert_eq!(record.diskseq, Some(loops[0].id.seq));
    bed.run("remove", &backend, &[]).assert_ok();
    assert_no_loops(&image);
}

#[test]
fn handoff_persistent_policy_ignores_the_opened_node() {
    if !require_root("handoff_persistent_policy_ignores_the_opened_node") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("persistent.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    bed.write(&backend, node::OPENED, "0");
    let run = bed.run("add", &backend, &[("BLOCK_DISKSEQ_HANDOFF", "persistent")]);
    run.assert_ok();
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
    if !require_root("stale_opened_node_is_refused") {
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
    if !require_root("the_project_backend_takes_the_published_device") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("real-backend.img", 4);
    let mut config = xen_sim::backend::BackendConfig::new(0);
    config.logger = std::sync::Arc::new(|_| {});
    let backend_service = xen_sim::backend::Backend::new(bed.client(), config)
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
