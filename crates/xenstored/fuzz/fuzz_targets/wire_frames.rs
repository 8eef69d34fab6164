//! The wire parser on arbitrary bytes: `Message::parse` must take whole
//! frames or ask for more, never panic, refuse an oversized frame, and
//! every frame it takes must encode back to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenstore::wire::{self, Header, Message, HEADER_SIZE, PAYLOAD_MAX};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match Message::parse(rest) {
            Ok(Some((message, used))) => {
                assert!(used >= HEADER_SIZE && used <= rest.len());
                assert!(message.payload.len() <= PAYLOAD_MAX);
                assert_eq!(message.encode(), &rest[..used], "re-encoding differs");
                let _ = message.kind();
                let _ = wire::parse_error_payload(&message.payload);
                let _ = wire::fields(&message.payload).count();
                rest = &rest[used..];
            }
            Ok(None) => {
                if rest.len() >= HEADER_SIZE {
                    let header = Header::decode(rest[..HEADER_SIZE].try_into().unwrap());
                    assert!(HEADER_SIZE + header.len as usize > rest.len(), "whole frame not taken");
                }
                break;
            }
            Err(_) => break,
        }
    }
    // The blocking reader agrees with the buffer parser on the first frame.
    let parsed = Message::parse(data).ok().flatten().map(|(m, _)| m);
    let read = Message::read_from(&mut &data[..]).ok();
    if let Some(parsed) = parsed {
        assert_eq!(read.as_ref(), Some(&parsed));
    }
});
