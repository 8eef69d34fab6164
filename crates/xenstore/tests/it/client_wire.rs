//! Wire-level edge cases of the client against a scripted fake daemon: the
//! situations a well-behaved daemon produces only by timing (events between
//! replies, half frames, lists that need DIRECTORY_PART, commit conflicts),
//! made deterministic here. Everything else is tested against the real
//! daemon in `client_daemon.rs`.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::{self, JoinHandle};
use std::time::Duration;
use xenstore::wire::{self, Message, MsgType};
use xenstore::{Client, Errno, WatchEvent};

/// A one-connection fake daemon running `script` on its end of the socket.
struct FakeDaemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    script: Option<JoinHandle<()>>,
}

impl FakeDaemon {
    fn start(script: impl FnOnce(&mut Peer) + Send + 'static) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("socket");
        let listener = UnixListener::bind(&socket).unwrap();
        let script = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            script(&mut Peer { stream });
        });
        FakeDaemon {
            _dir: dir,
            socket,
            script: Some(script),
        }
    }

    fn client(&self) -> Client {
        Client::connect_socket(&self.socket).unwrap()
    }

    /// Waits for the script; its assertion failures fail the test.
    fn finish(mut self) {
        if let Some(script) = self.script.take() {
            script.join().expect("fake daemon script failed");
        }
    }
}

struct Peer {
    stream: UnixStream,
}

impl Peer {
    fn expect(&mut self, t: MsgType) -> Message {
        let m = Message::read_from(&mut self.stream).expect("request from client");
        assert_eq!(m.kind(), Some(t), "request {m:?}");
        m
    }

    fn send(&mut self, m: &Message) {
        use std::io::Write;
        self.stream.write_all(&m.encode()).unwrap();
    }

    fn reply(&mut self, to: &Message, payload: &[u8]) {
        self.send(&Message {
            msg_type: to.msg_type,
            req_id: to.req_id,
            tx_id: to.tx_id,
            payload: payload.to_vec(),
        });
    }

    fn error(&mut self, to: &Message, e: Errno) {
        self.send(&Message::new(
            MsgType::Error,
            to.req_id,
            to.tx_id,
            wire::error_payload(e),
        ));
    }

    /// Serves a TRANSACTION_START (outside any transaction) with `id`.
    fn start_transaction(&mut self, id: u32) {
        let start = self.expect(MsgType::TransactionStart);
        assert_eq!((start.tx_id, start.payload.as_slice()), (0, &b"\0"[..]));
        self.reply(&start, format!("{id}\0").as_bytes());
    }

    /// Serves one WRITE and the commit of transaction `id`, answering the
    /// commit with `verdict` (`None`: OK).
    fn write_and_commit(&mut self, id: u32, verdict: Option<Errno>) {
        let write = self.expect(MsgType::Write);
        assert_eq!(write.tx_id, id);
        self.reply(&write, wire::OK_PAYLOAD);
        let end = self.expect(MsgType::TransactionEnd);
        assert_eq!((end.tx_id, end.payload.as_slice()), (id, &b"T\0"[..]));
        match verdict {
            Some(e) => self.error(&end, e),
            None => self.reply(&end, wire::OK_PAYLOAD),
        }
    }

    fn event(&mut self, path: &str, token: &str) {
        self.send(&Message::new(
            MsgType::WatchEvent,
            0,
            0,
            wire::watch_payload(path, token),
        ));
    }
}

