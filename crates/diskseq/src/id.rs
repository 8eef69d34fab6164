//! Names for block devices and files: device numbers, disk sequence numbers,
//! the pair of both, and a file's `(st_dev, st_ino)`.
//!
//! Two text forms exist on purpose. The command line and JSON use decimal,
//! as `lsblk` and `/sys/dev/block` show them (`7:0`, diskseq `42`). Xenstore
//! uses hex, as the hotplug script protocol and the kernel's blkback patches
//! do (`physical-device` = `7:0`, `fd:3`; `diskseq` = `2a`). Keeping the two
//! in distinct, named methods makes it hard to write one where the other
//! belongs.

use std::fmt;
use std::io;
use std::num::NonZeroU64;
use std::os::fd::AsFd;
use std::str::FromStr;

/// Largest major number the kernel can represent (12 bits).
const MAJOR_MAX: u32 = (1 << 12) - 1;
/// Largest minor number the kernel can represent (20 bits).
const MINOR_MAX: u32 = (1 << 20) - 1;
/// A diskseq is a 64-bit counter: at most 16 hex digits.
const SEQ_HEX_DIGITS_MAX: usize = 16;

/// The loop driver's major number (`LOOP_MAJOR` in `include/uapi/linux/major.h`,
/// fixed since the driver's first version). It lives with the other names
/// for devices so that sysfs, the device opener and the loop code all
/// depend on this module and none on each other.
pub const LOOP_MAJOR: u32 = 7;

/// Why a device number or a command-line diskseq could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct ParseError {
    /// What was being parsed ("device number", "diskseq").
    pub what: &'static str,
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ParseError {
    fn new(what: &'static str, input: &str, reason: &'static str) -> Self {
        ParseError {
            what,
            input: input.to_owned(),
            reason,
        }
    }
}

/// Why a xenstore `diskseq` node value was refused. The variants follow the
/// rules of the blkback diskseq patch, so that this userspace backend fails
/// exactly where the kernel would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskSeqParseError {
    /// The node exists but is empty.
    #[error("diskseq must not be empty")]
    Empty,
    /// More than 16 hex digits: cannot be a 64-bit value.
    #[error("diskseq too long ({len} characters, at most 16)")]
    TooLong {
        /// Length of the value in bytes.
        len: usize,
    },
    /// Starts with `0`: a leading zero, a `0x` prefix or the value 0.
    #[error("diskseq must not start with 0")]
    LeadingZero,
    /// Contains a character that is not a hex digit.
    #[error("invalid diskseq")]
    Invalid,
}

/// A block device number, `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevNum {
    /// Major number (driver).
    pub major: u32,
    /// Minor number (instance within the driver).
    pub minor: u32,
}

impl DevNum {
    /// A device number from its parts.
    pub const fn new(major: u32, minor: u32) -> Self {
        DevNum { major, minor }
    }

    /// Splits a kernel `dev_t` (`st_rdev`, `st_dev`) into major and minor.
    pub fn from_rdev(rdev: u64) -> Self {
        DevNum {
            major: rustix::fs::major(rdev),
            minor: rustix::fs::minor(rdev),
        }
    }

    /// The kernel `dev_t` for this number, comparable with `st_rdev`.
    pub fn to_rdev(self) -> u64 {
        rustix::fs::makedev(self.major, self.minor)
    }

    /// Parses the xenstore `physical-device` form: `major:minor` in hex,
    /// either case, padding allowed but not required (`7:0`, `fd:3`, `FD:03`).
    pub fn parse_xenstore(text: &str) -> Result<Self, ParseError> {
        Self::parse_with_radix(text, 16)
    }

    /// The xenstore `physical-device` form: lower-case hex, no padding.
    pub fn to_xenstore(self) -> String {
        format!("{:x}:{:x}", self.major, self.minor)
    }

    fn parse_with_radix(text: &str, radix: u32) -> Result<Self, ParseError> {
        const WHAT: &str = "device number";
        let (major, minor) = text
            .split_once(':')
            .ok_or_else(|| ParseError::new(WHAT, text, "expected MAJOR:MINOR"))?;
        let number = |part: &str, max: u32, name: &'static str| {
            if part.is_empty() || !part.chars().all(|c| c.is_digit(radix)) {
                return Err(ParseError::new(WHAT, text, name));
            }
            match u32::from_str_radix(part, radix) {
                Ok(n) if n <= max => Ok(n),
                _ => Err(ParseError::new(WHAT, text, "number out of range")),
            }
        };
        let (major_bad, minor_bad) = if radix == 16 {
            ("major is not a hex number", "minor is not a hex number")
        } else {
            (
                "major is not a decimal number",
                "minor is not a decimal number",
            )
        };
        Ok(DevNum {
            major: number(major, MAJOR_MAX, major_bad)?,
            minor: number(minor, MINOR_MAX, minor_bad)?,
        })
    }
}

/// Decimal `major:minor`, as `lsblk` and `/sys/dev/block` show it.
impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Parses decimal `major:minor` (the command-line form).
impl FromStr for DevNum {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        Self::parse_with_radix(text, 10)
    }
}

