//! The kernel ioctls this crate uses, as thin safe functions.
//!
//! This is the only module with `unsafe`. Each call names its opcode with a
//! typed `rustix::ioctl` pattern whose argument type is the one the kernel
//! reads or writes for that opcode (structs from `linux-raw-sys`, generated
//! from the kernel's UAPI headers), so the safety argument is local and
//! checkable: right opcode, right argument type, argument alive for the call.
//!
//! These functions do no verification of their own; the rest of the crate
//! builds the checked operations on top. They are public so that benchmarks
//! and tests can measure and drive the bare kernel sequence.

use std::ffi::c_void;
use std::io;
use std::os::fd::BorrowedFd;

use linux_raw_sys::ioctl as blk;
use linux_raw_sys::loop_device as lo;
use rustix::io::Errno;
use rustix::ioctl::{ioctl, Getter, Ioctl, IoctlOutput, NoArg, Opcode, Setter};

pub use linux_raw_sys::loop_device::{loop_config, loop_info64};

/// `LO_FLAGS_READ_ONLY`: the loop device refuses writes.
pub const LO_FLAGS_READ_ONLY: u32 = lo::LO_FLAGS_READ_ONLY as u32;
/// `LO_FLAGS_AUTOCLEAR`: detach at the last close.
pub const LO_FLAGS_AUTOCLEAR: u32 = lo::LO_FLAGS_AUTOCLEAR as u32;
/// `LO_FLAGS_PARTSCAN`: the loop disk may carry partitions.
pub const LO_FLAGS_PARTSCAN: u32 = lo::LO_FLAGS_PARTSCAN as u32;
/// `LO_FLAGS_DIRECT_IO`: I/O to the backing file bypasses the page cache.
pub const LO_FLAGS_DIRECT_IO: u32 = lo::LO_FLAGS_DIRECT_IO as u32;

const BLKGETDISKSEQ: Opcode = blk::BLKGETDISKSEQ as Opcode;
const BLKGETSIZE64: Opcode = blk::BLKGETSIZE64 as Opcode;
const BLKROGET: Opcode = blk::BLKROGET as Opcode;
const BLKPG: Opcode = blk::BLKPG as Opcode;
const LOOP_CTL_GET_FREE: Opcode = lo::LOOP_CTL_GET_FREE as Opcode;
const LOOP_CTL_ADD: Opcode = lo::LOOP_CTL_ADD as Opcode;
const LOOP_CONFIGURE: Opcode = lo::LOOP_CONFIGURE as Opcode;
const LOOP_GET_STATUS64: Opcode = lo::LOOP_GET_STATUS64 as Opcode;
const LOOP_SET_STATUS64: Opcode = lo::LOOP_SET_STATUS64 as Opcode;
const LOOP_CLR_FD: Opcode = lo::LOOP_CLR_FD as Opcode;

/// `BLKPG_ADD_PARTITION` / `BLKPG_DEL_PARTITION` (linux/blkpg.h; not in
/// linux-raw-sys).
const BLKPG_ADD_PARTITION: i32 = 1;
const BLKPG_DEL_PARTITION: i32 = 2;

/// `struct blkpg_ioctl_arg` from linux/blkpg.h.
#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut c_void,
}

/// `struct blkpg_partition` from linux/blkpg.h.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// An ioctl that takes an integer (not a pointer) and whose result is the
/// syscall's return value (`LOOP_CTL_GET_FREE` and `LOOP_CTL_ADD` return a
/// minor). rustix's `NoArg` and `IntegerSetter` discard the return value,
/// hence this small pattern.
struct ReturnsInt<const OPCODE: Opcode> {
    arg: isize,
}

