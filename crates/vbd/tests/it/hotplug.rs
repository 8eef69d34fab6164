//! `block-diskseq add|remove` run as libxl runs it, against real loop
//! devices and a private xenstored: publishing, double add, remove, bad
//! inputs, and the number of xenstore round trips.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;

use crate::support::*;
use diskseq::{DevNum, DiskSeq};
use testbed::require_root;
use vbd::schema::{node, PublishedDevice};

/// Reads the published record and checks its formats.
fn published(bed: &Bed, backend: &vbd::schema::BackendPath) -> (DevNum, DiskSeq, String) {
    let pd = bed
        .read(backend, node::PHYSICAL_DEVICE)
        .expect("physical-device");
    let seq = bed.read(backend, node::DISKSEQ).expect("diskseq");
    let path = bed
        .read(backend, node::PHYSICAL_DEVICE_PATH)
        .expect("physical-device-path");
    assert_eq!(
        pd,
        pd.to_lowercase(),
        "physical-device must be lower-case hex"
    );
    assert_eq!(seq, seq.to_lowercase(), "diskseq must be lower-case hex");
    (
        DevNum::parse_xenstore(&pd).unwrap(),
        DiskSeq::parse_xenstore(&seq).unwrap(),
        path,
    )
}

#[test]
fn file_rw_add_publishes_a_persistent_loop_and_remove_detaches_it() {
    if !require_root("file_rw_add_publishes_a_persistent_loop_and_remove_detaches_it") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("disk.img", 8);
    let backend = bed.libxl_add(5, 51712, image.path_bytes(), "w");
    bed.run("add", &backend, &[]).assert_ok();

    let (dev, seq, path) = published(&bed, &backend);
    let loops = image.loops();
    assert_eq!(loops.len(), 1, "{loops:?}");
    let info = &loops[0];
    assert_eq!((info.id.dev(), info.id.seq), (dev, seq));
    assert_eq!(path, info.path.display().to_string());
    assert_eq!(bed.read(&backend, node::NODE), Some(path.clone()));
    assert_eq!(
        bed.read(&backend, node::HOTPLUG_STATUS).as_deref(),
        Some("connected")
    );
    assert!(!info.read_only, "mode w must give a writable loop device");
    // No backend signal here: the device must outlive the script.
    assert!(!info.autoclear);
    let log = bed.log_text();
    assert!(
        log.contains("backend/vbd/5/51712: ") && log.contains("published physical-device"),
        "{log}"
    );

    bed.run("remove", &backend, &[]).assert_ok();
    assert_no_loops(&image);
    assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
    assert_eq!(bed.read(&backend, node::DISKSEQ), None);
    // A second remove finds no record: fine.
    bed.run("remove", &backend, &[]).assert_ok();
}

