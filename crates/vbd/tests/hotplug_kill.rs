//! Kill safety: the script SIGKILLed at every step (test-only fault
//! injection, as libxl kills a script after 40 s) leaves no loop device and
//! no partial record; `remove` refuses a device swapped behind its back.

mod hotplug_support;

use std::os::fd::AsFd;

use diskseq::{LoopDevice, LoopOptions};
use hotplug_support::*;
use vbd::schema::node;

script_entry!();

const SIGKILL: i32 = 9;

#[test]
fn sigkill_at_every_add_step_leaks_nothing() {
    if !privileged() {
        return;
    }
    // (step, is the record published by then?)
    let steps = [
        ("after-read", false),
        ("after-open", false),
        ("after-attach", false),
        ("before-publish", false),
        ("after-publish", true),
        ("in-wait", true),
    ];
    for mode in ["w", "r"] {
        for (step, published) in steps {
            let bed = Bed::new();
            let image = bed.image("kill.img", 4);
            let backend = bed.libxl_add(5, 768, image.path_bytes(), mode);
            // A backend that will never confirm keeps the script waiting.
            bed.write(&backend, node::OPENED, "0");
            let run = bed.run("add", &backend, &[("BLOCK_DISKSEQ_FAULT", step)]);
            assert_eq!(
                run.signal,
                Some(SIGKILL),
                "{step}: the fault must fire: {run:?}"
            );
            assert_no_loops(&image);
            let pd = bed.read(&backend, node::PHYSICAL_DEVICE);
            let seq = bed.read(&backend, node::DISKSEQ);
            assert_eq!(
                pd.is_some(),
                seq.is_some(),
                "{step}: physical-device without diskseq or back"
            );
            assert_eq!(pd.is_some(), published, "{step}");
            if published {
                assert!(
                    bed.read(&backend, node::PHYSICAL_DEVICE_PATH).is_some(),
                    "{step}"
                );
                // libxl runs remove after a failed add: the device is gone, fine.
                bed.run("remove", &backend, &[]).assert_ok();
                assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
            }
        }
    }
}

#[test]
fn without_a_fault_the_same_setup_completes() {
    if !privileged() {
        return;
    }
    // The control for the test above: no fault, same bed, exits normally
    // (by timeout here, since nobody confirms), so SIGKILL there came from
    // the injection point.
    let bed = Bed::new();
    let image = bed.image("control.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    bed.write(&backend, node::OPENED, "0");
    let run = bed.run("add", &backend, &[("BLOCK_DISKSEQ_TIMEOUT", "0.1")]);
    assert_eq!((run.code, run.signal), (Some(1), None), "{run:?}");
    assert_no_loops(&image);
}

#[test]
fn remove_killed_after_detach_is_finished_by_a_second_run() {
    if !privileged() {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("kill-rm.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    bed.run("add", &backend, &[("BLOCK_DISKSEQ_HANDOFF", "off")])
        .assert_ok();
    let run = bed.run(
        "remove",
        &backend,
        &[("BLOCK_DISKSEQ_FAULT", "after-detach")],
    );
    assert_eq!(run.signal, Some(SIGKILL), "{run:?}");
    assert_no_loops(&image);
    assert!(
        bed.read(&backend, node::PHYSICAL_DEVICE).is_some(),
        "record outlives the kill"
    );
    remove_finds_device_gone(&bed, &backend);
}

/// Detach + re-attach another file on the same minor: the record's number
/// now names another disk. `remove` must touch nothing and fail.
#[test]
fn remove_refuses_a_device_swapped_behind_its_back() {
    if !privileged() {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("mine.img", 4);
    let intruder = bed.image("intruder.img", 4);
    let intruder_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&intruder.path)
        .unwrap();
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    // Other tests attach loop devices concurrently and may take the minor
    // between our detach and re-attach; retry the scenario until it happens.
    let mut swapped = None;
    for _ in 0..50 {
        bed.run("add", &backend, &[("BLOCK_DISKSEQ_HANDOFF", "off")])
            .assert_ok();
        let ours = image.loops().pop().expect("the add's loop device");
        diskseq::detach_verified(&ours.id, Some(image.id)).unwrap();
        match LoopDevice::attach_at(
            ours.id.minor,
            intruder_file.as_fd(),
            &LoopOptions {
                autoclear: true,
                ..Default::default()
            },
        ) {
            Ok(device) => {
                swapped = Some((ours, device));
                break;
            }
            Err(_) => {
                bed.run("remove", &backend, &[]).assert_ok();
            }
        }
    }
    let (ours, device) = swapped.expect("could not re-attach the minor in 50 tries");
    let run = bed.run("remove", &backend, &[]);
    run.assert_failed();
    assert!(run.log.contains("left alone"), "{}", run.log);
    assert_eq!(device.id().dev(), ours.id.dev());
    assert_eq!(
        device.block_device().current_seq().unwrap(),
        device.id().seq,
        "intruder untouched"
    );
    assert_eq!(intruder.loops().len(), 1);
    assert!(
        bed.read(&backend, node::PHYSICAL_DEVICE).is_some(),
        "a mismatch touches nothing"
    );
    drop(device);
    assert_no_loops(&intruder);
    // The intruder gone, the recorded instance is simply gone: success.
    bed.run("remove", &backend, &[]).assert_ok();
    assert_no_loops(&image);
}

/// A device handed off with autoclear detaches itself when the backend
/// closes it, and anyone may attach another file under its number before
/// `remove` runs: that is the normal end of the device, not a swap.
#[test]
fn remove_after_autoclear_succeeds_even_if_the_number_was_reused() {
    if !privileged() {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("handed-off.img", 4);
    let other = bed.image("next-user.img", 4);
    let other_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&other.path)
        .unwrap();
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    let mut reused = None;
    for _ in 0..50 {
        let blkback = OpenedBackend::start(&bed, &backend, true);
        bed.run("add", &backend, &[]).assert_ok();
        assert_eq!(bed.read(&backend, node::AUTOCLEAR).as_deref(), Some("1"));
        let id = blkback.release().expect("backend held the device");
        assert_no_loops(&image);
        match LoopDevice::attach_at(
            id.minor,
            other_file.as_fd(),
            &LoopOptions {
                autoclear: true,
                ..Default::default()
            },
        ) {
            Ok(device) => {
                reused = Some(device);
                break;
            }
            // Another test took the minor first; try again.
            Err(_) => bed.run("remove", &backend, &[]).assert_ok(),
        }
    }
    let device = reused.expect("could not reuse the minor in 50 tries");
    let run = bed.run("remove", &backend, &[]);
    run.assert_ok();
    assert!(run.log.contains("detached itself"), "{}", run.log);
    assert_eq!(
        device.block_device().current_seq().unwrap(),
        device.id().seq,
        "the next user's disk is untouched"
    );
    assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
    drop(device);
    assert_no_loops(&other);
}