fn event(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

#[test]
fn events_arriving_between_replies_are_queued_in_order() {
    let daemon = FakeDaemon::start(|peer| {
        let watch = peer.expect(MsgType::Watch);
        assert_eq!(watch.payload, b"/a\0tok\0");
        peer.event("/a", "tok"); // before the reply, as a racing daemon may
        peer.reply(&watch, wire::OK_PAYLOAD);
        let read = peer.expect(MsgType::Read);
        peer.event("/a/b", "tok");
        peer.event("/a/c", "tok");
        peer.reply(&read, b"value");
        peer.event("/a/d", "tok");
    });
    let mut client = daemon.client();
    client.watch("/a", "tok").unwrap();
    assert_eq!(client.read("/x").unwrap(), b"value");
    assert_eq!(client.pending_events(), 3);
    let timeout = Some(Duration::from_secs(5));
    for path in ["/a", "/a/b", "/a/c", "/a/d"] {
        assert_eq!(
            client.next_event(timeout).unwrap(),
            Some(event(path, "tok"))
        );
    }
    daemon.finish();
}

#[test]
fn unwatch_drops_queued_events_of_that_watch_only() {
    let daemon = FakeDaemon::start(|peer| {
        let w1 = peer.expect(MsgType::Watch);
        peer.reply(&w1, wire::OK_PAYLOAD);
        let w2 = peer.expect(MsgType::Watch);
        peer.event("/a/x", "one");
        peer.event("/ab", "one");
        peer.event("/b", "two");
        peer.reply(&w2, wire::OK_PAYLOAD);
        let u = peer.expect(MsgType::Unwatch);
        assert_eq!(u.payload, b"/a\0one\0");
        peer.reply(&u, wire::OK_PAYLOAD);
    });
    let mut client = daemon.client();
    client.watch("/a", "one").unwrap();
    client.watch("/b", "two").unwrap();
    client.unwatch("/a", "one").unwrap();
    // "/ab" is not below "/a": it belongs to another watch with that token.
    assert_eq!(
        client.next_event(Some(Duration::ZERO)).unwrap(),
        Some(event("/ab", "one"))
    );
    assert_eq!(
        client.next_event(Some(Duration::ZERO)).unwrap(),
        Some(event("/b", "two"))
    );
    daemon.finish();
}

#[test]
fn timeout_in_the_middle_of_a_frame_keeps_the_stream_in_sync() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let daemon = FakeDaemon::start(move |peer| {
        use std::io::Write;
        let raw =
            Message::new(MsgType::WatchEvent, 0, 0, wire::watch_payload("/slow", "t")).encode();
        peer.stream.write_all(&raw[..10]).unwrap();
        rx.recv().unwrap();
        peer.stream.write_all(&raw[10..]).unwrap();
    });
    let mut client = daemon.client();
    assert_eq!(
        client.next_event(Some(Duration::from_millis(50))).unwrap(),
        None
    );
    tx.send(()).unwrap();
    assert_eq!(
        client.next_event(Some(Duration::from_secs(5))).unwrap(),
        Some(event("/slow", "t"))
    );
    daemon.finish();
}

#[test]
fn directory_falls_back_to_directory_part_on_e2big() {
    let daemon = FakeDaemon::start(|peer| {
        let dir = peer.expect(MsgType::Directory);
        peer.error(&dir, Errno::E2BIG);
        // First listing: the node changes (generation 7 → 8) midway.
        let p = peer.expect(MsgType::DirectoryPart);
        assert_eq!(p.payload, b"/big\x000\0");
        peer.reply(&p, b"7\0stale\0");
        let p = peer.expect(MsgType::DirectoryPart);
        assert_eq!(p.payload, b"/big\x006\0");
        peer.reply(&p, b"8\0other\0\0");
        // Second listing, consistent, in two parts.
        let p = peer.expect(MsgType::DirectoryPart);
        assert_eq!(p.payload, b"/big\x000\0");
        peer.reply(&p, b"8\0a\0bb\0");
        let p = peer.expect(MsgType::DirectoryPart);
        assert_eq!(p.payload, b"/big\x005\0");
        peer.reply(&p, b"8\0ccc\0\0");
        // An empty directory listed in parts.
        let dir = peer.expect(MsgType::Directory);
        peer.error(&dir, Errno::E2BIG);
        let p = peer.expect(MsgType::DirectoryPart);
        peer.reply(&p, b"3\0\0");
    });
    let mut client = daemon.client();
    assert_eq!(client.directory("/big").unwrap(), ["a", "bb", "ccc"]);
    assert!(client.directory("/empty").unwrap().is_empty());
    daemon.finish();
}

#[test]
fn read_many_pipelines_all_requests_before_any_reply() {
    const N: usize = 100; // more than one pipeline batch
    let daemon = FakeDaemon::start(|peer| {
        let start = peer.expect(MsgType::TransactionStart);
        peer.reply(&start, b"9\0");
        // Batches of up to 64: all requests of a batch arrive before any
        // reply is sent; a client waiting per request would stall here.
        let mut served = 0;
        while served < N {
            let batch = (N - served).min(64);
            let requests: Vec<Message> = (0..batch).map(|_| peer.expect(MsgType::Read)).collect();
            for (i, request) in requests.iter().enumerate() {
                assert_eq!(request.tx_id, 9);
                if (served + i) % 10 == 3 {
                    peer.error(request, Errno::ENOENT);
                } else {
                    peer.reply(request, format!("v{}", served + i).as_bytes());
                }
            }
            served += batch;
        }
        let end = peer.expect(MsgType::TransactionEnd);
        assert_eq!(end.payload, b"T\0");
        peer.reply(&end, wire::OK_PAYLOAD);
    });
    let mut client = daemon.client();
    let paths: Vec<String> = (0..N).map(|i| format!("/n/{i}")).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let values = client.transaction(|tx| tx.read_many(&refs)).unwrap();
    for (i, value) in values.iter().enumerate() {
        let expected = (i % 10 != 3).then(|| format!("v{i}").into_bytes());
        assert_eq!(value, &expected);
    }
    daemon.finish();
}