#[test]
fn file_r_add_gives_a_read_only_loop() {
    if !require_root("file_r_add_gives_a_read_only_loop") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("ro.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "r");
    bed.run("add", &backend, &[]).assert_ok();
    let loops = image.loops();
    assert_eq!(loops.len(), 1);
    assert!(loops[0].read_only);
    bed.run("remove", &backend, &[]).assert_ok();
    assert_no_loops(&image);
}

#[test]
fn direct_io_only_when_the_backend_says_it_is_safe() {
    if !require_root("direct_io_only_when_the_backend_says_it_is_safe") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("dio.img", 4);
    let backend = bed.libxl_add_with(
        5,
        768,
        image.path_bytes(),
        "w",
        &[(node::DIRECT_IO_SAFE, "1")],
    );
    bed.run("add", &backend, &[]).assert_ok();
    assert!(image.loops()[0].direct_io);
    bed.run("remove", &backend, &[]).assert_ok();
    let plain = bed.libxl_add(6, 768, image.path_bytes(), "w");
    bed.run("add", &plain, &[]).assert_ok();
    assert!(!image.loops()[0].direct_io);
    bed.run("remove", &plain, &[]).assert_ok();
    assert_no_loops(&image);
}

#[test]
fn block_device_targets_are_used_as_is_and_never_detached() {
    if !require_root("block_device_targets_are_used_as_is_and_never_detached") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("blk.img", 4);
    let held = image.attach_held(true);
    let params = held.path().display().to_string();
    for (fe, mode) in [(5, "r"), (6, "w")] {
        let backend = bed.libxl_add(fe, 768, params.as_bytes(), mode);
        bed.run("add", &backend, &[]).assert_ok();
        let (dev, seq, path) = published(&bed, &backend);
        assert_eq!((dev, seq), (held.id().dev(), held.id().seq));
        assert_eq!(path, params);
        assert_eq!(
            bed.read(&backend, node::NODE),
            None,
            "node is only for loops the script made"
        );
        bed.run("remove", &backend, &[]).assert_ok();
        assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
        assert_eq!(
            held.block_device().current_seq().unwrap(),
            held.id().seq,
            "user's device left alone"
        );
        // r then w on the same device: the r vbd is gone by now.
    }
    assert_eq!(image.loops().len(), 1);
    drop(held);
    assert_no_loops(&image);
}

#[test]
fn double_add_is_a_no_op() {
    if !require_root("double_add_is_a_no_op") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("twice.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    bed.run("add", &backend, &[]).assert_ok();
    let first = published(&bed, &backend);
    bed.run("add", &backend, &[]).assert_ok();
    assert_eq!(published(&bed, &backend), first);
    assert_eq!(
        image.loops().len(),
        1,
        "the second add must not attach again"
    );
    assert!(bed.log_text().contains("already present"));
    bed.run("remove", &backend, &[]).assert_ok();
    assert_no_loops(&image);
}

#[test]
fn read_only_file_with_mode_w_is_busy() {
    if !require_root("read_only_file_with_mode_w_is_busy") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("locked.img", 4);
    std::fs::set_permissions(&image.path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    bed.run("add", &backend, &[]).assert_failed();
    assert_eq!(
        bed.read(&backend, node::HOTPLUG_STATUS).as_deref(),
        Some("busy")
    );
    let err = bed.read(&backend, node::HOTPLUG_ERROR).unwrap();
    assert!(err.contains("locked.img is read-only"), "{err}");
    assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
    assert_no_loops(&image);
    // Read-only use of the same file is fine.
    let ro = bed.libxl_add(6, 768, image.path_bytes(), "r");
    bed.run("add", &ro, &[]).assert_ok();
    bed.run("remove", &ro, &[]).assert_ok();
    assert_no_loops(&image);
}

/// Every malformed input fails with exit 1, `hotplug-status` = error, an
/// error naming the problem, and no device left attached.
#[test]
fn bad_inputs_fail_with_a_named_error_and_leave_nothing() {
    if !require_root("bad_inputs_fail_with_a_named_error_and_leave_nothing") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("good.img", 4);
    let dir = bed.dir.path().join("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let fifo = bed.dir.path().join("a-fifo");
    testbed::fifo::mkfifo(&fifo);
    let missing = bed.dir.path().join("missing.img");
    let img = image.path.display().to_string();
    let mut nul = image.path_bytes().to_vec();
    nul.extend_from_slice(b"\0x");

    // (name, params, mode, nodes to delete, expected error text)
    type Case<'a> = (&'a str, Vec<u8>, &'a str, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        // (name, params, mode, nodes to delete, expected error text)
        (
            "relative",
            b"disk.img".to_vec(),
            "w",
            vec![],
            "params: invalid value \"disk.img\": path is not absolute",
        ),
        (
            "missing file",
            missing.display().to_string().into_bytes(),
            "w",
            vec![],
            "missing.img: does not exist",
        ),
        (
            "empty",
            Vec::new(),
            "w",
            vec![],
            "params: invalid value \"\": empty path",
        ),
        ("NUL", nul, "w", vec![], "path contains a NUL byte"),
        (
            "directory",
            dir.display().to_string().into_bytes(),
            "r",
            vec![],
            "is a directory",
        ),
        (
            "char device",
            b"/dev/null".to_vec(),
            "r",
            vec![],
            "/dev/null: is a character device",
        ),
        (
            "fifo",
            fifo.display().to_string().into_bytes(),
            "r",
            vec![],
            "is a FIFO",
        ),
        (
            "unknown mode",
            img.clone().into_bytes(),
            "rw-",
            vec![],
            "mode: invalid value \"rw-\"",
        ),
        (
            "no params",
            img.clone().into_bytes(),
            "w",
            vec![node::PARAMS],
            "params: missing",
        ),
        (
            "no mode",
            img.clone().into_bytes(),
            "w",
            vec![node::MODE],
            "mode: missing",
        ),
        (
            "no frontend-id",
            img.clone().into_bytes(),
            "w",
            vec![node::FRONTEND_ID],
            "frontend-id: missing",
        ),
        (
            "no state",
            img.clone().into_bytes(),
            "w",
            vec![node::STATE],
            "backend state is missing",
        ),
    ];
    for (i, (name, params, mode, delete, expected)) in cases.into_iter().enumerate() {
        let backend = bed.libxl_add(10 + i as u32, 768, &params, mode);
        for n in delete {
            bed.rm(&backend, n);
        }
        let run = bed.run("add", &backend, &[]);
        assert_eq!(run.code, Some(1), "{name}: {run:?}");
        if bed.read(&backend, node::STATE).is_some() {
            assert_eq!(
                bed.read(&backend, node::HOTPLUG_STATUS).as_deref(),
                Some("error"),
                "{name}"
            );
            let err = bed.read(&backend, node::HOTPLUG_ERROR).unwrap_or_default();
            assert!(
                err.contains(expected),
                "{name}: hotplug-error {err:?} lacks {expected:?}"
            );
        } else {
            // The directory is going away: nothing is written into it.
            assert!(
                bed.log_text().contains(expected),
                "{name}: log lacks {expected:?}"
            );
        }
        assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None, "{name}");
        assert!(image.loops().is_empty(), "{name}: loop left attached");
    }
    // A backend already closing is not given a device.
    let closing = bed.libxl_add(40, 768, image.path_bytes(), "w");
    bed.write(&closing, node::STATE, "5");
    bed.run("add", &closing, &[]).assert_failed();
    assert!(bed
        .read(&closing, node::HOTPLUG_ERROR)
        .unwrap()
        .contains("backend state is 5"));
    assert_no_loops(&image);
}

#[test]
fn bad_environment_fails_and_reports() {
    if !require_root("bad_environment_fails_and_reports") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("env.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    let run = bed.run("add", &backend, &[("BLOCK_DISKSEQ_HANDOFF", "sometimes")]);
    run.assert_failed();
    assert!(
        run.stderr.contains("BLOCK_DISKSEQ_HANDOFF=\"sometimes\""),
        "{run:?}"
    );
    assert_eq!(
        bed.read(&backend, node::HOTPLUG_STATUS).as_deref(),
        Some("error")
    );
    let run = bed.run("frobnicate", &backend, &[]);
    run.assert_failed();
    assert!(run.stderr.contains("unknown command"), "{run:?}");
    assert_no_loops(&image);
}

/// A record already in place makes `add` a no-op — if it is a record: one
/// whose `physical-device` or `diskseq` does not parse is an error.
#[test]
fn add_refuses_malformed_existing_records_and_keeps_good_ones() {
    if !require_root("add_refuses_malformed_existing_records_and_keeps_good_ones") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("existing.img", 4);
    // (nodes already written, expected error or None for "left alone")
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: [Case; 5] = [
        (
            &[(node::PHYSICAL_DEVICE, "7:zz")],
            Some("physical-device: invalid value \"7:zz\""),
        ),
        (
            &[(node::PHYSICAL_DEVICE, "")],
            Some("physical-device: invalid value \"\""),
        ),
        (
            &[(node::PHYSICAL_DEVICE, "7:1"), (node::DISKSEQ, "0")],
            Some("diskseq: invalid value \"0\""),
        ),
        // The stock script's record (no diskseq) and ours: left alone.
        (
            &[
                (node::PHYSICAL_DEVICE, "7:1"),
                (node::PHYSICAL_DEVICE_PATH, "/dev/loop1"),
            ],
            None,
        ),
        (
            &[(node::PHYSICAL_DEVICE, "fd:3"), (node::DISKSEQ, "2a")],
            None,
        ),
    ];
    for (i, (nodes, error)) in cases.into_iter().enumerate() {
        let backend = bed.libxl_add(30 + i as u32, 768, image.path_bytes(), "w");
        for (n, v) in nodes {
            bed.write(&backend, n, v);
        }
        let run = bed.run("add", &backend, &[]);
        match error {
            Some(expected) => {
                run.assert_failed();
                let err = bed.read(&backend, node::HOTPLUG_ERROR).unwrap_or_default();
                assert!(
                    err.contains(expected),
                    "case {i}: {err:?} lacks {expected:?}"
                );
            }
            None => {
                run.assert_ok();
                assert!(run.log.contains("already present"), "case {i}: {}", run.log);
                assert_eq!(
                    bed.read(&backend, node::HOTPLUG_STATUS),
                    None,
                    "case {i}: untouched"
                );
            }
        }
        assert_eq!(
            bed.read(&backend, node::PHYSICAL_DEVICE).as_deref(),
            Some(nodes[0].1),
            "case {i}"
        );
        assert!(image.loops().is_empty(), "case {i}: nothing attached");
    }
}

/// Malformed records, or one without diskseq (the stock script's): `remove`
/// detaches nothing by their numbers — it withdraws them and looks for this
/// backend's device by its label only (none here), so it succeeds and no
/// device it cannot prove is touched.
#[test]
fn remove_never_detaches_by_malformed_or_unprovable_records() {
    if !require_root("remove_never_detaches_by_malformed_or_unprovable_records") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("rec.img", 4);
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                (node::PHYSICAL_DEVICE, "7:zz"),
                (node::PHYSICAL_DEVICE_PATH, "/dev/loop0"),
            ],
            "physical-device: invalid value",
        ),
        (
            &[(node::PHYSICAL_DEVICE, "7:0")],
            "physical-device-path: missing",
        ),
        (
            &[
                (node::PHYSICAL_DEVICE, "7:0"),
                (node::PHYSICAL_DEVICE_PATH, "/dev/loop0"),
                (node::DISKSEQ, "00"),
            ],
            "diskseq: invalid value",
        ),
        // The stock script's record: a loop by name, no diskseq.
        (
            &[
                (node::PHYSICAL_DEVICE, "7:0"),
                (node::PHYSICAL_DEVICE_PATH, "/dev/loop0"),
                (node::NODE, "/dev/loop0"),
            ],
            "has no diskseq",
        ),
    ];
    for (i, (nodes, expected)) in cases.into_iter().enumerate() {
        let backend = bed.libxl_add(20 + i as u32, 768, image.path_bytes(), "w");
        for (n, v) in nodes {
            bed.write(&backend, n, v);
        }
        let held = image.attach_held(true);
        let run = bed.run("remove", &backend, &[]);
        run.assert_ok();
        assert!(run.log.contains(expected), "case {i}: {}", run.log);
        assert!(
            run.log.contains("no device labelled for this backend"),
            "case {i}: {}",
            run.log
        );
        assert_eq!(
            bed.read(&backend, node::PHYSICAL_DEVICE),
            None,
            "case {i}: withdrawn"
        );
        assert_eq!(
            image.loops().len(),
            1,
            "case {i}: another's device untouched"
        );
        drop(held);
        assert_no_loops(&image);
    }
}

