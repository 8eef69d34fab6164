//! `/dev/disk/by-diskseq/<N>` and `…/<N>-part<P>`: systemd-udev's names for
//! a disk instance and its partitions (udev 251+, `60-persistent-storage`
//! rules). Unlike `/dev/sdb` or `7:0`, such a name can never come to mean
//! another disk: the number is never reused within a boot. A toolstack that
//! learned a disk's name long before it attaches it (a person choosing from
//! a listing) can pass it and lose nothing to the wait.
//!
//! The name is resolved here whether or not the link exists (dom0s often
//! run without udev): [`PinnedPath::open`] finds the disk by its sequence
//! number and proves it on the fd; a disk that is gone is an error, never
//! another disk.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::device::{open_by_diskseq, Access, BlockDevice};
use crate::error::Result;
use crate::id::DiskSeq;

/// Where udev puts the links.
pub const BY_DISKSEQ_DIR: &str = "/dev/disk/by-diskseq";

/// A disk instance, or one of its partitions, named by sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedPath {
    /// The disk's sequence number.
    pub seq: DiskSeq,
    /// The partition number, for a partition.
    pub partition: Option<u32>,
}

impl PinnedPath {
    /// Recognises `/dev/disk/by-diskseq/<N>` and `…/<N>-part<P>` (decimal,
    /// as udev writes them: no sign, no leading zero, `P` ≥ 1). Any other
    /// path is `None`: it is not a pinned name, whatever it points to.
    pub fn parse(path: &Path) -> Option<PinnedPath> {
        let name = path.strip_prefix(BY_DISKSEQ_DIR).ok()?.to_str()?;
        let (seq, partition) = match name.split_once("-part") {
            Some((seq, part)) => (seq, Some(decimal(part)?)),
            None => (name, None),
        };
        let seq = DiskSeq::new(decimal(seq)?)?;
        if partition == Some(0) {
            return None;
        }
        let partition = partition.map(u32::try_from).transpose().ok()?;
        Some(PinnedPath { seq, partition })
    }

    /// The path udev would make for it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(self.to_string())
    }

    /// Opens the instance: through the link where udev made one that leads
    /// to it, else by a sysfs scan; proven on the fd either way.
    /// [`Error::NoSuchDiskSeq`](crate::Error::NoSuchDiskSeq) or
    /// [`Error::NoSuchPartition`](crate::Error::NoSuchPartition) when it is
    /// gone.
    pub fn open(&self, access: Access) -> Result<BlockDevice> {
        open_by_diskseq(self.seq, self.partition, access)
    }
}

impl fmt::Display for PinnedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{BY_DISKSEQ_DIR}/{}", self.seq)?;
        if let Some(partition) = self.partition {
            write!(f, "-part{partition}")?;
        }
        Ok(())
    }
}

/// Digits only, no leading zero (but "0" itself).
fn decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Option<(u64, Option<u32>)> {
        PinnedPath::parse(Path::new(text)).map(|p| (p.seq.get(), p.partition))
    }

    #[test]
    fn udev_names_and_nothing_else() {
        assert_eq!(parse("/dev/disk/by-diskseq/42"), Some((42, None)));
        assert_eq!(parse("/dev/disk/by-diskseq/42-part3"), Some((42, Some(3))));
        for bad in [
            "/dev/disk/by-diskseq/",
            "/dev/disk/by-diskseq/0",
            "/dev/disk/by-diskseq/042",
            "/dev/disk/by-diskseq/42-part0",
            "/dev/disk/by-diskseq/42-part01",
            "/dev/disk/by-diskseq/42-part",
            "/dev/disk/by-diskseq/+42",
            "/dev/disk/by-diskseq/42/x",
            "/dev/disk/by-diskseq/2a",
            "/dev/disk/by-diskseq/18446744073709551616",
            "/dev/disk/by-diskseq/1-part4294967296",
            "/dev/disk/by-id/42",
            "disk/by-diskseq/42",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let pinned = PinnedPath::parse(Path::new("/dev/disk/by-diskseq/7-part1")).unwrap();
        assert_eq!(pinned.path(), Path::new("/dev/disk/by-diskseq/7-part1"));
    }
}