/// A disk sequence number: the kernel's boot-wide, never reused, never zero
/// name for one disk instance (bumped on every loop attach and detach).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiskSeq(NonZeroU64);

impl DiskSeq {
    /// `None` for 0, which the kernel never hands out.
    pub const fn new(value: u64) -> Option<Self> {
        match NonZeroU64::new(value) {
            Some(v) => Some(DiskSeq(v)),
            None => None,
        }
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// The xenstore `diskseq` node form: lower-case hex, no `0x`, no leading
    /// zeros.
    pub fn to_xenstore(self) -> String {
        format!("{:x}", self.get())
    }

    /// Parses a xenstore `diskseq` node by the blkback patch's rules: hex in
    /// either case, no `0x`, at most 16 digits, first digit not `0`.
    pub fn parse_xenstore(text: &str) -> Result<Self, DiskSeqParseError> {
        if text.is_empty() {
            return Err(DiskSeqParseError::Empty);
        }
        if text.len() > SEQ_HEX_DIGITS_MAX {
            return Err(DiskSeqParseError::TooLong { len: text.len() });
        }
        if text.starts_with('0') {
            return Err(DiskSeqParseError::LeadingZero);
        }
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DiskSeqParseError::Invalid);
        }
        let value = u64::from_str_radix(text, 16).map_err(|_| DiskSeqParseError::Invalid)?;
        // Cannot be 0: the first digit is a non-zero hex digit.
        DiskSeq::new(value).ok_or(DiskSeqParseError::LeadingZero)
    }
}

/// Decimal, as sysfs shows it.
impl fmt::Display for DiskSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// The command-line form: decimal, or hex with a `0x` prefix. Zero is refused.
impl FromStr for DiskSeq {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "diskseq";
        let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => (hex, 16),
            None => (text, 10),
        };
        if digits.is_empty() {
            return Err(ParseError::new(WHAT, text, "empty"));
        }
        if !digits.chars().all(|c| c.is_digit(radix)) {
            let reason = if radix == 16 {
                "not a hex number"
            } else {
                "not a decimal number (use 0x for hex)"
            };
            return Err(ParseError::new(WHAT, text, reason));
        }
        let value = u64::from_str_radix(digits, radix)
            .map_err(|_| ParseError::new(WHAT, text, "does not fit in 64 bits"))?;
        DiskSeq::new(value).ok_or_else(|| ParseError::new(WHAT, text, "0 is never a diskseq"))
    }
}

/// One disk instance: a device number together with the diskseq it had.
/// A partition carries its whole disk's diskseq, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiskId {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Disk sequence number of the instance.
    pub seq: DiskSeq,
}

impl DiskId {
    /// The instance `seq` of device `dev`.
    pub const fn new(dev: DevNum, seq: DiskSeq) -> Self {
        DiskId {
            major: dev.major,
            minor: dev.minor,
            seq,
        }
    }

    /// The device number part.
    pub const fn dev(&self) -> DevNum {
        DevNum::new(self.major, self.minor)
    }
}

/// Human form: `7:0 (diskseq 42)`.
impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (diskseq {})", self.dev(), self.seq)
    }
}

/// A file's identity on this host: `(st_dev, st_ino)`. This is what
/// `LOOP_GET_STATUS64` reports for a loop device's backing file, so it is
/// what proves a loop device is bound to *our* file rather than to another
/// file with the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    /// Device of the filesystem holding the file (`st_dev`).
    pub dev: u64,
    /// Inode number (`st_ino`).
    pub ino: u64,
}

impl FileId {
    /// The identity of the file open on `fd`.
    pub fn of(fd: impl AsFd) -> io::Result<FileId> {
        let stat = rustix::fs::fstat(fd)?;
        Ok(FileId {
            dev: stat.st_dev,
            ino: stat.st_ino,
        })
    }
}