/// add starts its transaction and reads its inputs in it in one round trip,
/// then publishes in that transaction; the counts are pinned so they cannot
/// silently regress. (On real Xen each round trip and each request costs:
/// docs/real-xen.md, "Where a script add's time goes".)
#[test]
fn add_and_remove_round_trips_are_pinned() {
    if !require_root("add_and_remove_round_trips_are_pinned") {
        return;
    }
    let bed = Bed::new();
    let counter = RoundTripCounter::start(&bed);
    let via_counter = [("XENSTORED_PATH", counter.socket.to_str().unwrap())];
    let trips = || {
        (
            counter.round_trips.swap(0, Ordering::SeqCst),
            counter.requests.swap(0, Ordering::SeqCst),
        )
    };

    // A file no other loop device is bound to: no other vbd can hold it, so
    // the publish transaction reads nothing but our own nodes. START with
    // the 8 input reads behind it (under the transaction id the daemon
    // gives a fresh connection's first transaction: a wrong guess would
    // cost a fourth round trip); the 6 writes; END.
    let image = bed.image("rt.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    bed.run("add", &backend, &via_counter).assert_ok();
    assert_eq!(trips(), (3, 1 + 8 + 6 + 1), "add of a file");
    bed.run("remove", &backend, &via_counter).assert_ok();
    // Withdraw, in one transaction: START with the reads behind it, the
    // RMs of every record node in one batch, END. The detach needs no
    // xenstore.
    assert_eq!(trips().0, 3, "remove");
    bed.client().rm(&backend.frontend_dir()).unwrap();

    // A block device: every other vbd's record is read (here: none but
    // ours exists, so nothing to read). After the first batch, in the
    // transaction: list the vbd root, list this frontend's vbds, one batch
    // of writes, END.
    let held = image.attach_held(true);
    let device = bed.libxl_add(6, 768, held.path().to_str().unwrap().as_bytes(), "w");
    trips();
    bed.run("add", &device, &via_counter).assert_ok();
    assert_eq!(trips().0, 1 + 4, "add of a block device");
    // One more frontend domain costs one more listing, and its vbd's
    // `physical-device` one batch of reads.
    bed.libxl_add(7, 768, image.path_bytes(), "r");
    bed.run("remove", &device, &via_counter).assert_ok();
    bed.client().rm(&device.frontend_dir()).unwrap();
    let again = bed.libxl_add(8, 768, held.path().to_str().unwrap().as_bytes(), "w");
    trips();
    bed.run("add", &again, &via_counter).assert_ok();
    assert_eq!(trips().0, 1 + 6, "add of a block device, two frontends");
    bed.run("remove", &again, &via_counter).assert_ok();
    drop(held);
    assert_no_loops(&image);
}

/// The inputs are read before the device is prepared and again inside the
/// publishing transaction: a toolstack that rewrites one in between makes
/// the add fail cleanly, and a record another run published meanwhile wins.
#[test]
fn inputs_rewritten_while_the_device_is_prepared() {
    if !require_root("inputs_rewritten_while_the_device_is_prepared") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("changed.img", 4);
    let other = bed.image("other.img", 4);
    let other_params = image_path(&other.path);
    let rewrites: [(&str, &str); 3] = [
        (node::MODE, "r"),
        (node::PARAMS, &other_params),
        (node::FRONTEND_ID, "6"),
    ];
    for (i, (name, value)) in rewrites.into_iter().enumerate() {
        let backend = bed.libxl_add(5 + i as u32, 768, image.path_bytes(), "w");
        let run = bed.run_interrupted("add", &backend, "after-attach", || {
            bed.write(&backend, name, value);
        });
        run.assert_failed();
        let error = bed.read(&backend, node::HOTPLUG_ERROR).unwrap_or_default();
        assert!(
            error.contains(&format!(
                "{name} changed while the device was being prepared"
            )) || (name == node::FRONTEND_ID && error.contains("frontend-id")),
            "{name}: {error}"
        );
        assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None, "{name}");
        assert_eq!(bed.read(&backend, node::DISKSEQ), None, "{name}");
        assert_no_loops(&image);
        assert_no_loops(&other);
    }

    // Another run published first: ours drops its device and succeeds.
    let backend = bed.libxl_add(9, 768, image.path_bytes(), "w");
    let run = bed.run_interrupted("add", &backend, "after-attach", || {
        bed.write(&backend, node::DISKSEQ, "2a");
        bed.write(&backend, node::PHYSICAL_DEVICE, "fe:0");
    });
    run.assert_ok();
    assert!(
        run.log.contains("published physical-device first"),
        "{}",
        run.log
    );
    assert_eq!(
        bed.read(&backend, node::PHYSICAL_DEVICE).as_deref(),
        Some("fe:0")
    );
    assert_no_loops(&image);
}

