//! Targets named for good: `/dev/disk/by-diskseq/<N>[-part<P>]` resolved by
//! sequence number whether or not udev made the link (this host has no
//! udev), and partitions published with where they lie on their disk.

use diskseq::PartitionExtent;
use testbed::require_root;
use vbd::schema::{node, partition_from_node};

use crate::support::*;

const MIB: u64 = 1 << 20;

#[test]
fn a_pinned_partition_is_published_with_its_extent() {
    if !require_root("a_pinned_partition_is_published_with_its_extent") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("partitioned.img", 4);
    let disk = testbed::loops::attach_partitioned(&image.path, &[(MIB, MIB)]);
    let params = format!("/dev/disk/by-diskseq/{}-part1", disk.id().seq);
    assert!(
        !std::path::Path::new("/dev/disk/by-diskseq").exists(),
        "this test means a host without udev's links"
    );
    let backend = bed.libxl_add(5, 768, params.as_bytes(), "w");
    bed.run("add", &backend, &[]).assert_ok();

    let record = record(&bed, &backend);
    assert_eq!(record.diskseq, Some(disk.id().seq), "the disk's diskseq");
    assert_ne!(
        record.physical_device,
        disk.id().dev(),
        "the partition's number"
    );
    let extent = PartitionExtent {
        number: 1,
        start: MIB / 512,
        sectors: MIB / 512,
    };
    assert_eq!(record.partition, Some(extent));
    let raw = bed.read(&backend, node::PARTITION).unwrap();
    assert_eq!(raw, "1:800:800");
    assert_eq!(partition_from_node(raw.as_bytes()).unwrap(), extent);

    bed.run("remove", &backend, &[]).assert_ok();
    assert_eq!(bed.read(&backend, node::PARTITION), None, "withdrawn");
    assert_eq!(bed.read(&backend, node::PHYSICAL_DEVICE), None);
    drop(disk);
}

#[test]
fn a_whole_disk_has_no_partition_node_and_a_stale_pin_is_refused() {
    if !require_root("a_whole_disk_has_no_partition_node_and_a_stale_pin_is_refused") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("whole.img", 4);
    let disk = image.attach_held(true);
    let seq = disk.id().seq;

    let whole = bed.libxl_add(
        5,
        768,
        format!("/dev/disk/by-diskseq/{seq}").as_bytes(),
        "r",
    );
    bed.run("add", &whole, &[]).assert_ok();
    assert_eq!(record(&bed, &whole).physical_device, disk.id().dev());
    assert_eq!(bed.read(&whole, node::PARTITION), None);
    bed.run("remove", &whole, &[]).assert_ok();

    // A partition the disk does not have.
    let missing = bed.libxl_add(
        5,
        832,
        format!("/dev/disk/by-diskseq/{seq}-part3").as_bytes(),
        "r",
    );
    bed.run("add", &missing, &[]).assert_failed();
    let error = bed.read(&missing, node::HOTPLUG_ERROR).unwrap();
    assert!(error.contains("has no partition 3"), "{error}");

    // The disk is gone: its number is never another disk's.
    drop(disk);
    let stale = bed.libxl_add(
        5,
        848,
        format!("/dev/disk/by-diskseq/{seq}").as_bytes(),
        "r",
    );
    bed.run("add", &stale, &[]).assert_failed();
    let error = bed.read(&stale, node::HOTPLUG_ERROR).unwrap();
    assert!(
        error.contains(&format!("no disk has diskseq {seq} any more")),
        "{error}"
    );
    assert_eq!(bed.read(&stale, node::PHYSICAL_DEVICE), None);
}

/// The host stacked a device on the disk (an LVM volume group on it: its
/// LVs show in the disk's sysfs `holders/`), so the script refuses to hand
/// the disk to a guest, even read-only. This host has no device-mapper: a
/// stand-in sysfs gives the disk a holder (real dm: `tests/xen`).
#[test]
fn a_disk_the_host_stacked_a_device_on_is_refused() {
    if !require_root("a_disk_the_host_stacked_a_device_on_is_refused") {
        return;
    }
    let bed = Bed::new();
    let image = bed.image("pv.img", 4);
    let disk = image.attach_held(true);
    // The stand-in sysfs: the disk's real directory, with a holder.
    let dev = disk.id().dev();
    let real = std::fs::canonicalize(format!("/sys/dev/block/{dev}")).unwrap();
    let fake = bed.dir.path().join("fake-disk");
    std::fs::create_dir_all(fake.join("holders")).unwrap();
    std::fs::write(fake.join("dev"), std::fs::read(real.join("dev")).unwrap()).unwrap();
    std::os::unix::fs::symlink("../../dm-7", fake.join("holders/dm-7")).unwrap();
    let backend = bed.libxl_add(5, 768, disk.path().to_str().unwrap().as_bytes(), "r");
    let sysfs = bed.dir.path().join("sys-stacked");
    std::fs::create_dir_all(sysfs.join("dev/block")).unwrap();
    std::fs::create_dir_all(sysfs.join("bus/xen-backend/devices")).unwrap();
    std::os::unix::fs::symlink(&fake, sysfs.join(format!("dev/block/{dev}"))).unwrap();
    let run = bed.run(
        "add",
        &backend,
        &[("BLOCK_DISKSEQ_SYSFS", sysfs.to_str().unwrap())],
    );
    run.assert_failed();
    let error = bed.read(&backend, node::HOTPLUG_ERROR).unwrap();
    assert!(
        error.contains(&format!("device {dev} is held in the host by dm-7")),
        "{error}"
    );
    drop(disk);
}
