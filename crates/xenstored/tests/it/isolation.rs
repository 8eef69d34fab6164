//! A guest domain, over its domain socket, reads what it is allowed to,
//! gets EACCES elsewhere, cannot exceed its quotas and cannot slow dom0.

use std::time::{Duration, Instant};

use crate::common::{arg, args, Bed, Raw, GUEST, OTHER_GUEST};
use xenstore::wire::{Message, MsgType};
use xenstore::{Errno, Perms, WatchEvent};
use xenstored::Quotas;

const WAIT: Option<Duration> = Some(Duration::from_secs(5));
const QUIET: Option<Duration> = Some(Duration::from_millis(100));

fn errno<T: std::fmt::Debug>(r: Result<T, xenstore::client::Error>) -> Errno {
    r.expect_err("should fail").errno().expect("an errno reply")
}

/// A backend directory as a toolstack lays it out: owned by dom0, readable
/// by the frontend domain.
fn backend_dir(bed: &Bed) -> &'static str {
    let mut dom0 = bed.dom0();
    let dir = "/local/domain/0/backend/vbd/5/51712";
    dom0.write(&format!("{dir}/params"), "/srv/disk.img")
        .unwrap();
    dom0.write(&format!("{dir}/physical-device"), "7:0")
        .unwrap();
    dom0.set_perms(dir, &"n0 r5".parse().unwrap()).unwrap();
    dom0.set_perms(&format!("{dir}/physical-device"), &"n0 r5".parse().unwrap())
        .unwrap();
    dir
}

#[test]
fn guest_reads_what_it_may_and_nothing_else() {
    let bed = Bed::start();
    let dir = backend_dir(&bed);
    let mut guest = bed.guest(GUEST);
    // Own home, relative and absolute.
    guest.write("device/vbd/51712/state", "1").unwrap();
    assert_eq!(
        guest
            .read_string("/local/domain/5/device/vbd/51712/state")
            .unwrap(),
        "1"
    );
    // Granted explicitly.
    assert_eq!(
        guest
            .read_string(&format!("{dir}/physical-device"))
            .unwrap(),
        "7:0"
    );
    // Inherited n0 from a parent created by dom0 before the grant: denied.
    assert_eq!(errno(guest.read(&format!("{dir}/params"))), Errno::EACCES);
    // Writes to a readable backend node are denied, and leave no trace.
    assert_eq!(
        errno(guest.write(&format!("{dir}/physical-device"), "8:0")),
        Errno::EACCES
    );
    assert_eq!(errno(guest.rm(dir)), Errno::EACCES);
    assert_eq!(errno(guest.mkdir(&format!("{dir}/new"))), Errno::EACCES);
    assert_eq!(
        bed.dom0()
            .read_string(&format!("{dir}/physical-device"))
            .unwrap(),
        "7:0"
    );
    // Missing nodes: ENOENT only where the guest may look.
    assert_eq!(errno(guest.read(&format!("{dir}/nope"))), Errno::ENOENT);
    assert_eq!(errno(guest.read("/local/domain/0/nope")), Errno::EACCES);
    assert_eq!(errno(guest.read("/nope/deeper")), Errno::EACCES);
    // The root and other domains are closed.
    assert_eq!(errno(guest.directory("/")), Errno::EACCES);
    let _other = bed.guest(OTHER_GUEST);
    bed.dom0().write("/local/domain/6/secret", "x").unwrap();
    assert_eq!(errno(guest.read("/local/domain/6/secret")), Errno::EACCES);
    assert_eq!(errno(guest.get_perms("/local/domain/6")), Errno::EACCES);
}