/// `remove` withdraws the whole record (every node `add` wrote for the
/// device) in one transaction, so a second add of the same backend starts
/// from nothing and its remove finds only its own device.
#[test]
fn remove_withdraws_the_whole_record() {
    if !require_root("remove_withdraws_the_whole_record") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("record.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    for round in 0..2 {
        bed.run("add", &backend, &[]).assert_ok();
        // A file's loop device is a whole disk: every node but the
        // partition's (pinned.rs covers that one).
        for name in PublishedDevice::NODES
            .iter()
            .filter(|&&n| n != node::PARTITION)
        {
            assert!(bed.read(&backend, name).is_some(), "{round}: {name}");
        }
        bed.run("remove", &backend, &[]).assert_ok();
        for name in PublishedDevice::NODES {
            assert_eq!(bed.read(&backend, name), None, "{round}: {name}");
        }
        assert_no_loops(&image);
    }
}

#[test]
fn absolute_xenbus_path_works_like_the_relative_one() {
    if !require_root("absolute_xenbus_path_works_like_the_relative_one") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("abs.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    let absolute = backend.absolute(0);
    let env = [("XENBUS_PATH", absolute.as_str())];
    let run = bed.run("add", &backend, &env);
    run.assert_ok();
    assert!(run.log.contains(&format!("{absolute}: ")), "{}", run.log);
    published(&bed, &backend);
    bed.run("remove", &backend, &env).assert_ok();
    assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
    assert_no_loops(&image);
}

#[test]
fn read_only_block_device_with_mode_w_is_busy() {
    if !require_root("read_only_block_device_with_mode_w_is_busy") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("ro-dev.img", 4);
    let held = image.attach_held(false);
    let params = held.path().display().to_string();
    let backend = bed.libxl_add(5, 768, params.as_bytes(), "w");
    bed.run("add", &backend, &[]).assert_failed();
    assert_eq!(
        bed.read(&backend, node::HOTPLUG_STATUS).as_deref(),
        Some("busy")
    );
    assert!(bed
        .read(&backend, node::HOTPLUG_ERROR)
        .unwrap()
        .contains(&format!("{params} is read-only")));
    let reader = bed.libxl_add(6, 768, params.as_bytes(), "r");
    bed.run("add", &reader, &[]).assert_ok();
    bed.run("remove", &reader, &[]).assert_ok();
    drop(held);
    assert_no_loops(&image);
}

/// Removes what the dm test put into the host's /dev on every exit path.
struct DevMapperLink {
    link: std::path::PathBuf,
    created_dir: bool,
}

impl Drop for DevMapperLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
        if self.created_dir {
            let _ = std::fs::remove_dir("/dev/mapper");
        }
    }
}

