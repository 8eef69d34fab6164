//! Loop devices on the real kernel: attach, verify, detach, stale detection,
//! partitions, concurrency, autoclear and kill safety. Every device a test
//! creates is autoclear or detached by identity in a guard.

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};

use diskseq::{
    detach_verified, ioctl, list_loops, loop_info, open_by_diskseq, open_verified, Access,
    BlockDevice, DevNum, DiskId, DiskSeq, Error, FileId, LoopDevice, LoopOptions, PartitionExtent,
    PersistError, PinnedPath,
};
use testbed::images::{read_at, Backing};
use testbed::loops::{autoclear, eventually, wait_gone, DetachOnDrop};
use testbed::race::reuse_minor;
use testbed::require_root;

const MIB: u64 = 1 << 20;

/// Soon, no bound loop device is backed by `file`.
#[track_caller]
fn assert_no_loop_backed_by(file: FileId) {
    eventually(&format!("no loop device is bound to {file}"), || {
        list_loops()
            .unwrap()
            .iter()
            .all(|info| info.backing != file)
    });
}

#[test]
fn attach_verify_detach() {
    if !require_root("attach_verify_detach") {
        return;
    }
    let backing = Backing::new(MIB, 0xa5);
    let device = LoopDevice::attach(backing.fd(), &LoopOptions::default()).unwrap();
    let id = device.id();
    let _guard = DetachOnDrop(id);

    assert_eq!(id.major, diskseq::LOOP_MAJOR);
    assert_eq!(device.path(), Path::new(&format!("/dev/loop{}", id.minor)));
    assert_eq!(device.backing(), backing.id());
    let block = device.block_device();
    assert_eq!(block.size_bytes(), MIB);
    assert_eq!(block.logical_block_size(), 512);
    assert!(block.physical_block_size() >= 512);
    assert!(!block.read_only());
    assert_eq!(block.partition(), None);
    assert_eq!(block.current_seq().unwrap(), id.seq);
    assert_eq!(read_at(&device, 4096, 16), vec![0xa5; 16]);

    let info = loop_info(block).unwrap().expect("bound loop device");
    assert_eq!(info.id, id);
    assert_eq!(info.backing, backing.id());
    assert_eq!(info.backing_file.as_deref(), Some(backing.path()));
    assert!(!info.autoclear && !info.read_only);

    // The kernel's sysfs view agrees with the fd.
    let sysfs_seq =
        std::fs::read_to_string(format!("/sys/block/loop{}/diskseq", id.minor)).unwrap();
    assert_eq!(sysfs_seq.trim(), id.seq.to_string());

    let reopened = open_verified(id, Access::ReadOnly).unwrap();
    assert_eq!(reopened.id(), id);
    reopened.verify(&id).unwrap();
    drop(reopened);

    // Not autoclear: closing our fd leaves it bound.
    drop(device);
    let still = open_verified(id, Access::ReadOnly).unwrap();
    assert!(loop_info(&still).unwrap().is_some());
    drop(still);

    detach_verified(&id, Some(backing.id())).unwrap();
    wait_gone(id);
    match open_verified(id, Access::ReadOnly) {
        Err(Error::Stale { expected, found }) => {
            assert_eq!(expected, id);
            assert_eq!(found.dev(), id.dev());
            assert!(found.seq > id.seq);
        }
        other => panic!("expected Stale after detach, got {other:?}"),
    }
    assert_no_loop_backed_by(backing.id());
}

#[test]
fn diskseq_changes_per_attach_and_detach() {
    if !require_root("diskseq_changes_per_attach_and_detach") {
        return;
    }
    let a = Backing::new(MIB, 1);
    let b = Backing::new(MIB, 2);
    let (old, new) = reuse_minor(a.fd(), b.fd());
    // +1 at detach, +1 at attach (other processes can only add to that).
    let step = new.id().seq.get() - old.seq.get();
    assert!(step >= 2, "diskseq went {old} -> {}", new.id());
    if step != 2 {
        eprintln!(
            "note: loop{} changed {step} times in between (another process)",
            old.minor
        );
    }

    // Detach bumps it again: the unbound device no longer shows the instance's value.
    let id = new.id();
    drop(new);
    let path = format!("/dev/loop{}", id.minor);
    eventually(&format!("{path} moves past {id}"), || {
        let after = BlockDevice::open(Path::new(&path), Access::ReadOnly).unwrap();
        after.current_seq().unwrap() > id.seq
    });
}