#[test]
fn transaction_reruns_the_closure_on_eagain() {
    let daemon = FakeDaemon::start(|peer| {
        for (id, verdict) in [
            (1, Some(Errno::EAGAIN)),
            (2, Some(Errno::EAGAIN)),
            (3, None),
        ] {
            peer.start_transaction(id);
            peer.write_and_commit(id, verdict);
        }
    });
    let mut client = daemon.client();
    let mut runs = 0;
    let result: Result<u32, xenstore::Error> = client.transaction(|tx| {
        runs += 1;
        tx.write("/counter", runs.to_string())?;
        Ok(runs)
    });
    assert_eq!(result.unwrap(), 3);
    daemon.finish();
}

#[test]
fn transaction_gives_up_with_eagain_after_bounded_attempts() {
    let attempts = xenstore::Transaction::MAX_ATTEMPTS;
    let daemon = FakeDaemon::start(move |peer| {
        for id in 1..=attempts {
            let start = peer.expect(MsgType::TransactionStart);
            peer.reply(&start, format!("{id}\0").as_bytes());
            let end = peer.expect(MsgType::TransactionEnd);
            peer.error(&end, Errno::EAGAIN);
        }
    });
    let mut client = daemon.client();
    let mut runs = 0;
    let err = client
        .transaction(|_| {
            runs += 1;
            Ok::<_, xenstore::Error>(())
        })
        .unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EAGAIN));
    assert_eq!(runs, attempts);
    daemon.finish();
}

#[test]
fn failing_closure_aborts_the_transaction_and_returns_its_error() {
    #[derive(Debug)]
    enum AppError {
        Refused,
        Store(#[allow(dead_code)] xenstore::Error),
    }
    impl From<xenstore::Error> for AppError {
        fn from(e: xenstore::Error) -> Self {
            AppError::Store(e)
        }
    }
    let daemon = FakeDaemon::start(|peer| {
        let start = peer.expect(MsgType::TransactionStart);
        peer.reply(&start, b"4\0");
        let end = peer.expect(MsgType::TransactionEnd);
        assert_eq!((end.tx_id, end.payload.as_slice()), (4, &b"F\0"[..]));
        peer.reply(&end, wire::OK_PAYLOAD);
    });
    let mut client = daemon.client();
    let result: Result<(), AppError> = client.transaction(|_| Err(AppError::Refused));
    assert!(matches!(result, Err(AppError::Refused)));
    daemon.finish();
}

#[test]
fn errors_name_operation_path_and_errno() {
    let daemon = FakeDaemon::start(|peer| {
        let read = peer.expect(MsgType::Read);
        peer.error(&read, Errno::EACCES);
        let read = peer.expect(MsgType::Read);
        peer.error(&read, Errno::ENOENT);
    });
    let mut client = daemon.client();
    let err = client.read("/secret/key").unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EACCES));
    assert_eq!(err.to_string(), "xenstore READ /secret/key: EACCES");
    assert_eq!(client.read_opt("/missing").unwrap(), None);
    // Refused locally, never sent (the script expects no third request).
    let err = client.write("/bad//path", "x").unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EINVAL));
    assert!(err.to_string().contains("/bad//path"), "{err}");
    let err = client
        .write("/big", vec![b'x'; wire::PAYLOAD_MAX])
        .unwrap_err();
    assert_eq!(err.errno(), Some(Errno::E2BIG));
    daemon.finish();
}