/// `/dev/mapper/NAME` must open a device whose dm name is NAME: a dm device
/// can be removed and another created under the same path. There is no
/// device-mapper here, so a symlink stands in for udev's and a stand-in
/// sysfs says which dm name the opened device has.
#[test]
fn dev_mapper_targets_must_carry_their_dm_name() {
    if !require_root("dev_mapper_targets_must_carry_their_dm_name") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("dm.img", 4);
    let held = image.attach_held(true);
    let name = format!("diskseq-test-{}", std::process::id());
    let created_dir = std::fs::create_dir("/dev/mapper").is_ok();
    let link = std::path::Path::new("/dev/mapper").join(&name);
    let _cleanup = DevMapperLink {
        link: link.clone(),
        created_dir,
    };
    std::os::unix::fs::symlink(held.path(), &link).unwrap();
    let dev = held.id().dev();
    let sysfs = bed.dir.path().join("dm-sys");
    let dm_dir = sysfs.join(format!("dev/block/{}:{}/dm", dev.major, dev.minor));
    std::fs::create_dir_all(&dm_dir).unwrap();
    let sysfs_env = [("BLOCK_DISKSEQ_SYSFS", sysfs.to_str().unwrap())];

    std::fs::write(dm_dir.join("name"), format!("{name}\n")).unwrap();
    let good = bed.libxl_add(5, 768, link.to_str().unwrap().as_bytes(), "r");
    bed.run("add", &good, &sysfs_env).assert_ok();
    assert_eq!(published(&bed, &good).0, dev);
    bed.run("remove", &good, &sysfs_env).assert_ok();

    std::fs::write(dm_dir.join("name"), "someone-else\n").unwrap();
    let swapped = bed.libxl_add(6, 768, link.to_str().unwrap().as_bytes(), "r");
    bed.run("add", &swapped, &sysfs_env).assert_failed();
    let err = bed.read(&swapped, node::HOTPLUG_ERROR).unwrap();
    assert!(err.contains("is dm device \"someone-else\""), "{err}");

    std::fs::remove_dir_all(&dm_dir).unwrap();
    let not_dm = bed.libxl_add(7, 768, link.to_str().unwrap().as_bytes(), "r");
    bed.run("add", &not_dm, &sysfs_env).assert_failed();
    assert!(bed
        .read(&not_dm, node::HOTPLUG_ERROR)
        .unwrap()
        .contains("is not a device-mapper device"));
    drop(held);
    assert_no_loops(&image);
}

