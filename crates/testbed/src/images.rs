//! Files to back loop devices, each recognisable by its contents: a read
//! through a device proves which file it shows.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use diskseq::FileId;
use tempfile::NamedTempFile;

/// A temporary file filled with one byte value (`tag`), so that reads
/// prove which file a device shows. Removed when dropped.
pub struct Backing {
    /// The file.
    pub file: NamedTempFile,
    /// The byte every block of it holds.
    pub tag: u8,
}

impl Backing {
    /// A file of `size` bytes, every byte `tag`.
    pub fn new(size: u64, tag: u8) -> Backing {
        let mut file = NamedTempFile::new().expect("create backing file");
        let block = vec![tag; 4096];
        let mut written = 0;
        while written < size {
            let n = (size - written).min(block.len() as u64) as usize;
            file.write_all(&block[..n]).expect("fill backing file");
            written += n as u64;
        }
        file.flush().expect("flush backing file");
        Backing { file, tag }
    }

    /// The read-write fd to attach.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_file().as_fd()
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Its `(st_dev, st_ino)`.
    pub fn id(&self) -> FileId {
        FileId::of(self.file.as_file()).expect("stat backing file")
    }

    /// The same file opened read-only.
    pub fn open_read_only(&self) -> File {
        OpenOptions::new()
            .read(true)
            .open(self.path())
            .expect("open backing file read-only")
    }
}

/// A sparse image `dir/name` of `size` bytes whose first sector starts with
/// `marker` (the rest zeros): what the demo and the backend tests read back
/// through a device to tell images apart.
pub fn marked_image(dir: &Path, name: &str, marker: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    let mut file = File::create(&path).expect("create image");
    let mut sector = vec![0u8; 512];
    sector[..marker.len()].copy_from_slice(marker.as_bytes());
    file.write_all(&sector).expect("write image marker");
    file.set_len(size).expect("size image");
    path
}

/// A sparse image `dir/name` of `mib` MiB, zeros throughout.
pub fn sparse_image(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let path = dir.join(name);
    File::create(&path)
        .and_then(|file| file.set_len(mib << 20))
        .expect("create sparse image");
    path
}

/// Reads `len` bytes at `offset` from a device or file.
pub fn read_at(fd: impl AsFd, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = rustix::io::pread(fd, &mut buf, offset).expect("pread");
    buf.truncate(n);
    buf
}