#[test]
fn stale_instance_is_refused() {
    if !require_root("stale_instance_is_refused") {
        return;
    }
    let a = Backing::new(MIB, 1);
    let b = Backing::new(MIB, 2);
    let (old, new) = reuse_minor(a.fd(), b.fd());
    assert_eq!(old.dev(), new.id().dev());

    match open_verified(old, Access::ReadOnly) {
        Err(err @ Error::Stale { .. }) => {
            assert!(err.is_stale());
            let Error::Stale { expected, found } = err else {
                unreachable!()
            };
            assert_eq!(expected, old);
            assert_eq!(found, new.id());
        }
        other => panic!("expected Stale, got {other:?}"),
    }
    match detach_verified(&old, None) {
        Err(err @ Error::Stale { .. }) => assert!(err.is_stale()),
        other => panic!("expected Stale, got {other:?}"),
    }
    // Right instance, wrong backing file recorded: also refused.
    match detach_verified(&new.id(), Some(a.id())) {
        Err(err @ Error::WrongBacking { .. }) => assert!(err.is_stale()),
        other => panic!("expected WrongBacking, got {other:?}"),
    }
    // Right seq, wrong number.
    let elsewhere = DiskId::new(
        DevNum::new(new.id().major, new.id().minor + 1),
        new.id().seq,
    );
    assert!(detach_verified(&elsewhere, None).is_err());

    // None of that touched the device.
    let info = loop_info(new.block_device()).unwrap().expect("still bound");
    assert_eq!(info.backing, b.id());
    assert_eq!(new.block_device().current_seq().unwrap(), new.id().seq);
    assert_eq!(read_at(&new, 0, 4), vec![2; 4]);
}

#[test]
fn open_by_diskseq_finds_and_refuses_stale() {
    if !require_root("open_by_diskseq_finds_and_refuses_stale") {
        return;
    }
    let backing = Backing::new(MIB, 7);
    let device = LoopDevice::attach(backing.fd(), &autoclear()).unwrap();
    let id = device.id();

    let found = open_by_diskseq(id.seq, None, Access::ReadOnly).unwrap();
    assert_eq!(found.id(), id);
    assert_eq!(read_at(&found, 0, 4), vec![7; 4]);
    drop(found);
    drop(device);
    wait_gone(id);

    match open_by_diskseq(id.seq, None, Access::ReadOnly) {
        Err(err @ Error::NoSuchDiskSeq { .. }) => assert!(err.is_stale()),
        other => panic!("expected NoSuchDiskSeq, got {other:?}"),
    }
    let never = DiskSeq::new(u64::MAX - 1).unwrap();
    assert!(matches!(
        open_by_diskseq(never, None, Access::ReadOnly),
        Err(Error::NoSuchDiskSeq { .. })
    ));
}