/// The installed artefact itself: the `block-diskseq` binary of this build
/// (next to the test executable's directory), run exactly as libxl runs it.
/// Every other test runs the same `vbd::hotplug::main` through the test
/// executable; this one proves the thin binary passes argv and exit status.
#[test]
fn the_block_diskseq_binary_runs_as_libxl_runs_it() {
    if !require_root("the_block_diskseq_binary_runs_as_libxl_runs_it") {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("block-diskseq"));
    let Some(binary) = binary.filter(|b| b.is_file()) else {
        if std::env::var_os("DISKSEQ_REQUIRE_ALL").is_some_and(|v| v == "1") {
            panic!(
                "block-diskseq binary not built next to {} (scripts/test builds all targets first)",
                exe.display()
            );
        }
        eprintln!("skipped: block-diskseq binary not built (cargo build -p diskseq-cli)");
        return;
    };
    let bed = Bed::new();
    let image = bed.image("binary.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    let run = |cmd: &str| {
        let command = bed.script_command(cmd, &backend, &[]);
        // Swap the test executable for the real binary, keeping libxl's
        // environment: argv is just the command.
        let mut real = std::process::Command::new(&binary);
        real.arg(cmd).stdin(std::process::Stdio::null());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => real.env(key, value),
                None => real.env_remove(key),
            };
        }
        real.output().unwrap()
    };
    let out = run("add");
    assert!(out.status.success(), "{out:?}");
    published(&bed, &backend);
    assert_eq!(image.loops().len(), 1);
    let out = run("remove");
    assert!(out.status.success(), "{out:?}");
    assert_no_loops(&image);
    let out = run("online");
    assert_eq!(out.status.code(), Some(1), "unknown command: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown command"));
}

