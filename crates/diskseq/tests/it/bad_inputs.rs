//! Bad inputs give specific errors that name what was wrong. None of these
//! needs root.

use std::io::ErrorKind;
use std::path::Path;

use diskseq::{open_verified, Access, BlockDevice, DevNum, DiskId, DiskSeq, Error};

fn not_block(path: &Path, access: Access) -> &'static str {
    match BlockDevice::open(path, access) {
        Err(err @ Error::NotBlockDevice { .. }) => {
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
            let Error::NotBlockDevice { what, path: named } = err else {
                unreachable!()
            };
            assert_eq!(named, path);
            what
        }
        other => panic!("{}: expected NotBlockDevice, got {other:?}", path.display()),
    }
}

#[test]
fn missing_path_names_the_path() {
    let path = Path::new("/nonexistent/diskseq-test");
    match BlockDevice::open(path, Access::ReadOnly) {
        Err(err @ Error::Io { .. }) => {
            assert!(
                err.to_string().contains("/nonexistent/diskseq-test"),
                "{err}"
            );
            let Error::Io { source, .. } = err else {
                unreachable!()
            };
            assert_eq!(source.kind(), ErrorKind::NotFound);
        }
        other => panic!("expected Io NotFound, got {other:?}"),
    }
}

#[test]
fn directory_is_refused_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(not_block(dir.path(), Access::ReadOnly), "a directory");
    assert_eq!(not_block(dir.path(), Access::ReadWrite), "a directory");
}

#[test]
fn character_device_is_refused() {
    assert_eq!(
        not_block(Path::new("/dev/null"), Access::ReadOnly),
        "a character device"
    );
}

#[test]
fn regular_file_is_refused() {
    let file = tempfile::NamedTempFile::new().unwrap();
    assert_eq!(not_block(file.path(), Access::ReadWrite), "a regular file");
    let fd = std::os::fd::OwnedFd::from(file.reopen().unwrap());
    match BlockDevice::from_fd(fd, file.path().to_owned()) {
        Err(Error::NotBlockDevice { what, .. }) => assert_eq!(what, "a regular file"),
        other => panic!("expected NotBlockDevice, got {other:?}"),
    }
}

#[test]
fn fifo_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    testbed::fifo::mkfifo(&fifo);
    assert_eq!(not_block(&fifo, Access::ReadOnly), "a FIFO");
}

#[test]
fn seq_zero_is_invalid() {
    assert_eq!(DiskSeq::new(0), None);
    let err = "0".parse::<DiskSeq>().unwrap_err();
    assert!(err.to_string().contains("0 is never a diskseq"), "{err}");
    assert!("0x0".parse::<DiskSeq>().is_err());
    assert_eq!(
        DiskSeq::parse_xenstore("0"),
        Err(diskseq::DiskSeqParseError::LeadingZero)
    );
}

#[test]
fn malformed_device_numbers_are_refused() {
    for bad in [
        "7", "7:", "7-0", "x:0", "7:0x1", "", "-1:0", "7:0:0", "99999:0",
    ] {
        let err = bad.parse::<DevNum>().unwrap_err();
        assert!(
            err.to_string().contains("invalid device number"),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn unknown_device_number_is_no_such_device() {
    let id = DiskId::new(DevNum::new(4095, 1048575), DiskSeq::new(1).unwrap());
    match open_verified(id, Access::ReadOnly) {
        Err(err @ Error::NoSuchDevice { .. }) => {
            assert!(!err.is_stale());
            assert!(err.to_string().contains("4095:1048575"), "{err}");
        }
        other => panic!("expected NoSuchDevice, got {other:?}"),
    }
}