/// `inode INO on DEV`, with the filesystem device as `major:minor`.
impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inode {} on {}", self.ino, DevNum::from_rdev(self.dev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn devnum_text_forms() {
        let dev = DevNum::new(253, 3);
        assert_eq!(dev.to_string(), "253:3");
        assert_eq!(dev.to_xenstore(), "fd:3");
        assert_eq!(DevNum::parse_xenstore("FD:03").unwrap(), dev);
        assert_eq!("253:3".parse::<DevNum>().unwrap(), dev);
    }

    #[test]
    fn devnum_refuses_malformed() {
        for bad in [
            "",
            "7",
            "7:",
            ":0",
            "7:0:1",
            "a:0",
            "7:-1",
            " 7:0",
            "7 :0",
            "4096:0",
            "7:1048576",
            "+7:0",
        ] {
            assert!(bad.parse::<DevNum>().is_err(), "{bad:?} accepted");
        }
        for bad in ["", "g:0", "7", "7:x", "1000:0", "0x7:0"] {
            assert!(DevNum::parse_xenstore(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn diskseq_cli_form() {
        assert_eq!("42".parse::<DiskSeq>().unwrap().get(), 42);
        assert_eq!("0x2a".parse::<DiskSeq>().unwrap().get(), 42);
        assert_eq!("0X2A".parse::<DiskSeq>().unwrap().get(), 42);
        let zero = "0".parse::<DiskSeq>().unwrap_err();
        assert_eq!(zero.reason, "0 is never a diskseq");
        assert!("0x0".parse::<DiskSeq>().is_err());
        assert!("".parse::<DiskSeq>().is_err());
        assert!("0x".parse::<DiskSeq>().is_err());
        assert!("2a".parse::<DiskSeq>().is_err());
        assert!("+1".parse::<DiskSeq>().is_err());
        assert!("18446744073709551616".parse::<DiskSeq>().is_err());
        assert_eq!(DiskSeq::new(0), None);
    }

    #[test]
    fn diskseq_xenstore_rules() {
        use DiskSeqParseError::*;
        assert_eq!(DiskSeq::parse_xenstore("2a").unwrap().get(), 42);
        assert_eq!(DiskSeq::parse_xenstore("2A").unwrap().get(), 42);
        assert_eq!(
            DiskSeq::parse_xenstore("ffffffffffffffff").unwrap().get(),
            u64::MAX
        );
        assert_eq!(DiskSeq::parse_xenstore(""), Err(Empty));
        assert_eq!(
            DiskSeq::parse_xenstore("1ffffffffffffffff"),
            Err(TooLong { len: 17 })
        );
        assert_eq!(DiskSeq::parse_xenstore("0"), Err(LeadingZero));
        assert_eq!(DiskSeq::parse_xenstore("02a"), Err(LeadingZero));
        assert_eq!(DiskSeq::parse_xenstore("0x2a"), Err(LeadingZero));
        assert_eq!(DiskSeq::parse_xenstore("2g"), Err(Invalid));
        assert_eq!(DiskSeq::parse_xenstore("-1"), Err(Invalid));
        assert_eq!(Invalid.to_string(), "invalid diskseq");
        assert_eq!(Empty.to_string(), "diskseq must not be empty");
    }

    #[test]
    fn disk_id_human_form() {
        let id = DiskId::new(DevNum::new(7, 0), DiskSeq::new(42).unwrap());
        assert_eq!(id.to_string(), "7:0 (diskseq 42)");
        assert_eq!(id.dev(), DevNum::new(7, 0));
    }

    fn any_dev() -> impl Strategy<Value = DevNum> {
        (0..=MAJOR_MAX, 0..=MINOR_MAX).prop_map(|(major, minor)| DevNum { major, minor })
    }

    fn any_seq() -> impl Strategy<Value = DiskSeq> {
        (1..=u64::MAX).prop_map(|v| DiskSeq::new(v).unwrap())
    }

    proptest! {
        #[test]
        fn devnum_round_trips(dev in any_dev()) {
            prop_assert_eq!(dev.to_string().parse::<DevNum>().unwrap(), dev);
            prop_assert_eq!(DevNum::parse_xenstore(&dev.to_xenstore()).unwrap(), dev);
            prop_assert_eq!(DevNum::parse_xenstore(&dev.to_xenstore().to_uppercase()).unwrap(), dev);
            prop_assert_eq!(DevNum::from_rdev(dev.to_rdev()), dev);
        }

        #[test]
        fn diskseq_round_trips(seq in any_seq()) {
            prop_assert_eq!(seq.to_string().parse::<DiskSeq>().unwrap(), seq);
            prop_assert_eq!(format!("{:#x}", seq.get()).parse::<DiskSeq>().unwrap(), seq);
            let xs = seq.to_xenstore();
            prop_assert!(!xs.starts_with('0'));
            prop_assert_eq!(xs.to_lowercase(), xs.clone());
            prop_assert_eq!(DiskSeq::parse_xenstore(&xs).unwrap(), seq);
            prop_assert_eq!(DiskSeq::parse_xenstore(&xs.to_uppercase()).unwrap(), seq);
        }

        #[test]
        fn diskseq_xenstore_never_panics(text in "\\PC{0,20}") {
            let _ = DiskSeq::parse_xenstore(&text);
            let _ = text.parse::<DiskSeq>();
            let _ = text.parse::<DevNum>();
            let _ = DevNum::parse_xenstore(&text);
        }

        #[test]
        fn diskseq_xenstore_agrees_with_u64(value in any::<u64>(), pad in 0usize..3) {
            let text = format!("{}{:x}", "0".repeat(pad), value);
            let parsed = DiskSeq::parse_xenstore(&text);
            if text.len() > SEQ_HEX_DIGITS_MAX {
                prop_assert_eq!(parsed, Err(DiskSeqParseError::TooLong { len: text.len() }));
            } else if pad == 0 && value != 0 {
                prop_assert_eq!(parsed.unwrap().get(), value);
            } else {
                prop_assert_eq!(parsed, Err(DiskSeqParseError::LeadingZero));
            }
        }
    }
}