/// The handoff wait skips each watch's registration event (the batched
/// first read covers it): a backend that sets `opened` = 1 only after the
/// script has read "0" must still end the wait through its watch event,
/// promptly and not at the timeout.
#[test]
fn opened_set_after_the_first_read_ends_the_wait_through_the_watch() {
    if !require_root("opened_set_after_the_first_read_ends_the_wait_through_the_watch") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("late-opened.img", 4);
    let backend = bed.libxl_add(5, 768, image.path_bytes(), "w");
    bed.write(&backend, node::OPENED, "0");
    bed.write(&backend, node::STATE, "2");
    let mut client = bed.client();
    let pd = backend.node(node::PHYSICAL_DEVICE);
    let opened = backend.node(node::OPENED);
    client.watch(&pd, "pd").unwrap();
    let late_backend = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while client.read_opt(&pd).unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "no physical-device");
            client
                .next_event(Some(std::time::Duration::from_millis(50)))
                .unwrap();
        }
        // Well after the script's first read of `opened`.
        std::thread::sleep(std::time::Duration::from_millis(300));
        client.write(&opened, "1").unwrap();
    });
    let start = std::time::Instant::now();
    let run = bed.run("add", &backend, &[("BLOCK_DISKSEQ_TIMEOUT", "20")]);
    let took = start.elapsed();
    late_backend.join().unwrap();
    run.assert_ok();
    assert!(run.log.contains("backend holds the device"), "{}", run.log);
    assert!(
        took >= std::time::Duration::from_millis(300) && took < std::time::Duration::from_secs(10),
        "the wait must end on the watch event, not before it or at the timeout: {took:?}"
    );
    // Nobody holds the device: it autocleared when the script exited.
    assert_no_loops(&image);
}