/// `(number, diskseq)` names a partition's disk, not the partition: a table
/// rewritten on the same disk puts another extent under the same number and
/// diskseq. The extent tells them apart, and while a partition is held open
/// the kernel refuses to delete it (EBUSY) or move it (EINVAL; only its
/// size may change) — measured here, the basis of reading `start` from
/// sysfs on a held fd.
#[test]
fn a_rewritten_partition_keeps_number_and_diskseq_but_not_its_extent() {
    if !require_root("a_rewritten_partition_keeps_number_and_diskseq_but_not_its_extent") {
        return;
    }
    let backing = Backing::new(4 * MIB, 0);
    let opts = LoopOptions {
        partscan: true,
        ..autoclear()
    };
    let disk = LoopDevice::attach(backing.fd(), &opts).unwrap();
    ioctl::add_partition(disk.as_fd(), 1, MIB, MIB).unwrap();
    let pinned = PinnedPath::parse(Path::new(&format!(
        "/dev/disk/by-diskseq/{}-part1",
        disk.id().seq
    )))
    .unwrap();
    let first = pinned.open(Access::ReadOnly).unwrap();
    let first_extent = PartitionExtent {
        number: 1,
        start: MIB / 512,
        sectors: MIB / 512,
    };
    assert_eq!(first.partition_extent().unwrap(), Some(first_extent));
    assert_eq!(disk.block_device().partition_extent().unwrap(), None);

    let busy = ioctl::delete_partition(disk.as_fd(), 1).unwrap_err();
    assert_eq!(
        busy.raw_os_error(),
        Some(rustix::io::Errno::BUSY.raw_os_error()),
        "{busy}"
    );
    let first_id = first.id();
    drop(first);

    ioctl::delete_partition(disk.as_fd(), 1).unwrap();
    ioctl::add_partition(disk.as_fd(), 1, 2 * MIB, MIB).unwrap();
    let second = pinned.open(Access::ReadOnly).unwrap();
    assert_eq!(
        second.id().seq,
        first_id.seq,
        "the disk's diskseq, unchanged"
    );
    let second_extent = second.partition_extent().unwrap().unwrap();
    assert_eq!(second_extent.number, 1);
    assert_ne!(second_extent, first_extent, "another extent");
    drop(second);
    drop(disk);

    // A pinned name whose disk is gone opens nothing, never another disk.
    assert!(matches!(
        pinned.open(Access::ReadOnly),
        Err(Error::NoSuchDiskSeq { .. } | Error::NoSuchPartition { .. })
    ));
}

#[test]
fn partitions_carry_the_disk_seq() {
    if !require_root("partitions_carry_the_disk_seq") {
        return;
    }
    let backing = Backing::new(2 * MIB, 0);
    let opts = LoopOptions {
        partscan: true,
        ..autoclear()
    };
    let device = LoopDevice::attach(backing.fd(), &opts).unwrap();
    let id = device.id();
    ioctl::add_partition(device.as_fd(), 1, MIB, MIB / 2).unwrap();

    let part = open_by_diskseq(id.seq, Some(1), Access::ReadWrite).unwrap();
    assert_eq!(part.partition(), Some(1));
    assert_eq!(
        part.id().seq,
        id.seq,
        "a partition reports its disk's diskseq"
    );
    assert_ne!(part.dev(), id.dev());
    assert_eq!(part.size_bytes(), MIB / 2);
    assert!(
        loop_info(&part).unwrap().is_none(),
        "a partition is not a loop device"
    );

    // Writes through the partition land at its offset in the backing file.
    rustix::io::pwrite(&part, &[0x5a; 512], 0).unwrap();
    rustix::fs::fsync(&part).unwrap();
    assert_eq!(read_at(backing.file.as_file(), MIB, 4), vec![0x5a; 4]);

    let by_path = BlockDevice::open(
        Path::new(&format!("/dev/loop{}p1", id.minor)),
        Access::ReadOnly,
    )
    .unwrap();
    assert_eq!(by_path.id(), part.id());

    assert!(matches!(
        detach_verified(&part.id(), None),
        Err(Error::NotLoop { .. })
    ));
    assert!(matches!(
        open_by_diskseq(id.seq, Some(2), Access::ReadOnly),
        Err(Error::NoSuchPartition { partition: 2, .. })
    ));
    let part_dev = part.dev();
    drop(by_path);
    drop(part);
    drop(device);
    // Partitions vanish with the disk. (The number may be reused at once by
    // another disk's partition; then it carries another diskseq.)
    eventually(
        &format!("partition {part_dev} of {id} vanishes"),
        || match std::fs::read_to_string(format!("/sys/dev/block/{part_dev}/uevent")) {
            Err(_) => true,
            Ok(uevent) => !uevent.contains(&format!("DISKSEQ={}\n", id.seq)),
        },
    );
}

