//! The backend against our xenstored and real loop devices: verified
//! connect, the race refused, legacy records, malformed records, guest
//! permissions, removal and restart. The script's part (publishing the
//! record) is played by the test so each window can be controlled.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use diskseq::LoopDevice;
use testbed::images::read_at;
use testbed::loops::attach_loop;
use testbed::loops::image_attached;
use testbed::loops::wait_detached;
use testbed::race::rebind_same_minor;
use testbed::require_root;
use vbd::schema::{node, BackendPath, Mode, XenbusState};
use xen_sim::backend::{BackendConfig, BeforeOpen, DiskseqPolicy, OpenMethod};
use xen_sim::toolstack::{DeviceType, DiskSpec, Toolstack};
use xenstore::client::Client;
use xenstore::wire::Errno;

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(10);

/// Writes the toolstack's dirs for guest `fe`, device `devid`.
fn create(env: &Env, fe: u32, devid: u32, mode: Mode) -> BackendPath {
    let toolstack = Toolstack::new(Some(env.socket()));
    let spec = DiskSpec {
        frontend_domid: fe,
        backend_domid: 0,
        vdev: xen_sim::toolstack::Vdev::from_devid(devid),
        target: PathBuf::from("/nonexistent/played-by-the-test"),
        mode,
        device_type: DeviceType::Disk,
        script: PathBuf::from("/bin/false"),
        discard_enable: true,
    };
    let mut client = env.dom0();
    toolstack
        .create(&mut client, &spec)
        .expect("create dirs")
        .backend
}

fn publish_loop(client: &mut Client, path: &BackendPath, dev: &LoopDevice) {
    let id = dev.id();
    publish(
        client,
        path,
        &id.dev().to_xenstore(),
        Some(&id.seq.to_xenstore()),
        dev.path(),
    );
}

fn error_node(client: &mut Client, path: &BackendPath) -> Option<String> {
    read(client, &path.error_node(0))
}

#[test]
fn verified_device_connects_and_is_held_until_removed() {
    if !require_root("verified_device_connects_and_is_held_until_removed") {
        return;
    }
    let env = Env::new(&[1]);
    let backend = env.start_backend(env.backend_config(0));
    let guest = env.start_frontend(1);
    let image = env.image("a.img", "IMAGE-A", 4 * MIB);
    let mut xs = env.dom0();
    let path = create(&env, 1, 51712, Mode::ReadWrite);
    wait_backend_state(&mut xs, &path, XenbusState::InitWait);
    assert_eq!(
        read(&mut xs, &path.node(node::OPENED)).as_deref(),
        Some("0")
    );
    assert_eq!(
        read(&mut xs, &path.node(node::FEATURE_MAX_INDIRECT_SEGMENTS)).as_deref(),
        Some("256")
    );
    assert_eq!(
        read(&mut xs, &path.node(node::MAX_RING_PAGE_ORDER)).as_deref(),
        Some("4")
    );

    let dev = attach_loop(&image, false);
    let id = dev.id();
    publish_loop(&mut xs, &path, &dev);
    wait_backend_state(&mut xs, &path, XenbusState::Connected);
    let view = guest
        .wait_state(51712, XenbusState::Connected, WAIT)
        .expect("guest connected");
    let disk = view.disk.expect("guest disk");
    assert_eq!(disk.sectors, 4 * MIB / 512);
    assert!(!disk.read_only());
    assert_eq!(
        read(&mut xs, &path.node(node::OPENED)).as_deref(),
        Some("1")
    );
    assert_eq!(
        read(&mut xs, &path.node(node::SECTORS)),
        Some((4 * MIB / 512).to_string())
    );
    assert_eq!(read(&mut xs, &path.node(node::INFO)).as_deref(), Some("0"));
    assert_eq!(
        read(&mut xs, &path.node(node::SECTOR_SIZE)).as_deref(),
        Some("512")
    );
    assert_eq!(error_node(&mut xs, &path), None, "{}", env.backend_log());

    // The backend holds this very instance, and reads image A through it.
    let held = backend.held_disks();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].id, id);
    let bytes = backend
        .with_held_disk(&path, |disk| read_at(disk, 0, 7))
        .expect("held");
    assert_eq!(bytes, b"IMAGE-A");

    // Our fd goes; the backend's keeps the binding alive.
    drop(dev);
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        image_attached(&image),
        "backend fd must pin the loop device"
    );

    // Removing the dirs makes the backend release: autoclear detaches.
    xs.rm(&path.dir()).expect("rm backend dir");
    xs.rm("/local/domain/1/device/vbd/51712")
        .expect("rm frontend dir");
    wait_detached(&image);
    assert!(backend.held_disks().is_empty());
    backend.stop().expect("backend stopped cleanly");
    guest.stop().expect("frontend stopped cleanly");
}

