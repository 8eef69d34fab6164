//! The sharing check of `block-diskseq add`, as the whole matrix: ro+ro
//! allowed, read-write conflicts (other vbds, host loop devices, host
//! mounts), the same-VM exemption, `!`, and the stock script's shared-file
//! bug not reproducing.

use std::process::Command;

use crate::support::*;
use testbed::require_root;
use vbd::schema::{node, BackendPath};

fn assert_busy(bed: &Bed, backend: &BackendPath, names: &str) {
    assert_eq!(
        bed.read(backend, node::HOTPLUG_STATUS).as_deref(),
        Some("busy"),
        "{backend}"
    );
    let err = bed.read(backend, node::HOTPLUG_ERROR).unwrap_or_default();
    assert!(
        err.contains(names),
        "hotplug-error {err:?} should name {names:?}"
    );
    assert_eq!(bed.read(backend, node::PHYSICAL_DEVICE), None);
}

fn set_vm(bed: &Bed, domid: u32, vm: &str) {
    bed.client()
        .write(&format!("/local/domain/{domid}/vm"), vm)
        .unwrap();
}

/// (first mode, second mode, same VM?, second allowed?)
const FILE_MATRIX: &[(&str, &str, bool, bool)] = &[
    ("r", "r", false, true),
    ("r", "w", false, false),
    ("w", "r", false, false),
    ("w", "w", false, false),
    ("w", "w", true, true),
    ("r", "w", true, true),
    ("w", "w!", false, true),
    ("w!", "r", false, false),
    ("w!", "w!", false, true),
];

#[test]
fn file_shared_between_two_guests_follows_the_matrix() {
    if !require_root("file_shared_between_two_guests_follows_the_matrix") {
        return;
    }
    for (i, &(first, second, same_vm, allowed)) in FILE_MATRIX.iter().enumerate() {
        let bed = Bed::new();
        let image = bed.image("shared.img", 4);
        let a = bed.libxl_add(5, 768, image.path_bytes(), first);
        let b = bed.libxl_add(6, 768, image.path_bytes(), second);
        if same_vm {
            set_vm(&bed, 5, "/vm/one");
            set_vm(&bed, 6, "/vm/one");
        }
        bed.run("add", &a, &[]).assert_ok();
        let run = bed.run("add", &b, &[]);
        let case = format!(
            "case {i}: {first} then {second}, same VM {same_vm}: {:?}",
            bed.read(&b, node::HOTPLUG_ERROR)
        );
        if allowed {
            assert_eq!(run.code, Some(0), "{case}");
            assert_eq!(image.loops().len(), 2, "{case}");
            bed.run("remove", &b, &[]).assert_ok();
        } else {
            assert_eq!(run.code, Some(1), "{case}: {run:?}");
            assert_busy(&bed, &b, "by domain 5 (backend/vbd/5/768)");
            assert_eq!(
                image.loops().len(),
                1,
                "{case}: the refused add must not leave its loop"
            );
        }
        bed.run("remove", &a, &[]).assert_ok();
        assert_no_loops(&image);
    }
}

#[test]
fn two_disks_of_the_same_guest_may_share_read_write() {
    if !require_root("two_disks_of_the_same_guest_may_share_read_write") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("same-dom.img", 4);
    let a = bed.libxl_add(5, 768, image.path_bytes(), "w");
    let b = bed.libxl_add(5, 832, image.path_bytes(), "w");
    bed.run("add", &a, &[]).assert_ok();
    bed.run("add", &b, &[]).assert_ok();
    bed.run("remove", &a, &[]).assert_ok();
    bed.run("remove", &b, &[]).assert_ok();
    assert_no_loops(&image);
}

#[test]
fn missing_vm_nodes_do_not_make_guests_the_same_vm() {
    if !require_root("missing_vm_nodes_do_not_make_guests_the_same_vm") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("novm.img", 4);
    let a = bed.libxl_add(5, 768, image.path_bytes(), "w");
    let b = bed.libxl_add(6, 768, image.path_bytes(), "w");
    bed.client().rm("/local/domain/5/vm").unwrap();
    bed.client().rm("/local/domain/6/vm").unwrap();
    bed.run("add", &a, &[]).assert_ok();
    bed.run("add", &b, &[]).assert_failed();
    assert_busy(&bed, &b, "domain 5");
    bed.run("remove", &a, &[]).assert_ok();
    assert_no_loops(&image);
}