#[test]
fn sixteen_threads_attach_distinct_devices() {
    if !require_root("sixteen_threads_attach_distinct_devices") {
        return;
    }
    const THREADS: usize = 16;
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|n| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let backing = Backing::new(64 * 1024, n as u8);
                barrier.wait();
                let device = LoopDevice::attach(backing.fd(), &autoclear()).unwrap();
                let info = loop_info(device.block_device()).unwrap().expect("bound");
                assert_eq!(info.backing, backing.id(), "thread {n} got another file");
                assert_eq!(read_at(&device, 0, 8), vec![n as u8; 8]);
                (backing, device)
            })
        })
        .collect();
    let attached: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut devs: Vec<_> = attached.iter().map(|(_, d)| d.id().dev()).collect();
    let mut seqs: Vec<_> = attached.iter().map(|(_, d)| d.id().seq).collect();
    devs.sort();
    devs.dedup();
    seqs.sort();
    seqs.dedup();
    assert_eq!(devs.len(), THREADS, "two threads share a device");
    assert_eq!(seqs.len(), THREADS);
    let ids: Vec<_> = attached.iter().map(|(b, _)| b.id()).collect();
    drop(attached);
    for id in ids {
        assert_no_loop_backed_by(id);
    }
}

#[test]
fn autoclear_releases_on_drop() {
    if !require_root("autoclear_releases_on_drop") {
        return;
    }
    let backing = Backing::new(MIB, 3);
    let device = LoopDevice::attach(backing.fd(), &autoclear()).unwrap();
    let id = device.id();
    assert!(loop_info(device.block_device()).unwrap().unwrap().autoclear);
    drop(device);
    wait_gone(id);
    assert_no_loop_backed_by(backing.id());
}