#[test]
fn daemon_hangup_and_oversize_frames_make_the_client_fail_fast() {
    let daemon = FakeDaemon::start(|peer| {
        let read = peer.expect(MsgType::Read);
        let mut bogus = Message::new(MsgType::Read, read.req_id, 0, Vec::new()).header();
        bogus.len = 1 << 20;
        use std::io::Write;
        peer.stream.write_all(&bogus.encode()).unwrap();
    });
    let mut client = daemon.client();
    let err = client.read("/a").unwrap_err();
    assert!(
        matches!(err.kind(), xenstore::ErrorKind::Protocol(_)),
        "{err}"
    );
    let err = client.read("/a").unwrap_err();
    assert!(err.to_string().contains("unusable"), "{err}");
    daemon.finish();

    let daemon = FakeDaemon::start(|peer| {
        peer.expect(MsgType::Read);
    });
    let mut client = daemon.client();
    let err = client.read("/a").unwrap_err();
    assert!(matches!(err.kind(), xenstore::ErrorKind::Io(_)), "{err}");
    daemon.finish();
}

#[test]
fn reply_with_a_foreign_request_id_is_a_protocol_error() {
    let daemon = FakeDaemon::start(|peer| {
        let read = peer.expect(MsgType::Read);
        peer.send(&Message::new(
            MsgType::Read,
            read.req_id + 7,
            0,
            b"x".to_vec(),
        ));
    });
    let mut client = daemon.client();
    let err = client.read("/a").unwrap_err();
    assert!(
        matches!(err.kind(), xenstore::ErrorKind::Protocol(_)),
        "{err}"
    );
    daemon.finish();
}

#[test]
fn start_transaction_and_read_is_one_round_trip_and_run_retries_it() {
    let daemon = FakeDaemon::start(|peer| {
        // Everything of the first batch arrives before any reply is sent:
        // the reads carry the id a fresh connection's first transaction
        // gets from both daemons.
        let start = peer.expect(MsgType::TransactionStart);
        let reads = [peer.expect(MsgType::Read), peer.expect(MsgType::Read)];
        assert_eq!(start.tx_id, 0);
        assert!(reads.iter().all(|m| m.tx_id == 1), "{reads:?}");
        peer.reply(&start, b"1\0");
        peer.reply(&reads[0], b"0");
        peer.error(&reads[1], Errno::ENOENT);
        // The caller's transaction: first in the id START gave, then, after
        // EAGAIN, in a fresh one.
        peer.write_and_commit(1, Some(Errno::EAGAIN));
        peer.start_transaction(2);
        peer.write_and_commit(2, None);
        // The next transaction on the connection is guessed from the last.
        let start = peer.expect(MsgType::TransactionStart);
        let read = peer.expect(MsgType::Read);
        let end = peer.expect(MsgType::TransactionEnd);
        assert_eq!((read.tx_id, end.tx_id), (3, 3));
        peer.reply(&start, b"3\0");
        peer.reply(&read, b"x");
        peer.reply(&end, wire::OK_PAYLOAD);
    });
    let mut client = daemon.client();
    let (tx, values) = client
        .start_transaction_and_read(&["/be/opened", "/be/missing"])
        .unwrap();
    assert_eq!(values, [Some(b"0".to_vec()), None]);
    assert_eq!(tx.id(), 1);
    let mut runs = 0;
    let ran: Result<u32, xenstore::Error> = tx.run(|tx| {
        runs += 1;
        tx.write("/be/physical-device", "7:0")?;
        Ok(runs)
    });
    assert_eq!(ran.unwrap(), 2);
    assert_eq!(
        client.read_many_atomically(&["/x"]).unwrap(),
        [Some(b"x".to_vec())]
    );
    daemon.finish();
}

#[test]
fn a_wrong_transaction_id_guess_costs_a_round_trip_never_a_value() {
    let daemon = FakeDaemon::start(|peer| {
        let start = peer.expect(MsgType::TransactionStart);
        let read = peer.expect(MsgType::Read);
        assert_eq!(read.tx_id, 1);
        peer.reply(&start, b"9\0");
        // Whatever the requests under the wrong id got is not used: here a
        // value that would be wrong if it were.
        peer.reply(&read, b"not-in-transaction-9");
        let again = peer.expect(MsgType::Read);
        assert_eq!((again.tx_id, again.payload.clone()), (9, read.payload));
        peer.reply(&again, b"right");
        let end = peer.expect(MsgType::TransactionEnd);
        assert_eq!((end.tx_id, end.payload.as_slice()), (9, &b"F\0"[..]));
        peer.reply(&end, wire::OK_PAYLOAD);
        // read_many_atomically: the commit under the wrong id went nowhere;
        // the transaction START opened is read and committed.
        let start = peer.expect(MsgType::TransactionStart);
        let read = peer.expect(MsgType::Read);
        let end = peer.expect(MsgType::TransactionEnd);
        assert_eq!((read.tx_id, end.tx_id), (10, 10));
        peer.reply(&start, b"4\0");
        peer.error(&read, Errno::ENOENT);
        peer.error(&end, Errno::ENOENT);
        let read = peer.expect(MsgType::Read);
        let end = peer.expect(MsgType::TransactionEnd);
        assert_eq!((read.tx_id, end.tx_id), (4, 4));
        peer.reply(&read, b"v");
        peer.reply(&end, wire::OK_PAYLOAD);
    });
    let mut client = daemon.client();
    let (tx, values) = client.start_transaction_and_read(&["/a"]).unwrap();
    assert_eq!((tx.id(), values), (9, vec![Some(b"right".to_vec())]));
    tx.abort().unwrap();
    assert_eq!(
        client.read_many_atomically(&["/a"]).unwrap(),
        [Some(b"v".to_vec())]
    );
    daemon.finish();
}