#[test]
fn open_by_diskseq_connects_read_only() {
    if !require_root("open_by_diskseq_connects_read_only") {
        return;
    }
    let env = Env::new(&[2]);
    let mut config = env.backend_config(0);
    config.open_method = OpenMethod::ByDiskseq;
    let backend = env.start_backend(config);
    let guest = env.start_frontend(2);
    let image = env.image("ro.img", "READ-ONLY", 2 * MIB);
    let mut xs = env.dom0();
    let path = create(&env, 2, 51728, Mode::ReadOnly);
    wait_backend_state(&mut xs, &path, XenbusState::InitWait);
    let dev = attach_loop(&image, true);
    publish_loop(&mut xs, &path, &dev);
    let view = guest
        .wait_state(51728, XenbusState::Connected, WAIT)
        .expect("connected");
    assert!(view.disk.expect("disk").read_only());
    assert_eq!(backend.held_disks()[0].id, dev.id());
    drop(dev);
    xs.rm(&path.dir()).unwrap();
    wait_detached(&image);
}

/// The race's two devices: the one published (moved in by the test), and
/// the one the hook bound on its minor.
type SwapSlot = Arc<Mutex<(Option<LoopDevice>, Option<LoopDevice>)>>;

/// A hook for the backend's window between reading the record and opening
/// the device: when the slot holds the published device, let it go (its fd
/// is the last one: autoclear detaches it) and bind `image` on its minor.
fn swap_hook(slot: &SwapSlot, image: &Path) -> BeforeOpen {
    let slot = Arc::clone(slot);
    let image = image.to_owned();
    Arc::new(move |_path, request| {
        let mut slot = slot.lock().unwrap();
        if let Some(published) = slot.0.take() {
            assert_eq!(published.id().dev(), request.dev);
            slot.1 = Some(rebind_same_minor(published, &image).expect("swap"));
        }
        Ok(())
    })
}

/// The race the patch closes: between the publish and the open, the loop
/// device is detached and another image is bound on the same minor. The
/// hook runs in exactly that window, on every one of many attempts, with
/// both ways of opening.
#[test]
fn the_reused_minor_is_refused_every_time() {
    if !require_root("the_reused_minor_is_refused_every_time") {
        return;
    }
    let env = Env::new(&[3]);
    let image_a = env.image("a.img", "IMAGE-A", MIB);
    let image_b = env.image("b.img", "IMAGE-B", MIB);
    // The test's loop devices, moved into the hook's slot for the swap.
    let slot = SwapSlot::default();
    for method in [OpenMethod::ByNumber, OpenMethod::ByDiskseq] {
        let mut config = env.backend_config(0);
        config.open_method = method;
        config.before_open = Some(swap_hook(&slot, &image_b));
        let backend = env.start_backend(config);
        let _guest = env.start_frontend(3);
        let mut xs = env.dom0();
        for round in 0..8 {
            let devid = 51712 + round * 16;
            let path = create(&env, 3, devid, Mode::ReadWrite);
            wait_backend_state(&mut xs, &path, XenbusState::InitWait);
            let a = attach_loop(&image_a, false);
            let published = a.id();
            slot.lock().unwrap().0 = Some(a);
            publish(
                &mut xs,
                &path,
                &published.dev().to_xenstore(),
                Some(&published.seq.to_xenstore()),
                Path::new("/dev/loop"),
            );
            wait_backend_failed(&mut xs, &path);
            let b = slot.lock().unwrap().1.take().expect("hook ran");
            assert_eq!(b.id().dev(), published.dev(), "same minor reused");
            assert_ne!(b.id().seq, published.seq);
            let error = error_node(&mut xs, &path).expect("error node");
            assert!(
                error.starts_with("19 creating vbd structure"),
                "{method:?} round {round}: {error}"
            );
            assert_eq!(
                read(&mut xs, &path.node(node::OPENED)).as_deref(),
                Some("0")
            );
            assert!(
                backend.held_disks().is_empty(),
                "{method:?}: B must not be held"
            );
            drop(b);
            xs.rm(&path.dir()).unwrap();
            xs.rm(&format!("/local/domain/3/device/vbd/{devid}"))
                .unwrap();
        }
        backend.stop().unwrap();
    }
    wait_detached(&image_a);
    wait_detached(&image_b);
}