#[test]
fn block_device_shared_between_guests_follows_the_matrix() {
    if !require_root("block_device_shared_between_guests_follows_the_matrix") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("shared-blk.img", 4);
    let held = image.attach_held(true);
    let params = held.path().display().to_string();
    for (i, &(first, second, same_vm, allowed)) in FILE_MATRIX.iter().enumerate() {
        let (fa, fb) = (100 + 2 * i as u32, 101 + 2 * i as u32);
        let a = bed.libxl_add(fa, 768, params.as_bytes(), first);
        let b = bed.libxl_add(fb, 768, params.as_bytes(), second);
        if same_vm {
            set_vm(&bed, fa, &format!("/vm/pair{i}"));
            set_vm(&bed, fb, &format!("/vm/pair{i}"));
        }
        bed.run("add", &a, &[]).assert_ok();
        let run = bed.run("add", &b, &[]);
        assert_eq!(
            run.code,
            Some(if allowed { 0 } else { 1 }),
            "case {i}: {first} then {second}: {run:?}"
        );
        if !allowed {
            assert_busy(&bed, &b, &format!("by domain {fa}"));
        }
        bed.run("remove", &a, &[]).assert_ok();
        bed.run("remove", &b, &[]).assert_ok();
    }
    assert_eq!(
        image.loops().len(),
        1,
        "the user's device is never detached"
    );
}

/// A record about a previous instance under the same number (its diskseq
/// differs) is not a holder: the number was reused, the disk is new.
#[test]
fn records_of_a_previous_instance_are_not_holders() {
    if !require_root("records_of_a_previous_instance_are_not_holders") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("reused.img", 4);
    let held = image.attach_held(true);
    let params = held.path().display().to_string();
    let stale = bed.libxl_add(5, 768, params.as_bytes(), "w");
    bed.write(
        &stale,
        node::PHYSICAL_DEVICE,
        &held.id().dev().to_xenstore(),
    );
    bed.write(&stale, node::PHYSICAL_DEVICE_PATH, &params);
    let old_seq = diskseq::DiskSeq::new(held.id().seq.get() - 1).unwrap();
    bed.write(&stale, node::DISKSEQ, &old_seq.to_xenstore());
    let fresh = bed.libxl_add(6, 768, params.as_bytes(), "w");
    bed.run("add", &fresh, &[]).assert_ok();
    // Without a diskseq the record may be about this instance: it counts.
    bed.rm(&stale, node::DISKSEQ);
    let other = bed.libxl_add(7, 768, params.as_bytes(), "r");
    bed.run("add", &other, &[]).assert_failed();
    assert_busy(&bed, &other, "domain");
}