#[test]
fn no_transaction_id_is_guessed_after_a_raw_request() {
    let daemon = FakeDaemon::start(|peer| {
        // A raw START the engine cannot interpret: it may have opened a
        // transaction with the id a guess would use.
        let raw = peer.expect(MsgType::TransactionStart);
        peer.reply(&raw, b"1\0");
        peer.start_transaction(2);
        let read = peer.expect(MsgType::Read);
        assert_eq!(read.tx_id, 2);
        peer.reply(&read, b"v");
        let end = peer.expect(MsgType::TransactionEnd);
        assert_eq!((end.tx_id, end.payload.as_slice()), (2, &b"T\0"[..]));
        peer.reply(&end, wire::OK_PAYLOAD);
    });
    let mut client = daemon.client();
    client
        .send_raw(MsgType::TransactionStart as u32, 0, b"\0")
        .unwrap();
    assert_eq!(
        client.read_many_atomically(&["/a"]).unwrap(),
        [Some(b"v".to_vec())]
    );
    daemon.finish();
}

#[test]
fn watch_and_write_many_registers_outside_and_writes_inside_in_one_round_trip() {
    let daemon = FakeDaemon::start(|peer| {
        peer.start_transaction(6);
        let watch = peer.expect(MsgType::Watch);
        let writes = [peer.expect(MsgType::Write), peer.expect(MsgType::Write)];
        assert_eq!(watch.tx_id, 0);
        assert_eq!(watch.payload, wire::watch_payload("/be/opened", "tok"));
        assert!(writes.iter().all(|m| m.tx_id == 6), "{writes:?}");
        peer.reply(&watch, wire::OK_PAYLOAD);
        peer.event("/be/opened", "tok");
        peer.reply(&writes[0], wire::OK_PAYLOAD);
        peer.error(&writes[1], Errno::EACCES);
        let end = peer.expect(MsgType::TransactionEnd);
        assert_eq!(end.payload, b"F\0", "the failure aborts");
        peer.reply(&end, wire::OK_PAYLOAD);
    });
    let mut client = daemon.client();
    let err = client
        .transaction(|tx| {
            tx.watch_and_write_many(
                &[("/be/opened", "tok")],
                &[("/be/a", b"1"), ("/be/b", b"2")],
            )
        })
        .unwrap_err();
    assert_eq!(
        (err.errno(), err.path()),
        (Some(Errno::EACCES), Some("/be/b"))
    );
    // The registration's event was queued.
    assert_eq!(
        client.next_event(Some(Duration::ZERO)).unwrap(),
        Some(event("/be/opened", "tok"))
    );
    daemon.finish();
}

#[test]
fn rm_many_pipelines_the_removals_and_reports_the_first_failure() {
    let daemon = FakeDaemon::start(|peer| {
        peer.start_transaction(3);
        let rms = [peer.expect(MsgType::Rm), peer.expect(MsgType::Rm)];
        assert!(rms.iter().all(|m| m.tx_id == 3));
        assert_eq!(rms[0].payload, wire::path_payload("/a"));
        peer.reply(&rms[0], wire::OK_PAYLOAD);
        peer.error(&rms[1], Errno::EACCES);
        let end = peer.expect(MsgType::TransactionEnd);
        assert_eq!(end.payload, b"F\0", "the failure aborts");
        peer.reply(&end, wire::OK_PAYLOAD);
    });
    let mut client = daemon.client();
    let err = client
        .transaction(|tx| tx.rm_many(&["/a", "/b"]))
        .unwrap_err();
    assert_eq!((err.errno(), err.path()), (Some(Errno::EACCES), Some("/b")));
    daemon.finish();
}
