//! Payload parsing shared by the request handlers: the C daemon's
//! `onearg` and `get_strings`, domids, and the path-length rule's notion of
//! "below a home". Malformed input is EINVAL, never a panic.

use xenstore::wire::{Errno, OK_PAYLOAD};

pub(super) fn ack(_: ()) -> Vec<u8> {
    OK_PAYLOAD.to_vec()
}

/// The single NUL-terminated argument of a request (`onearg` in the C
/// daemon): exactly one NUL, at the end.
pub(super) fn one_arg(payload: &[u8]) -> Result<&[u8], Errno> {
    match payload.split_last() {
        Some((0, arg)) if !arg.contains(&0) => Ok(arg),
        _ => Err(Errno::EINVAL),
    }
}

/// The NUL-terminated strings of a payload (anything after the last NUL is
/// ignored, as `get_strings` does).
pub(super) fn strings(payload: &[u8]) -> Vec<&[u8]> {
    let end = payload.iter().rposition(|b| *b == 0).map_or(0, |i| i + 1);
    if end == 0 {
        return Vec::new();
    }
    payload[..end - 1].split(|b| *b == 0).collect()
}

pub(super) fn utf8(bytes: &[u8]) -> Result<&str, Errno> {
    std::str::from_utf8(bytes).map_err(|_| Errno::EINVAL)
}

pub(super) fn parse_domid(bytes: &[u8]) -> Result<u32, Errno> {
    let text = utf8(bytes)?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Errno::EINVAL);
    }
    text.parse().map_err(|_| Errno::EINVAL)
}

/// The part of `path` below `/local/domain/<domid>/`, for the path-length
/// quota (the whole path when it is not below a domain's home).
pub(super) fn below_any_home(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/local/domain/") else {
        return path;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    match rest[digits..].strip_prefix('/') {
        Some(tail) if digits > 0 => tail,
        _ => path,
    }
}
