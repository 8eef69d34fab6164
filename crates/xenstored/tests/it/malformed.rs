//! Whatever a client sends, the daemon answers with the right error or
//! drops that one connection — and keeps serving everyone else.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::common::{arg, args, Bed, Raw, GUEST};
use proptest::prelude::*;
use xenstore::wire::{Header, MsgType, HEADER_SIZE, PAYLOAD_MAX};

/// The daemon still answers a fresh dom0 connection correctly.
fn assert_serving(bed: &Bed) {
    let mut c = bed.dom0();
    c.write("/alive", "yes").unwrap();
    assert_eq!(c.read_string("/alive").unwrap(), "yes");
}

fn header(msg_type: u32, len: u32) -> [u8; HEADER_SIZE] {
    Header {
        msg_type,
        req_id: 1,
        tx_id: 0,
        len,
    }
    .encode()
}

#[test]
fn oversize_payload_disconnects_only_the_sender() {
    let bed = Bed::start();
    let mut bystander = bed.raw();
    bystander.call(MsgType::Write, 0, b"/b\0before").unwrap();
    for len in [PAYLOAD_MAX as u32 + 1, u32::MAX] {
        let mut bad = bed.raw();
        bad.send_bytes(&header(MsgType::Write as u32, len)).unwrap();
        assert!(bad.is_closed(), "len {len}: sender disconnected");
    }
    assert_eq!(
        bystander.call(MsgType::Read, 0, &arg("/b")).unwrap(),
        b"before"
    );
    assert_serving(&bed);
}

#[test]
fn largest_payload_is_accepted() {
    let bed = Bed::start();
    let mut raw = bed.raw();
    let mut payload = arg("/max");
    payload.resize(PAYLOAD_MAX, b'v');
    raw.call(MsgType::Write, 0, &payload).unwrap();
    let value = raw.call(MsgType::Read, 0, &arg("/max")).unwrap();
    assert_eq!(value.len(), PAYLOAD_MAX - 5);
}

#[test]
fn frames_split_anywhere_are_reassembled() {
    let bed = Bed::start();
    let mut raw = bed.raw();
    let mut bytes = Vec::new();
    for i in 0..3u32 {
        let msg = xenstore::wire::Message::new(
            MsgType::Write,
            i + 1,
            0,
            format!("/split/{i}\0v{i}").into_bytes(),
        );
        bytes.extend(msg.encode());
    }
    for byte in &bytes {
        raw.stream.write_all(std::slice::from_ref(byte)).unwrap();
    }
    for i in 0..3 {
        assert_eq!(raw.reply(i + 1).payload, b"OK\0");
    }
    assert_eq!(bed.dom0().read_string("/split/2").unwrap(), "v2");
}

#[test]
fn truncated_frames_and_abrupt_closes_are_harmless() {
    let bed = Bed::start();
    for cut in [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3] {
        let mut s = UnixStream::connect(bed.socket()).unwrap();
        let msg = xenstore::wire::Message::new(MsgType::Write, 1, 0, b"/never\0value".to_vec());
        s.write_all(&msg.encode()[..cut]).unwrap();
        drop(s);
    }
    assert_serving(&bed);
    assert_eq!(bed.dom0().read_opt("/never").unwrap(), None);
}

#[test]
fn half_closed_client_still_gets_its_replies() {
    let bed = Bed::start();
    let mut raw = bed.raw();
    let first = raw.send(MsgType::Write as u32, 0, b"/half\0closed");
    let second = raw.send(MsgType::Read as u32, 0, &arg("/half"));
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(raw.reply(first).payload, b"OK\0");
    assert_eq!(raw.reply(second).payload, b"closed");
    assert!(raw.is_closed(), "closed once its requests are answered");
    assert_serving(&bed);
}

#[test]
fn unknown_and_reply_types_are_enosys_and_the_connection_lives_on() {
    let bed = Bed::start();
    let mut raw = bed.raw();
    for t in [20u32, 23, 15, 16, 0xffff_ffff] {
        let req = raw.send(t, 0, b"whatever\0");
        let reply = raw.reply(req);
        assert_eq!(reply.msg_type, MsgType::Error as u32);
        assert_eq!(reply.payload, b"ENOSYS\0", "type {t}");
    }
    assert_eq!(raw.call(MsgType::Read, 0, &arg("/tool")).unwrap(), b"");
}