/// The same race against a backend that ignores `diskseq` (stock blkback):
/// it serves image B. This is what the check prevents.
#[test]
fn a_backend_without_the_check_serves_the_wrong_image() {
    if !require_root("a_backend_without_the_check_serves_the_wrong_image") {
        return;
    }
    let env = Env::new(&[4]);
    let image_a = env.image("a.img", "IMAGE-A", MIB);
    let image_b = env.image("b.img", "IMAGE-B", MIB);
    let slot = SwapSlot::default();
    let mut config = env.backend_config(0);
    config.policy = DiskseqPolicy::Ignore;
    config.before_open = Some(swap_hook(&slot, &image_b));
    let backend = env.start_backend(config);
    let guest = env.start_frontend(4);
    let mut xs = env.dom0();
    let path = create(&env, 4, 51712, Mode::ReadWrite);
    wait_backend_state(&mut xs, &path, XenbusState::InitWait);
    let a = attach_loop(&image_a, false);
    let published = a.id();
    slot.lock().unwrap().0 = Some(a);
    publish(
        &mut xs,
        &path,
        &published.dev().to_xenstore(),
        Some(&published.seq.to_xenstore()),
        Path::new("/dev/loop"),
    );
    guest
        .wait_state(51712, XenbusState::Connected, WAIT)
        .expect("legacy backend connects");
    let bytes = backend
        .with_held_disk(&path, |d| read_at(d, 0, 7))
        .expect("held");
    assert_eq!(bytes, b"IMAGE-B", "the guest asked for A and got B");
    drop(slot.lock().unwrap().1.take());
    xs.rm(&path.dir()).unwrap();
    wait_detached(&image_b);
}

#[test]
fn legacy_records_are_served_unless_diskseq_is_required() {
    if !require_root("legacy_records_are_served_unless_diskseq_is_required") {
        return;
    }
    let env = Env::new(&[5]);
    let image = env.image("legacy.img", "LEGACY", MIB);
    let dev = attach_loop(&image, false);
    for (policy, connects) in [
        (DiskseqPolicy::Verify, true),
        (DiskseqPolicy::Require, false),
    ] {
        let mut config = env.backend_config(0);
        config.policy = policy;
        let backend = env.start_backend(config);
        let guest = env.start_frontend(5);
        let mut xs = env.dom0();
        let path = create(&env, 5, 51712, Mode::ReadWrite);
        wait_backend_state(&mut xs, &path, XenbusState::InitWait);
        publish(
            &mut xs,
            &path,
            &dev.id().dev().to_xenstore(),
            None,
            dev.path(),
        );
        if connects {
            guest
                .wait_state(51712, XenbusState::Connected, WAIT)
                .expect("legacy record served");
            assert_eq!(backend.held_disks()[0].id, dev.id());
        } else {
            wait_backend_failed(&mut xs, &path);
            let error = error_node(&mut xs, &path).expect("error node");
            assert!(error.starts_with("2 reading diskseq"), "{error}");
            assert!(backend.held_disks().is_empty());
        }
        backend.stop().unwrap();
        guest.stop().unwrap();
        xs.rm(&path.dir()).unwrap();
        xs.rm("/local/domain/5/device/vbd/51712").unwrap();
    }
    drop(dev);
    wait_detached(&image);
}

