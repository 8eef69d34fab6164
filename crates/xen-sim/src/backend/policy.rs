//! What the backend does with the `diskseq` node.
//!
//! The rules for the value are our kernel patch's (kernel/patches, after
//! patch 13/16 of the 2023 series, but lower case only), implemented once,
//! in [`vbd::schema::diskseq_from_node`]; this module only decides what a missing or malformed node means for the
//! device and which errno the error node carries.

use diskseq::{DiskSeq, DiskSeqParseError};
use rustix::io::Errno;
use vbd::schema::diskseq_from_node;

use crate::backend::Fatal;

/// How strictly the backend treats the `diskseq` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskseqPolicy {
    /// Check it when present; a record without it is served as before
    /// (legacy scripts). blkback with the patch behaves so.
    #[default]
    Verify,
    /// Refuse a record without `diskseq` (`--require-diskseq`).
    Require,
    /// Never read it: stock blkback without the patch. Only for showing what
    /// the check prevents (the demo's "legacy backend").
    Ignore,
}

/// The sequence number the opened disk must have, if any, or the fatal
/// error for the device.
pub fn expected_diskseq(
    raw: Option<&[u8]>,
    policy: DiskseqPolicy,
) -> Result<Option<DiskSeq>, Fatal> {
    if policy == DiskseqPolicy::Ignore {
        return Ok(None);
    }
    let Some(raw) = raw else {
        return match policy {
            DiskseqPolicy::Require => Err(Fatal::new(
                Errno::NOENT,
                "reading diskseq: missing, and this backend requires it",
            )),
            _ => Ok(None),
        };
    };
    diskseq_from_node(raw).map(Some).map_err(|e| {
        let errno = match e {
            DiskSeqParseError::TooLong { .. } | DiskSeqParseError::LeadingZero => Errno::RANGE,
            _ => Errno::INVAL,
        };
        Fatal::new(errno, format!("{e}: {:?}", String::from_utf8_lossy(raw)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patch's rules, table-driven: value → (errno, message prefix), or
    /// the accepted number.
    #[test]
    fn kernel_patch_parse_rules() {
        enum Want {
            Seq(u64),
            Refused(Errno, &'static str),
        }
        use Want::*;
        let table: &[(&[u8], Want)] = &[
            (b"1", Seq(1)),
            (b"2a", Seq(0x2a)),
            (b"2A", Refused(Errno::INVAL, "invalid diskseq")),
            (b"ffffffffffffffff", Seq(u64::MAX)),
            (
                b"FFFFFFFFFFFFFFFF",
                Refused(Errno::INVAL, "invalid diskseq"),
            ),
            (
                b"0A",
                Refused(Errno::RANGE, "diskseq must not start with 0"),
            ),
            (
                b"1000000000000000A",
                Refused(Errno::RANGE, "diskseq too long"),
            ),
            (b"123456789abcdef0", Seq(0x1234_5678_9abc_def0)),
            (b"", Refused(Errno::INVAL, "diskseq must not be empty")),
            (
                b"10000000000000000",
                Refused(Errno::RANGE, "diskseq too long"),
            ),
            (b"0", Refused(Errno::RANGE, "diskseq must not start with 0")),
            (
                b"01",
                Refused(Errno::RANGE, "diskseq must not start with 0"),
            ),
            (
                b"0x1f",
                Refused(Errno::RANGE, "diskseq must not start with 0"),
            ),
            (b"1g", Refused(Errno::INVAL, "invalid diskseq")),
            (b"-1", Refused(Errno::INVAL, "invalid diskseq")),
            (b"+1", Refused(Errno::INVAL, "invalid diskseq")),
            (b" 1", Refused(Errno::INVAL, "invalid diskseq")),
            (b"1 ", Refused(Errno::INVAL, "invalid diskseq")),
            (b"1\n", Refused(Errno::INVAL, "invalid diskseq")),
            (b"\xff", Refused(Errno::INVAL, "invalid diskseq")),
        ];
        for (raw, want) in table {
            let got = expected_diskseq(Some(raw), DiskseqPolicy::Verify);
            match (want, got) {
                (Seq(n), Ok(Some(seq))) => assert_eq!(seq.get(), *n, "{raw:?}"),
                (Refused(errno, msg), Err(fatal)) => {
                    assert_eq!(fatal.errno, errno.raw_os_error(), "{raw:?}: {fatal}");
                    assert!(fatal.message.starts_with(msg), "{raw:?}: {fatal}");
                }
                (_, got) => panic!("{raw:?}: unexpected {got:?}"),
            }
            // Require applies the same rules to a present value.
            assert_eq!(
                expected_diskseq(Some(raw), DiskseqPolicy::Require).is_ok(),
                matches!(want, Seq(_)),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn absent_node_is_legacy_unless_required() {
        assert_eq!(expected_diskseq(None, DiskseqPolicy::Verify), Ok(None));
        let fatal = expected_diskseq(None, DiskseqPolicy::Require).unwrap_err();
        assert_eq!(fatal.errno, Errno::NOENT.raw_os_error());
        assert!(fatal.message.contains("diskseq"), "{fatal}");
    }

    #[test]
    fn ignore_never_reads_the_node() {
        for raw in [None, Some(&b"2a"[..]), Some(&b"0"[..]), Some(&b""[..])] {
            assert_eq!(
                expected_diskseq(raw, DiskseqPolicy::Ignore),
                Ok(None),
                "{raw:?}"
            );
        }
    }
}