#[test]
fn invalid_paths_are_einval() {
    let bed = Bed::start();
    let mut raw = bed.raw();
    let too_long = format!("/{}", "a".repeat(3072));
    let rel_too_long = "a".repeat(2049);
    for path in [
        "",
        "//",
        "/a//b",
        "/trailing/",
        "/sp ace",
        "/semi;colon",
        "/dot.dot",
        "@other",
        too_long.as_str(),
        rel_too_long.as_str(),
    ] {
        for t in [
            MsgType::Read,
            MsgType::Mkdir,
            MsgType::Rm,
            MsgType::Directory,
        ] {
            assert_eq!(
                raw.call(t, 0, &arg(path)),
                Err("EINVAL".into()),
                "{t} {path:?}"
            );
        }
        let mut write = arg(path);
        write.extend_from_slice(b"value");
        assert_eq!(raw.call(MsgType::Write, 0, &write), Err("EINVAL".into()));
        assert_eq!(
            raw.call(MsgType::Watch, 0, &args(&[path, "t"])),
            Err("EINVAL".into()),
            "watch {path:?}"
        );
    }
    // Special paths are fine where they belong (watch, perms), not elsewhere.
    raw.call(MsgType::Watch, 0, &args(&["@releaseDomain", "t"]))
        .unwrap();
    raw.call(MsgType::GetPerms, 0, &arg("@releaseDomain"))
        .unwrap();
    assert_eq!(
        raw.call(MsgType::Write, 0, b"@releaseDomain\0x"),
        Err("EINVAL".into())
    );
    // Not UTF-8, no NUL, several NULs.
    for payload in [&b"/\xff\xfe\0"[..], b"/tool", b"/tool\0/tool\0"] {
        assert_eq!(raw.call(MsgType::Read, 0, payload), Err("EINVAL".into()));
    }
    assert_serving(&bed);
}

#[test]
fn bad_permission_strings_are_einval() {
    let bed = Bed::start();
    let mut raw = bed.raw();
    raw.call(MsgType::Write, 0, b"/p\0").unwrap();
    for perms in [
        &["x0"][..],
        &["r"],
        &["rabc"],
        &["r-1"],
        &["n0", ""],
        &["n99999999999"],
        &["b0", "w 1"],
    ] {
        let mut payload = arg("/p");
        payload.extend(args(perms));
        assert_eq!(
            raw.call(MsgType::SetPerms, 0, &payload),
            Err("EINVAL".into()),
            "{perms:?}"
        );
    }
    assert_eq!(
        raw.call(MsgType::SetPerms, 0, &arg("/p")),
        Err("EINVAL".into())
    );
    assert_eq!(raw.call(MsgType::GetPerms, 0, &arg("/p")).unwrap(), b"n0\0");
}

#[test]
fn malformed_domain_requests() {
    let bed = Bed::start();
    let mut raw = bed.raw();
    for (t, payload) in [
        (MsgType::Introduce, &b"5\0"[..]),
        (MsgType::Introduce, b"x\x001\x001\x00"),
        (MsgType::Introduce, b"5\x001\x000\x00"),
        (MsgType::Release, b"five\0"),
        (MsgType::GetDomainPath, b"\0"),
        (MsgType::GetDomainPath, b"-1\0"),
        (MsgType::SetTarget, b"5\0"),
        (MsgType::IsDomainIntroduced, b"5"),
        (MsgType::DirectoryPart, b"/tool\0x\0"),
    ] {
        assert_eq!(
            raw.call(t, 0, payload),
            Err("EINVAL".into()),
            "{t} {payload:?}"
        );
    }
}

#[test]
fn guests_sending_garbage_do_not_disturb_dom0() {
    let bed = Bed::start();
    let _home = bed.guest(GUEST);
    let mut guest = Raw::connect(&bed.guest_socket(GUEST));
    guest
        .send_bytes(&header(MsgType::Write as u32, 1 << 20))
        .unwrap();
    assert!(guest.is_closed());
    assert_serving(&bed);
}

#[test]
fn thousands_of_concurrent_connections() {
    let bed = Bed::start();
    const CONNECTIONS: usize = 2000;
    let mut conns: Vec<Raw> = (0..CONNECTIONS).map(|_| bed.raw()).collect();
    // Every connection sends before any reads: all are open at once.
    let reqs: Vec<u32> = conns
        .iter_mut()
        .enumerate()
        .map(|(i, c)| {
            c.send(
                MsgType::Write as u32,
                0,
                format!("/many/{i}\0{i}").as_bytes(),
            )
        })
        .collect();
    for (c, req) in conns.iter_mut().zip(&reqs) {
        assert_eq!(c.reply(*req).payload, b"OK\0");
    }
    for (i, c) in conns.iter_mut().enumerate().step_by(97) {
        assert_eq!(
            c.call(MsgType::Read, 0, &arg(&format!("/many/{i}")))
                .unwrap(),
            i.to_string().as_bytes()
        );
    }
    assert_eq!(bed.dom0().directory("/many").unwrap().len(), CONNECTIONS);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random bytes — valid-looking headers with random types and payloads,
    /// or plain noise — never crash the daemon or break other clients.
    #[test]
    fn random_input_never_hurts_the_daemon(
        frames in prop::collection::vec(
            (0u32..30, prop::collection::vec(any::<u8>(), 0..64), any::<bool>()),
            1..8,
        ),
        noise in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let bed = Bed::start();
        let mut s = UnixStream::connect(bed.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        for (t, payload, oversize) in &frames {
            let len = if *oversize && payload.len() % 5 == 0 { 5000 } else { payload.len() as u32 };
            let _ = s.write_all(&header(*t, len));
            let _ = s.write_all(payload);
        }
        let _ = s.write_all(&noise);
        drop(s);
        assert_serving(&bed);
    }
}