#[test]
fn persistent_attach_survives_close_and_failed_record_leaks_nothing() {
    if !require_root("persistent_attach_survives_close_and_failed_record_leaks_nothing") {
        return;
    }
    let backing = Backing::new(MIB, 4);
    let mut recorded = None;
    let device = LoopDevice::attach_persistent(backing.fd(), &LoopOptions::default(), |d| {
        // At record time the device is still autoclear: a crash here leaks nothing.
        assert!(loop_info(d.block_device()).unwrap().unwrap().autoclear);
        recorded = Some(d.id());
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    let id = device.id();
    let _guard = DetachOnDrop(id);
    assert_eq!(recorded, Some(id));
    drop(device);
    let reopened = open_verified(id, Access::ReadOnly).unwrap();
    assert!(!loop_info(&reopened).unwrap().expect("persists").autoclear);
    drop(reopened);
    detach_verified(&id, Some(backing.id())).unwrap();

    let mut failed_id = None;
    let result = LoopDevice::attach_persistent(backing.fd(), &LoopOptions::default(), |d| {
        failed_id = Some(d.id());
        Err(std::io::Error::other("disk full"))
    });
    assert!(matches!(result, Err(PersistError::Record(_))));
    wait_gone(failed_id.unwrap());
    assert_no_loop_backed_by(backing.id());
}

/// Not a test on its own: the child process of `killed_between_configure_and_record_leaks_nothing`.
/// Attaches persistently and, inside `record`, reports the device and waits to be killed.
#[test]
#[ignore = "run only as the child of killed_between_configure_and_record_leaks_nothing"]
fn kill_child() {
    let Ok(path) = std::env::var("DISKSEQ_KILL_CHILD_BACKING") else {
        eprintln!(
            "kill_child: nothing to do outside killed_between_configure_and_record_leaks_nothing"
        );
        return;
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let _ = LoopDevice::attach_persistent(
        file.as_fd(),
        &LoopOptions::default(),
        |d| -> Result<(), std::io::Error> {
            let id = d.id();
            println!("ATTACHED {} {} {}", id.major, id.minor, id.seq);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        },
    );
    unreachable!("record never returns");
}

#[test]
fn killed_between_configure_and_record_leaks_nothing() {
    if !require_root("killed_between_configure_and_record_leaks_nothing") {
        return;
    }
    let backing = Backing::new(MIB, 5);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "loop_devices::kill_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DISKSEQ_KILL_CHILD_BACKING", backing.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let id = loop {
        let line = lines
            .next()
            .expect("child exited before attaching")
            .unwrap();
        // The harness may have printed "test kill_child ... " on the same line.
        if let Some((_, rest)) = line.split_once("ATTACHED ") {
            let parts: Vec<u64> = rest.split(' ').map(|p| p.parse().unwrap()).collect();
            break DiskId::new(
                DevNum::new(parts[0] as u32, parts[1] as u32),
                DiskSeq::new(parts[2]).unwrap(),
            );
        }
    };
    // The child is inside `record`: configured, autoclear, not yet persistent.
    let held = open_verified(id, Access::ReadOnly).unwrap();
    let info = loop_info(&held)
        .unwrap()
        .expect("bound while the child lives");
    assert!(info.autoclear);
    assert_eq!(info.backing, backing.id());
    drop(held);

    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "child was not SIGKILLed: {status:?}"
    );

    wait_gone(id);
    assert_no_loop_backed_by(backing.id());
}

#[test]
fn read_only_loop_refuses_writes() {
    if !require_root("read_only_loop_refuses_writes") {
        return;
    }
    let backing = Backing::new(MIB, 6);
    let read_only_file = backing.open_read_only();
    let opts = LoopOptions {
        read_only: true,
        ..autoclear()
    };
    let device = LoopDevice::attach(read_only_file.as_fd(), &opts).unwrap();
    assert!(device.block_device().read_only());
    assert!(loop_info(device.block_device()).unwrap().unwrap().read_only);
    match open_verified(device.id(), Access::ReadWrite) {
        Err(Error::ReadOnly { dev, .. }) => assert_eq!(dev, device.id().dev()),
        other => panic!("read-write open of a read-only loop device: {other:?}"),
    }
    // The kernel itself lets a writer open it, and refuses the write.
    let raw = rustix::fs::open(
        device.path(),
        rustix::fs::OFlags::RDWR,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let write = rustix::io::pwrite(&raw, &[0u8; 512], 0);
    assert_eq!(write, Err(rustix::io::Errno::PERM));
    drop(raw);
    assert_eq!(read_at(&device, 0, 4), vec![6; 4]);
    assert_eq!(read_at(backing.file.as_file(), 0, 4), vec![6; 4]);

    // A writable device from a read-only fd would silently become read-only: refused.
    match LoopDevice::attach(read_only_file.as_fd(), &autoclear()) {
        Err(Error::BackingNotWritable { backing: b }) => assert_eq!(b, backing.id()),
        other => panic!("expected BackingNotWritable, got {other:?}"),
    }
}

#[test]
fn options_are_applied_and_verified() {
    if !require_root("options_are_applied_and_verified") {
        return;
    }
    let backing = Backing::new(MIB, 8);
    let opts = LoopOptions {
        direct_io: true,
        block_size: Some(4096),
        offset: 64 * 1024,
        size_limit: 256 * 1024,
        ..autoclear()
    };
    let device = LoopDevice::attach(backing.fd(), &opts).unwrap();
    let block = device.block_device();
    assert_eq!(block.logical_block_size(), 4096);
    assert_eq!(block.size_bytes(), 256 * 1024);
    let info = loop_info(block).unwrap().unwrap();
    assert!(info.direct_io && info.autoclear);
    assert_eq!((info.offset, info.size_limit), (64 * 1024, 256 * 1024));
    assert_eq!(read_at(&device, 0, 4096), vec![8; 4096]);

    let bad = LoopOptions {
        block_size: Some(1000),
        ..autoclear()
    };
    assert!(matches!(
        LoopDevice::attach(backing.fd(), &bad),
        Err(Error::InvalidOption(_))
    ));
}

#[test]
fn list_devices_shows_bound_loop() {
    if !require_root("list_devices_shows_bound_loop") {
        return;
    }
    let backing = Backing::new(MIB, 9);
    let device = LoopDevice::attach(backing.fd(), &autoclear()).unwrap();
    let id = device.id();
    let entry = diskseq::list_devices()
        .unwrap()
        .into_iter()
        .find(|e| e.dev == id.dev())
        .expect("listed");
    assert_eq!(entry.kind, diskseq::DeviceKind::Loop);
    assert_eq!(entry.seq, Some(id.seq));
    assert_eq!(entry.size_bytes, MIB);
    assert_eq!(entry.loop_backing.as_deref(), Some(backing.path()));
    let listed = list_loops().unwrap();
    let info = listed.iter().find(|i| i.id == id).expect("in list_loops");
    assert_eq!(info.backing, backing.id());
}