/// Xen's stock `block` script misses a file already attached read-write in
/// the host (it matches losetup's decimal device number as hex). Here the
/// kernel's st_dev/st_ino of every bound loop device is compared.
#[test]
fn stock_shared_file_bug_does_not_reproduce() {
    if !require_root("stock_shared_file_bug_does_not_reproduce") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("host-rw.img", 4);
    let host = image.attach_held(true);
    for mode in ["w", "r"] {
        let backend = bed.libxl_add(5, 768, image.path_bytes(), mode);
        bed.run("add", &backend, &[]).assert_failed();
        assert_busy(
            &bed,
            &backend,
            &format!(
                "attached read-write in the host as {}",
                host.path().display()
            ),
        );
        bed.client().rm(&backend.dir()).unwrap();
    }
    assert_eq!(image.loops().len(), 1);
    // A read-only host attachment admits read-only guests only.
    drop(host);
    assert_no_loops(&image);
    let host_ro = image.attach_held(false);
    let reader = bed.libxl_add(6, 768, image.path_bytes(), "r");
    bed.run("add", &reader, &[]).assert_ok();
    let writer = bed.libxl_add(7, 768, image.path_bytes(), "w");
    bed.run("add", &writer, &[]).assert_failed();
    assert_busy(&bed, &writer, "");
    bed.run("remove", &reader, &[]).assert_ok();
    drop(host_ro);
    assert_no_loops(&image);
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn host_mounts_of_an_ext4_image_block_writers_and_rw_mounts_block_readers() {
    if !require_root("host_mounts_of_an_ext4_image_block_writers_and_rw_mounts_block_readers") {
        return;
    }
    if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        if std::env::var_os("DISKSEQ_REQUIRE_ALL").is_some_and(|v| v == "1") {
            panic!("mkfs.ext4 missing (scripts/install-deps installs e2fsprogs)");
        }
        eprintln!("skipped: mkfs.ext4 not installed");
        return;
    }
    let bed = Bed::new();
    let image = bed.image("fs.img", 16);
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image.path)
        .status()
        .unwrap();
    assert!(ok.success());
    let dev = image.attach_held(true);
    let params = dev.path().display().to_string();
    let mnt = bed.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    for (fe, (mount_opts, mode, allowed)) in [
        ("rw", "r", false),
        ("rw", "w", false),
        ("ro", "r", true),
        ("ro", "w", false),
    ]
    .into_iter()
    .enumerate()
    {
        let status = Command::new("mount")
            .args(["-t", "ext4", "-o", mount_opts])
            .arg(&params)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(status.success(), "mount -o {mount_opts}");
        let mounted = Mounted(mnt.clone());
        let backend = bed.libxl_add(50 + fe as u32, 768, params.as_bytes(), mode);
        let run = bed.run("add", &backend, &[]);
        let case = format!("host mount {mount_opts}, guest {mode}");
        if allowed {
            run.assert_ok();
            bed.run("remove", &backend, &[]).assert_ok();
        } else {
            assert_eq!(run.code, Some(1), "{case}: {run:?}");
            let how = if mount_opts == "rw" {
                "read-write"
            } else {
                "read-only"
            };
            assert_busy(
                &bed,
                &backend,
                &format!("is mounted {how} in the host at {}", mnt.display()),
            );
        }
        // By file, the mounted loop device itself is in the way: it is
        // attached read-write in the host, whatever the mount says.
        let via_file = bed.libxl_add(70 + fe as u32, 768, image.path_bytes(), mode);
        bed.run("add", &via_file, &[]).assert_failed();
        assert_busy(&bed, &via_file, " in the host ");
        drop(mounted);
    }
    // `!` waives even a read-write host mount.
    let status = Command::new("mount")
        .arg(&params)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success());
    let mounted = Mounted(mnt.clone());
    let waived = bed.libxl_add(90, 768, params.as_bytes(), "w!");
    bed.run("add", &waived, &[]).assert_ok();
    bed.run("remove", &waived, &[]).assert_ok();
    drop(mounted);
    drop(dev);
    assert_no_loops(&image);
}

/// No global lock, yet concurrent read-write adds of one disk by different
/// guests never both win: for files the later attacher sees the earlier
/// loop device; for block devices the publishing transaction conflicts.
#[test]
fn concurrent_read_write_adds_of_one_disk_admit_at_most_one() {
    if !require_root("concurrent_read_write_adds_of_one_disk_admit_at_most_one") {
        return;
    }
    const GUESTS: u32 = 8;
    let bed = Bed::new();
    let image = bed.image("race.img", 4);
    let held = image.attach_held(true);
    let device_path = held.path().display().to_string();
    for (round, params) in [image.path_bytes().to_vec(), device_path.into_bytes()]
        .into_iter()
        .enumerate()
    {
        let backends: Vec<BackendPath> = (0..GUESTS)
            .map(|i| bed.libxl_add(200 + 10 * round as u32 + i, 768, &params, "w"))
            .collect();
        let children: Vec<_> = backends
            .iter()
            .map(|b| {
                bed.script_command("add", b, &[])
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let codes: Vec<Option<i32>> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap().status.code())
            .collect();
        let winners: Vec<&BackendPath> = backends
            .iter()
            .zip(&codes)
            .filter(|(_, c)| **c == Some(0))
            .map(|(b, _)| b)
            .collect();
        assert!(
            winners.len() <= 1,
            "round {round}: several read-write users: {winners:?} ({codes:?})"
        );
        if round == 1 {
            // No loop devices to race on: the first commit wins, the rest
            // conflict, retry and see it.
            assert_eq!(
                winners.len(),
                1,
                "block device: exactly one winner ({codes:?})"
            );
        }
        for (backend, code) in backends.iter().zip(&codes) {
            if *code != Some(0) {
                assert_eq!(*code, Some(1), "round {round}");
                assert_eq!(
                    bed.read(backend, node::HOTPLUG_STATUS).as_deref(),
                    Some("busy"),
                    "round {round}: {:?}",
                    bed.read(backend, node::HOTPLUG_ERROR)
                );
            }
        }
        for backend in &backends {
            bed.run("remove", backend, &[]).assert_ok();
        }
    }
    drop(held);
    assert_no_loops(&image);
}