#[test]
fn guest_cannot_take_or_give_away_ownership() {
    let bed = Bed::start();
    let dir = backend_dir(&bed);
    let mut guest = bed.guest(GUEST);
    guest.write("mine", "1").unwrap();
    assert_eq!(guest.get_perms("mine").unwrap(), Perms::owner_only(GUEST));
    assert_eq!(
        errno(guest.set_perms("mine", &Perms::owner_only(0))),
        Errno::EPERM
    );
    assert_eq!(
        errno(guest.set_perms(&format!("{dir}/physical-device"), &"n5".parse().unwrap())),
        Errno::EACCES
    );
    guest.set_perms("mine", &"n5 r6".parse().unwrap()).unwrap();
    let mut other = bed.guest(OTHER_GUEST);
    assert_eq!(other.read_string("/local/domain/5/mine").unwrap(), "1");
    assert_eq!(
        errno(other.write("/local/domain/5/mine", "2")),
        Errno::EACCES
    );
}

#[test]
fn privileged_requests_are_eacces_for_guests() {
    let bed = Bed::start();
    let mut guest = Raw::connect(&bed.guest_socket(GUEST));
    for (t, payload) in [
        (MsgType::Introduce, args(&["7", "1", "1"])),
        (MsgType::Release, arg("7")),
        (MsgType::Resume, arg("7")),
        (MsgType::SetTarget, args(&["5", "7"])),
        (MsgType::Control, arg("help")),
        (MsgType::IsDomainIntroduced, arg("0")),
    ] {
        assert_eq!(guest.call(t, 0, &payload), Err("EACCES".into()), "{t}");
    }
    assert!(!bed.dom0().is_domain_introduced(7).unwrap());
}

#[test]
fn guest_watches_only_hear_readable_changes() {
    let bed = Bed::start();
    let dir = backend_dir(&bed);
    let mut guest = bed.guest(GUEST);
    guest.watch("/", "all").unwrap();
    assert_eq!(
        guest.next_event(WAIT).unwrap(),
        Some(WatchEvent {
            path: "/".into(),
            token: "all".into()
        })
    );
    let mut dom0 = bed.dom0();
    dom0.write("/local/domain/0/private", "x").unwrap();
    dom0.write(&format!("{dir}/physical-device"), "7:1")
        .unwrap();
    dom0.write("/local/domain/5/device/vbd/51712/backend", dir)
        .unwrap();
    let mut heard = Vec::new();
    while let Some(e) = guest.next_event(QUIET).unwrap() {
        heard.push(e.path);
    }
    assert_eq!(
        heard,
        vec![
            format!("{dir}/physical-device"),
            "/local/domain/5/device/vbd/51712/backend".to_string()
        ]
    );
}

#[test]
fn stub_domain_with_a_target_acts_for_it() {
    let bed = Bed::start();
    let mut dom0 = bed.dom0();
    dom0.write("/local/domain/6/private", "x").unwrap();
    dom0.set_perms("/local/domain/6/private", &Perms::owner_only(OTHER_GUEST))
        .unwrap();
    let mut guest = bed.guest(GUEST);
    assert_eq!(errno(guest.read("/local/domain/6/private")), Errno::EACCES);
    dom0.introduce(GUEST, 1, 1).unwrap();
    dom0.introduce(OTHER_GUEST, 1, 1).unwrap();
    dom0.set_target(GUEST, OTHER_GUEST).unwrap();
    assert_eq!(guest.read_string("/local/domain/6/private").unwrap(), "x");
}

fn quotas(change: impl FnOnce(&mut Quotas)) -> Quotas {
    let mut q = Quotas::default();
    change(&mut q);
    q
}

#[test]
fn entries_quota() {
    let bed = Bed::with_quotas(quotas(|q| q.entries = 10));
    let mut guest = bed.guest(GUEST);
    // The home counts as the guest's first node.
    for i in 0..9 {
        guest.write(&format!("n{i}"), "").unwrap();
    }
    assert_eq!(errno(guest.write("one-too-many", "")), Errno::ENOSPC);
    assert_eq!(errno(guest.mkdir("one-too-many")), Errno::ENOSPC);
    guest.rm("n0").unwrap();
    guest.write("fits-again", "").unwrap();
    // dom0 is exempt, even in the guest's home.
    let mut dom0 = bed.dom0();
    dom0.write("/local/domain/5/by-dom0", "").unwrap();
    // Nodes dom0 gives to the guest count against it.
    dom0.write("/local/domain/5/given", "").unwrap();
    dom0.set_perms("/local/domain/5/given", &Perms::owner_only(GUEST))
        .unwrap();
    assert_eq!(errno(guest.write("x", "")), Errno::ENOSPC);
}