/// The patch's parse rules, end to end: each malformed value ends in the
/// error node with its message, and nothing is opened.
#[test]
fn malformed_diskseq_nodes_are_fatal_with_the_patch_messages() {
    if !require_root("malformed_diskseq_nodes_are_fatal_with_the_patch_messages") {
        return;
    }
    let env = Env::new(&[6]);
    let backend = env.start_backend(env.backend_config(0));
    let image = env.image("m.img", "M", MIB);
    let dev = attach_loop(&image, false);
    let mut xs = env.dom0();
    let cases = [
        ("", "22 diskseq must not be empty"),
        ("0", "34 diskseq must not start with 0"),
        ("0001", "34 diskseq must not start with 0"),
        ("11111111111111111", "34 diskseq too long"),
        ("xyz", "22 invalid diskseq"),
        ("1 ", "22 invalid diskseq"),
    ];
    for (i, (value, want)) in cases.iter().enumerate() {
        let devid = 51712 + 16 * u32::try_from(i).unwrap();
        let path = create(&env, 6, devid, Mode::ReadWrite);
        wait_backend_state(&mut xs, &path, XenbusState::InitWait);
        publish(
            &mut xs,
            &path,
            &dev.id().dev().to_xenstore(),
            Some(value),
            dev.path(),
        );
        wait_backend_failed(&mut xs, &path);
        let error = error_node(&mut xs, &path).expect("error node");
        assert!(error.starts_with(want), "{value:?}: {error}");
        assert!(backend.held_disks().is_empty());
    }
    // A well-formed but stale value: ENODEV.
    let path = create(&env, 6, 268_439_552, Mode::ReadWrite);
    wait_backend_state(&mut xs, &path, XenbusState::InitWait);
    let stale = diskseq::DiskSeq::new(dev.id().seq.get() + 1_000_000).unwrap();
    publish(
        &mut xs,
        &path,
        &dev.id().dev().to_xenstore(),
        Some(&stale.to_xenstore()),
        dev.path(),
    );
    wait_backend_failed(&mut xs, &path);
    assert!(error_node(&mut xs, &path)
        .unwrap()
        .starts_with("19 creating vbd structure: stale device"));
    drop(dev);
    wait_detached(&image);
}

/// A guest talks to the daemon through its own socket, as domain N: it may
/// read its backend dir and write its frontend dir, but never forge the
/// nodes that choose the host device.
#[test]
fn a_guest_cannot_write_the_nodes_that_choose_its_disk() {
    let env = Env::new(&[7, 8]);
    let mut xs = env.dom0();
    let path = create(&env, 7, 51712, Mode::ReadOnly);
    publish(&mut xs, &path, "7:0", Some("2a"), Path::new("/dev/loop0"));
    let mut guest = env.guest(7);
    assert_eq!(
        read(&mut guest, &path.node(node::MODE)).as_deref(),
        Some("r")
    );
    for name in [
        node::PHYSICAL_DEVICE,
        node::DISKSEQ,
        node::PARAMS,
        node::MODE,
        node::STATE,
        node::ONLINE,
    ] {
        let err = guest
            .write(&path.node(name), b"w")
            .expect_err(&format!("guest wrote {name}"));
        assert_eq!(err.errno(), Some(Errno::EACCES), "{name}: {err}");
        let err = guest
            .rm(&path.node(name))
            .expect_err(&format!("guest removed {name}"));
        assert_eq!(err.errno(), Some(Errno::EACCES), "rm {name}: {err}");
    }
    // Nor create new nodes there (e.g. a diskseq for a legacy record).
    let err = guest
        .write(&path.node("hotplug-status"), b"connected")
        .unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EACCES));
    assert_eq!(
        read(&mut xs, &path.node(node::PHYSICAL_DEVICE)).as_deref(),
        Some("7:0")
    );
    assert_eq!(
        read(&mut xs, &path.node(node::DISKSEQ)).as_deref(),
        Some("2a")
    );
    assert_eq!(read(&mut xs, &path.node(node::MODE)).as_deref(), Some("r"));
    // Its own frontend dir is its to write.
    guest
        .write("/local/domain/7/device/vbd/51712/state", b"3")
        .expect("guest writes its frontend state");
    // Another guest sees neither dir.
    let mut other = env.guest(8);
    for p in [
        path.node(node::PARAMS),
        "/local/domain/7/device/vbd/51712/state".to_owned(),
    ] {
        let err = other.read(&p).unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EACCES), "{p}: {err}");
    }
}