// SAFETY: the argument is passed as a plain integer that the kernel never
// dereferences, and nothing is read back from userspace memory; the output
// is the syscall's return value. Only instantiated below for loop-control
// opcodes, which take an integer and return an int.
unsafe impl<const OPCODE: Opcode> Ioctl for ReturnsInt<OPCODE> {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        OPCODE
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::without_provenance_mut(self.arg as usize)
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// `BLKGETDISKSEQ`: the disk sequence number of the disk open on `fd` (the
/// whole disk's for a partition). `Ok(None)` when the kernel or the driver
/// does not support it: ENOTTY in general, EINVAL from the loop driver.
pub fn disk_seq(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    // SAFETY: BLKGETDISKSEQ is _IOR(0x12, 128, __u64): the kernel writes one u64.
    match unsafe { ioctl(fd, Getter::<BLKGETDISKSEQ, u64>::new()) } {
        Ok(seq) => Ok(Some(seq)),
        Err(Errno::NOTTY | Errno::INVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `BLKGETSIZE64`: size in bytes.
pub fn size_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: BLKGETSIZE64 is _IOR(0x12, 114, size_t); the kernel writes a u64.
    Ok(unsafe { ioctl(fd, Getter::<BLKGETSIZE64, u64>::new()) }?)
}

/// `BLKSSZGET`: logical block size in bytes (rustix's own wrapper).
pub fn logical_block_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(rustix::fs::ioctl_blksszget(fd)?)
}

/// `BLKPBSZGET`: physical block size in bytes (rustix's own wrapper).
pub fn physical_block_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(rustix::fs::ioctl_blkpbszget(fd)?)
}

/// `BLKROGET`: whether the device is read-only.
pub fn read_only(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: BLKROGET writes an int.
    let ro = unsafe { ioctl(fd, Getter::<BLKROGET, i32>::new()) }?;
    Ok(ro != 0)
}

/// `LOOP_CTL_GET_FREE` on `/dev/loop-control`: a minor that is free *now*
/// (created if needed). Not reserved: another process may take it first.
pub fn loop_ctl_get_free(control: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE ignores its argument and returns the minor.
    let minor = unsafe { ioctl(control, ReturnsInt::<LOOP_CTL_GET_FREE> { arg: 0 }) }?;
    u32::try_from(minor)
        .map_err(|_| io::Error::other("LOOP_CTL_GET_FREE returned a negative minor"))
}

/// `LOOP_CTL_ADD(-1)` on `/dev/loop-control`: creates a new loop device
/// with the lowest unused index and returns its minor. Used when the device
/// `LOOP_CTL_GET_FREE` keeps naming is claimed by someone who does not bind it.
pub fn loop_ctl_add_any(control: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_ADD takes the wanted index as an integer (-1: any)
    // and returns the new minor.
    let minor = unsafe { ioctl(control, ReturnsInt::<LOOP_CTL_ADD> { arg: -1 }) }?;
    u32::try_from(minor).map_err(|_| io::Error::other("LOOP_CTL_ADD returned a negative minor"))
}

/// `LOOP_CONFIGURE`: bind the backing file `config.fd` with the given flags,
/// offset, size limit and block size, in one step.
pub fn loop_configure(fd: BorrowedFd<'_>, config: &loop_config) -> io::Result<()> {
    // SAFETY: LOOP_CONFIGURE reads a struct loop_config; the kernel copies
    // it in and does not keep the pointer.
    Ok(unsafe { ioctl(fd, Setter::<LOOP_CONFIGURE, loop_config>::new(*config)) }?)
}

/// `LOOP_GET_STATUS64`: the binding of a loop device (ENXIO when unbound).
pub fn loop_get_status(fd: BorrowedFd<'_>) -> io::Result<loop_info64> {
    // SAFETY: LOOP_GET_STATUS64 writes a struct loop_info64.
    Ok(unsafe { ioctl(fd, Getter::<LOOP_GET_STATUS64, loop_info64>::new()) }?)
}

/// `LOOP_SET_STATUS64`: change the settable flags (autoclear, partscan),
/// offset and size limit of a bound loop device.
pub fn loop_set_status(fd: BorrowedFd<'_>, info: &loop_info64) -> io::Result<()> {
    // SAFETY: LOOP_SET_STATUS64 reads a struct loop_info64.
    Ok(unsafe { ioctl(fd, Setter::<LOOP_SET_STATUS64, loop_info64>::new(*info)) }?)
}

/// `LOOP_CLR_FD`: detach. While other fds are open the kernel only marks the
/// device autoclear; the detach then happens at the last close.
pub fn loop_clr_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD ignores its argument.
    Ok(unsafe { ioctl(fd, NoArg::<LOOP_CLR_FD>::new()) }?)
}

fn blkpg(fd: BorrowedFd<'_>, op: i32, mut part: BlkpgPartition) -> io::Result<()> {
    let arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG reads a struct blkpg_ioctl_arg whose `data` points to a
    // struct blkpg_partition of `datalen` bytes; `part` outlives the call.
    Ok(unsafe { ioctl(fd, Setter::<BLKPG, BlkpgIoctlArg>::new(arg)) }?)
}

/// `BLKPG_ADD_PARTITION`: add partition `number` covering `len` bytes from
/// byte `start` of the disk open on `fd`. For tests: this host has no
/// partition-table parsers. A loop disk needs `LO_FLAGS_PARTSCAN` for this.
pub fn add_partition(fd: BorrowedFd<'_>, number: u32, start: u64, len: u64) -> io::Result<()> {
    let out_of_range = || io::Error::from(io::ErrorKind::InvalidInput);
    let part = BlkpgPartition {
        start: i64::try_from(start).map_err(|_| out_of_range())?,
        length: i64::try_from(len).map_err(|_| out_of_range())?,
        pno: i32::try_from(number).map_err(|_| out_of_range())?,
        devname: [0; 64],
        volname: [0; 64],
    };
    blkpg(fd, BLKPG_ADD_PARTITION, part)
}

/// `BLKPG_DEL_PARTITION`: remove partition `number` of the disk open on `fd`.
pub fn delete_partition(fd: BorrowedFd<'_>, number: u32) -> io::Result<()> {
    let part = BlkpgPartition {
        start: 0,
        length: 0,
        pno: i32::try_from(number).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        devname: [0; 64],
        volname: [0; 64],
    };
    blkpg(fd, BLKPG_DEL_PARTITION, part)
}

/// An all-zero `loop_info64`, the starting point for `LOOP_CONFIGURE`.
pub fn empty_loop_info() -> loop_info64 {
    loop_info64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: 0,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    }
}