#[test]
fn entry_size_quota() {
    let bed = Bed::start();
    let mut guest = bed.guest(GUEST);
    let limit = Quotas::default().entry_size;
    // Record = 24-byte header + 8 per permission + value: must stay below.
    guest.write("v", vec![b'x'; limit - 24 - 8 - 1]).unwrap();
    assert_eq!(
        errno(guest.write("v", vec![b'x'; limit - 24 - 8])),
        Errno::ENOSPC
    );
    assert_eq!(guest.read("v").unwrap().len(), limit - 24 - 8 - 1);
    bed.dom0()
        .write("/local/domain/5/v", vec![b'x'; 4000])
        .unwrap();
}

#[test]
fn watch_quota() {
    let bed = Bed::with_quotas(quotas(|q| q.watches = 3));
    let mut guest = bed.guest(GUEST);
    for i in 0..3 {
        guest.watch(&format!("w{i}"), "t").unwrap();
    }
    assert_eq!(errno(guest.watch("w3", "t")), Errno::E2BIG);
    // The quota is per domain, across its connections.
    let mut second = xenstore::Client::connect_socket(&bed.guest_socket(GUEST)).unwrap();
    assert_eq!(errno(second.watch("w4", "t")), Errno::E2BIG);
    guest.unwatch("w0", "t").unwrap();
    second.watch("w4", "t").unwrap();
    // Closing a connection returns its watches.
    drop(second);
    std::thread::sleep(Duration::from_millis(100));
    guest.watch("w5", "t").unwrap();
    // dom0 is exempt.
    let mut dom0 = bed.dom0();
    for i in 0..10 {
        dom0.watch(&format!("/d{i}"), "t").unwrap();
    }
}

#[test]
fn transaction_quota() {
    let bed = Bed::with_quotas(quotas(|q| q.transactions = 2));
    let _home = bed.guest(GUEST);
    let mut guest = Raw::connect(&bed.guest_socket(GUEST));
    // One more than the quota, as the C daemon allows (it refuses only
    // once the count exceeds the quota; measured on real Xen).
    guest.call(MsgType::TransactionStart, 0, b"\0").unwrap();
    guest.call(MsgType::TransactionStart, 0, b"\0").unwrap();
    let second = guest.call(MsgType::TransactionStart, 0, b"\0").unwrap();
    assert_eq!(
        guest.call(MsgType::TransactionStart, 0, b"\0"),
        Err("ENOSPC".into())
    );
    let id: u32 = std::str::from_utf8(&second[..second.len() - 1])
        .unwrap()
        .parse()
        .unwrap();
    guest.call(MsgType::TransactionEnd, id, b"F\0").unwrap();
    guest.call(MsgType::TransactionStart, 0, b"\0").unwrap();
}

#[test]
fn path_length_and_permission_count_quotas() {
    let bed = Bed::with_quotas(quotas(|q| q.path_len = 32));
    let mut guest = bed.guest(GUEST);
    guest.write(&"a".repeat(32), "").unwrap();
    assert_eq!(errno(guest.write(&"a".repeat(33), "")), Errno::EINVAL);
    // Counted below the home, whichever form the path is written in.
    assert_eq!(
        errno(guest.write(&format!("/local/domain/5/{}", "b".repeat(33)), "")),
        Errno::EINVAL
    );
    // dom0 is not exempt (the C daemon of Xen 4.17 checks every caller;
    // measured on real Xen, tests/xen xs-suites-real).
    let mut dom0 = bed.dom0();
    dom0.write(&format!("/local/domain/5/{}", "c".repeat(32)), "")
        .unwrap();
    assert_eq!(
        errno(dom0.write(&format!("/local/domain/5/{}", "c".repeat(33)), "")),
        Errno::EINVAL
    );
    let six: Perms = "n5 r1 r2 r3 r4 r6".parse().unwrap();
    assert_eq!(errno(guest.set_perms("aaaa", &six)), Errno::ENOSPC);
}

