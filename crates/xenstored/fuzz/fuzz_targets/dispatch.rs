//! The daemon's request handling on arbitrary client input: the input is
//! split into chunks, each sent by dom0 or one of two guests (the chunk's
//! first byte picks which) and cut into frames as the server cuts them.
//! Every request must get a well-formed reply and leave the store
//! consistent (`xenstored::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenstored::fuzzing::Engine;

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new();
    // Chunks are separated by the byte 0xA5 0x5A; the first byte of each
    // chunk picks the connection.
    let mut rest = data;
    while let Some((&conn, body)) = rest.split_first() {
        let end = body
            .windows(2)
            .position(|w| w == [0xA5, 0x5A])
            .unwrap_or(body.len());
        engine.feed(conn as usize, &body[..end]);
        rest = body.get(end + 2..).unwrap_or(&[]);
    }
});
