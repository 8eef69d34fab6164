//! Loop devices bound to a given file, for the sharing check.
//!
//! Found through `/proc/partitions`, which lists only block devices with a
//! capacity: unbound loop minors (a busy host can accumulate hundreds) cost
//! nothing, where walking `/sys/block` costs a path lookup per minor. Each
//! candidate is then opened and asked (`LOOP_GET_STATUS64`) which inode it
//! is bound to: the kernel's answer, not a name. A loop device bound to an
//! empty file has no capacity and is not listed; it cannot serve a disk.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use diskseq::{BlockDevice, DevNum, FileId, LoopInfo, LOOP_MAJOR};
use rustix::fs::{Mode, OFlags};

use super::error::HotplugError;

/// Bound loop devices whose backing file is `backing`, except the device
/// numbered `except` (the caller's own, already known: not even opened).
///
/// Each candidate costs an open and one `LOOP_GET_STATUS64`; only devices
/// bound to our inode are then described in full. (A burst of concurrent
/// adds has every script look at every other script's device.)
pub fn bound_to(
    proc_root: &Path,
    backing: FileId,
    except: DevNum,
) -> Result<Vec<LoopInfo>, HotplugError> {
    let path = proc_root.join("partitions");
    let text = read_small(&path).map_err(|source| HotplugError::Io {
        path: path.clone(),
        op: "reading",
        source,
    })?;
    let mut found = Vec::new();
    for (dev, name) in loop_disks(&text).filter(|(dev, _)| *dev != except) {
        let node = Path::new("/dev").join(&name);
        // Detached or removed since the listing: not a user.
        let Ok(fd) = rustix::fs::open(&node, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        else {
            continue;
        };
        let is_that_device =
            rustix::fs::fstat(&fd).is_ok_and(|st| DevNum::from_rdev(st.st_rdev) == dev);
        let bound_to_ours = is_that_device
            && diskseq::ioctl::loop_get_status(fd.as_fd()).is_ok_and(|info| {
                FileId {
                    dev: info.lo_device,
                    ino: info.lo_inode,
                } == backing
            });
        if !bound_to_ours {
            continue;
        }
        let device = BlockDevice::from_fd(fd, node)?;
        if let Some(info) = diskseq::loop_info(&device)? {
            if info.backing == backing {
                found.push(info);
            }
        }
    }
    Ok(found)
}

/// A small procfs file, read with one `open`, as few `read`s as its size
/// needs and one `close`: `std::fs::read_to_string` adds an `fstat` (procfs
/// reports size 0), musl's `fcntl(FD_CLOEXEC)` and 32-byte first reads,
/// and on real Xen each system call costs about a millisecond in a loaded
/// dom0 (docs/real-xen.md, "Issue 10 on real Xen").
fn read_small(path: &Path) -> std::io::Result<String> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    // On the stack: a heap buffer this size costs musl's malloc an `mmap`
    // and a `munmap` (seen under strace in dom0).
    let mut chunk = [0u8; 4096];
    let mut bytes = Vec::new();
    loop {
        match rustix::io::read(&fd, &mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Whole loop disks in a `/proc/partitions` text: `(dev, name)`.
fn loop_disks(text: &str) -> impl Iterator<Item = (DevNum, PathBuf)> + '_ {
    text.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let major: u32 = fields.next()?.parse().ok()?;
        let minor: u32 = fields.next()?.parse().ok()?;
        let _blocks = fields.next()?;
        let name = fields.next()?;
        let number = name.strip_prefix("loop")?;
        let whole_disk =
            major == LOOP_MAJOR && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
        whole_disk.then(|| (DevNum { major, minor }, PathBuf::from(name)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_loop_disks_are_candidates() {
        let text = "major minor  #blocks  name\n\n 254        0  268435456 vda\n   7        3      65536 loop3\n 259        0       1024 loop3p1\n   7       12       4096 loop12\n   7       13       4096 loopy\n";
        let disks: Vec<_> = loop_disks(text).collect();
        assert_eq!(
            disks,
            vec![
                (DevNum { major: 7, minor: 3 }, PathBuf::from("loop3")),
                (
                    DevNum {
                        major: 7,
                        minor: 12
                    },
                    PathBuf::from("loop12")
                ),
            ]
        );
    }
}