#[test]
fn guest_that_never_reads_replies_is_paused_not_buffered() {
    let bed = Bed::with_quotas(quotas(|q| q.outstanding = 8));
    let mut dom0 = bed.dom0();
    dom0.mkdir("/local/domain/5").unwrap();
    dom0.set_perms("/local/domain/5", &Perms::owner_only(GUEST))
        .unwrap();
    // Created below the guest's home: inherits the guest's ownership.
    dom0.write("/local/domain/5/v", "value").unwrap();
    let mut guest = Raw::connect(&bed.guest_socket(GUEST));
    // Pipeline far more requests than the socket buffers hold replies for.
    let writer = guest.stream.try_clone().unwrap();
    const REQUESTS: u32 = 20_000;
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let mut writer = writer;
        for req in 1..=REQUESTS {
            let msg = Message::new(MsgType::Read, req, 0, arg("/local/domain/5/v"));
            if writer.write_all(&msg.encode()).is_err() {
                return false;
            }
        }
        true
    });
    std::thread::sleep(Duration::from_millis(300));
    // dom0 is served promptly meanwhile.
    let start = Instant::now();
    for i in 0..100 {
        dom0.write("/dom0-busy", i.to_string()).unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(5), "dom0 stalled");
    // The daemon stopped reading the guest: it handled only what fits in
    // the socket buffers plus the quota, not the whole pipeline.
    let trace = std::fs::read_to_string(bed.dir.path().join("trace")).unwrap();
    let handled = trace
        .lines()
        .filter(|l| l.contains(" d5 READ ") && l.contains("IN "))
        .count();
    assert!(
        handled < REQUESTS as usize / 2,
        "handled {handled} of {REQUESTS} unread requests"
    );
    // Every reply arrives, in order, once the guest reads.
    for req in 1..=REQUESTS {
        let frame = guest.frame().unwrap();
        assert_eq!(frame.req_id, req);
        assert_eq!(frame.payload, b"value");
    }
    assert!(sender.join().unwrap());
}

#[test]
fn flooding_guest_cannot_starve_dom0() {
    let bed = Bed::start();
    let _home = bed.guest(GUEST);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let floods: Vec<_> = (0..2)
        .map(|n| {
            let socket = bed.guest_socket(GUEST);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut guest = xenstore::Client::connect_socket(&socket).unwrap();
                let mut done = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    guest.write(&format!("flood{n}"), done.to_string()).unwrap();
                    done += 1;
                }
                done
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut dom0 = bed.dom0();
    let start = Instant::now();
    for i in 0..500 {
        dom0.write("/local/domain/0/x", i.to_string()).unwrap();
        assert_eq!(
            dom0.read_string("/local/domain/0/x").unwrap(),
            i.to_string()
        );
    }
    let dom0_time = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flooded: u64 = floods.into_iter().map(|f| f.join().unwrap()).sum();
    assert!(flooded > 100, "the guests made progress too ({flooded})");
    assert!(
        dom0_time < Duration::from_secs(10),
        "1000 dom0 round trips took {dom0_time:?} beside a flooding guest"
    );
}

#[test]
fn guest_that_never_reads_events_is_dropped_not_dom0() {
    let bed = Bed::start();
    let _home = bed.guest(GUEST);
    let mut guest = Raw::connect(&bed.guest_socket(GUEST));
    let token = "t".repeat(4000);
    guest
        .call(MsgType::Watch, 0, &args(&["/local/domain/5", &token]))
        .unwrap();
    let mut dom0 = bed.dom0();
    // ~4 KB per event: the guest's queue passes the daemon's limit long
    // before this loop ends; the guest is dropped, dom0 keeps working.
    for i in 0..6000 {
        dom0.write("/local/domain/5/x", i.to_string()).unwrap();
    }
    assert!(guest.is_closed(), "slow reader disconnected");
    assert_eq!(dom0.read_string("/local/domain/5/x").unwrap(), "5999");
}
