//! Path and permission parsing on arbitrary strings: no panic; what parses
//! prints back to itself and parses again to the same value; resolved
//! paths are absolute or special and within the length limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenstore::path::{XsPath, ABS_PATH_MAX};
use xenstore::perms::Perms;

fuzz_target!(|data: &[u8]| {
    let Some((&domid, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if let Ok(path) = XsPath::resolve(text, u32::from(domid)) {
        let s = path.as_str();
        assert!(s.starts_with('/') || s.starts_with('@'), "{s:?}");
        assert!(s.len() <= ABS_PATH_MAX, "{} bytes", s.len());
        assert_eq!(XsPath::parse_absolute(s).as_ref().map(XsPath::as_str), Ok(s));
        if let Some(parent) = path.parent() {
            assert!(path.is_at_or_below(&parent));
            assert_eq!(parent.join(path.name()).as_ref().map(XsPath::as_str), Ok(s));
        }
        let _ = XsPath::validate_request(text);
    }
    if let Ok(perms) = text.parse::<Perms>() {
        let printed = perms.to_string();
        assert_eq!(printed.parse::<Perms>().as_ref(), Ok(&perms), "{printed:?}");
        let payload = perms.to_payload();
        let fields = payload.split(|b| *b == 0).filter(|f| !f.is_empty());
        assert_eq!(Perms::parse_fields(fields).as_ref(), Ok(&perms));
    }
});