/// Killed mid-way and restarted, the backend picks up where xenstore says:
/// a device probed but unpublished connects once the record appears; a
/// connected device is reopened and re-verified without a state flip; a
/// connected device whose disk was swapped while no backend ran is refused.
#[test]
fn a_restarted_backend_resumes_from_xenstore() {
    if !require_root("a_restarted_backend_resumes_from_xenstore") {
        return;
    }
    let env = Env::new(&[9]);
    let guest = env.start_frontend(9);
    let image_a = env.image("a.img", "IMAGE-A", MIB);
    let image_b = env.image("b.img", "IMAGE-B", MIB);
    let image_c = env.image("c.img", "IMAGE-C", MIB);
    let mut xs = env.dom0();

    let backend = env.start_backend(env.backend_config(0));
    // xvda: probed, then the backend dies before the script publishes.
    let waiting = create(&env, 9, 51712, Mode::ReadWrite);
    wait_backend_state(&mut xs, &waiting, XenbusState::InitWait);
    // xvdb and xvdc: connected.
    let dev_b = attach_loop(&image_b, false);
    let dev_c = attach_loop(&image_c, false);
    let connected = create(&env, 9, 51728, Mode::ReadWrite);
    let swapped = create(&env, 9, 51744, Mode::ReadWrite);
    for (path, dev) in [(&connected, &dev_b), (&swapped, &dev_c)] {
        wait_backend_state(&mut xs, path, XenbusState::InitWait);
        publish_loop(&mut xs, path, dev);
        wait_backend_state(&mut xs, path, XenbusState::Connected);
    }
    backend.stop().expect("backend killed");

    // While it is down: a record for xvda, and xvdc's minor reused by A.
    let dev_a = attach_loop(&image_a, false);
    publish_loop(&mut xs, &waiting, &dev_a);
    let reused = rebind_same_minor(dev_c, &image_a).expect("reuse xvdc's minor");

    // Watch `state` of the connected device across the restart.
    let mut watcher = env.dom0();
    watcher.watch(&connected.node(node::STATE), "s").unwrap();
    assert!(watcher.next_event(Some(WAIT)).unwrap().is_some());

    let backend = env.start_backend(env.backend_config(0));
    guest
        .wait_state(51712, XenbusState::Connected, WAIT)
        .expect("xvda connects after restart");
    wait_backend_failed(&mut xs, &swapped);
    assert!(
        error_node(&mut xs, &swapped).unwrap().starts_with("19 "),
        "{}",
        env.backend_log()
    );
    // xvdb is reopened in its own turn: wait for it.
    let deadline = std::time::Instant::now() + WAIT;
    let held = loop {
        let held: Vec<_> = backend.held_disks().into_iter().map(|h| h.id).collect();
        if held.len() >= 2 || std::time::Instant::now() > deadline {
            break held;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(
        held.contains(&dev_a.id()) && held.contains(&dev_b.id()),
        "{held:?}\n{}",
        env.backend_log()
    );
    assert_eq!(held.len(), 2, "the swapped device is not held");
    assert_eq!(
        read(&mut xs, &connected.node(node::STATE)).as_deref(),
        Some("4")
    );
    assert!(
        watcher
            .next_event(Some(Duration::from_millis(200)))
            .unwrap()
            .is_none(),
        "connected device's state was rewritten on resume"
    );

    backend.stop().unwrap();
    guest.stop().unwrap();
    drop((dev_a, dev_b, reused));
    for image in [&image_a, &image_b, &image_c] {
        wait_detached(image);
    }
}

/// The frontend closes, the toolstack sets online = 0: the backend reaches
/// Closed and closes its fd.
#[test]
fn closing_offline_device_releases_it() {
    if !require_root("closing_offline_device_releases_it") {
        return;
    }
    let env = Env::new(&[10]);
    let backend = env.start_backend(env.backend_config(0));
    let guest = env.start_frontend(10);
    let image = env.image("c.img", "CLOSE", MIB);
    let mut xs = env.dom0();
    let path = create(&env, 10, 51712, Mode::ReadWrite);
    wait_backend_state(&mut xs, &path, XenbusState::InitWait);
    let dev = attach_loop(&image, false);
    publish_loop(&mut xs, &path, &dev);
    guest
        .wait_state(51712, XenbusState::Connected, WAIT)
        .unwrap();
    drop(dev);
    // libxl's detach step 1.
    xs.transaction(|tx| {
        tx.write(&path.node(node::ONLINE), "0")?;
        tx.write(&path.node(node::STATE), "5")
    })
    .unwrap();
    wait_backend_state(&mut xs, &path, XenbusState::Closed);
    guest.wait_state(51712, XenbusState::Closed, WAIT).unwrap();
    wait_detached(&image);
    assert!(backend.held_disks().is_empty());
}

#[test]
fn backend_config_debug_names_policy() {
    let config = BackendConfig::new(0);
    let text = format!("{config:?}");
    assert!(
        text.contains("Verify") && text.contains("ByNumber"),
        "{text}"
    );
}

/// A device dir removed and created again before the backend reads the
/// removal (here: in one transaction, the extreme case) is a new device:
/// the backend drops the old one and probes the new one.
#[test]
fn a_dir_removed_and_created_again_is_probed_anew() {
    if !require_root("a_dir_removed_and_created_again_is_probed_anew") {
        return;
    }
    let env = Env::new(&[11]);
    let backend = env.start_backend(env.backend_config(0));
    let guest = env.start_frontend(11);
    let mut xs = env.dom0();
    let path = create(&env, 11, 51712, Mode::ReadWrite);
    wait_backend_state(&mut xs, &path, XenbusState::InitWait);
    let spec = DiskSpec {
        frontend_domid: 11,
        backend_domid: 0,
        vdev: xen_sim::toolstack::Vdev::from_devid(51712),
        target: PathBuf::from("/nonexistent/played-by-the-test"),
        mode: Mode::ReadWrite,
        device_type: DeviceType::Disk,
        script: PathBuf::from("/bin/false"),
        discard_enable: true,
    };
    let layout = xen_sim::toolstack::Layout::new(&spec);
    xs.transaction(|tx| {
        tx.rm(&path.dir())?;
        tx.mkdir(&path.dir())?;
        tx.set_perms(&path.dir(), &layout.backend_perms)?;
        for (name, value) in &layout.backend_nodes {
            tx.write(&path.node(name), value.as_bytes())?;
        }
        Ok::<_, xenstore::client::Error>(())
    })
    .unwrap();
    wait_backend_state(&mut xs, &path, XenbusState::InitWait);
    assert_eq!(
        read(&mut xs, &path.node(node::OPENED)).as_deref(),
        Some("0")
    );
    assert!(
        env.backend_log().contains("removed and created again"),
        "{}",
        env.backend_log()
    );
    // And the new device works.
    let image = env.image("again.img", "AGAIN", MIB);
    let dev = attach_loop(&image, false);
    publish_loop(&mut xs, &path, &dev);
    if let Err(e) = guest.wait_state(51712, XenbusState::Connected, WAIT) {
        panic!("{e}\n{}", env.backend_log());
    }
    assert_eq!(backend.held_disks()[0].id, dev.id());
    drop(dev);
    xs.rm(&path.dir()).unwrap();
    wait_detached(&image);
}

/// A partition reports its disk's diskseq: with the partition table
/// rewritten between the publish and the open, number and diskseq still
/// match, and only `diskseq-partition` tells the new partition 1 from the
/// published one. The checking backend refuses it (ENODEV); the same record
/// on an unchanged table connects; stock blkback (no check) would serve it.
#[test]
fn a_partition_moved_under_a_pending_record_is_refused() {
    if !require_root("a_partition_moved_under_a_pending_record_is_refused") {
        return;
    }
    let env = Env::new(&[2]);
    let image = env.image("disk.img", "DISK", 4 * MIB);
    let disk = testbed::loops::attach_partitioned(&image, &[(MIB, MIB)]);
    let disk_fd = disk.block_device().as_fd().try_clone_to_owned().unwrap();
    let mut config = env.backend_config(0);
    let rewrite = Arc::new(Mutex::new(false));
    let hook_rewrite = Arc::clone(&rewrite);
    let partition_dev = format!(
        "/sys/block/loop{}/loop{}p1/dev",
        disk.id().minor,
        disk.id().minor
    );
    config.before_open = Some(Arc::new(move |_path, request| {
        if std::mem::take(&mut *hook_rewrite.lock().unwrap()) {
            // The window: partition 1 now starts 2 MiB in, under the same
            // number. A loop device's partitions get dynamic (extended)
            // numbers, freed a moment after the delete: re-add until the
            // kernel hands out the published one again, as a disk with
            // fixed partition minors (sd, virtio) always does.
            for _ in 0..500 {
                diskseq::ioctl::delete_partition(disk_fd.as_fd(), 1).unwrap();
                diskseq::ioctl::add_partition(disk_fd.as_fd(), 1, 2 * MIB, MIB).unwrap();
                let now = std::fs::read_to_string(&partition_dev).unwrap();
                if now.trim() == request.dev.to_string() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            panic!("partition 1 never got {} back", request.dev);
        }
        Ok(())
    }));
    let backend = env.start_backend(config);
    let _guest = env.start_frontend(2);
    let mut xs = env.dom0();
    let seq = disk.id().seq;

    // The refusal first: the connected device of the other round holds
    // partition 1 open, and the kernel would refuse the rewrite (EBUSY).
    for (devid, rewritten) in [(51712, true), (51728, false)] {
        let part = diskseq::PinnedPath {
            seq,
            partition: Some(1),
        }
        .open(diskseq::Access::ReadOnly)
        .unwrap();
        let extent = part.partition_extent().unwrap().unwrap();
        let path = create(&env, 2, devid, Mode::ReadOnly);
        wait_backend_state(&mut xs, &path, XenbusState::InitWait);
        *rewrite.lock().unwrap() = rewritten;
        let published = part.id();
        drop(part);
        xs.write(
            &path.node(node::PARTITION),
            vbd::schema::partition_to_node(&extent),
        )
        .unwrap();
        publish(
            &mut xs,
            &path,
            &published.dev().to_xenstore(),
            Some(&published.seq.to_xenstore()),
            Path::new("/dev/part"),
        );
        if rewritten {
            wait_backend_failed(&mut xs, &path);
            let error = error_node(&mut xs, &path).expect("error node");
            assert!(
                error.starts_with("19 creating vbd structure") && error.contains("partition 1"),
                "{error}"
            );
            assert!(backend.held_disks().is_empty());
        } else {
            wait_backend_state(&mut xs, &path, XenbusState::Connected);
            assert_eq!(backend.held_disks()[0].id, published);
        }
    }
    backend.stop().unwrap();
    drop(disk);
}
