//! Test bed for the hotplug script: a private xenstored, backend directories
//! written exactly as libxl writes them, image files, a stand-in sysfs, and
//! the script run as its own process, the way libxl runs it.
//!
//! The script process is this very test executable re-run with
//! `--exact support::script_entry --ignored`: that test below turns into
//! `vbd::hotplug::main` when `BLOCK_DISKSEQ_TEST_ARGS` is set. The test
//! executable links `vbd` with the `fault-injection` feature (vbd's
//! dev-dependency on itself), so SIGKILL steps work without a special build.

use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use diskseq::{Access, DiskId, DiskSeq, FileId};
use vbd::schema::{node, BackendPath};
use xenstore::client::Client;
use xenstore::perms::{Perm, PermAccess, Perms};

/// Not a test: the hotplug script's entry point in child processes.
#[test]
#[ignore = "not a test: the hotplug script's entry point for child processes"]
fn script_entry() {
    if let Some(args) = std::env::var_os("BLOCK_DISKSEQ_TEST_ARGS") {
        let args: Vec<std::ffi::OsString> =
            args.to_string_lossy().split(' ').map(Into::into).collect();
        std::process::exit(vbd::hotplug::main(args));
    }
}

/// One test's world: daemon, temp dir, stand-in sysfs.
pub struct Bed {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub sysfs: PathBuf,
    pub log: PathBuf,
    daemon: Option<xenstored::DaemonHandle>,
}

impl Bed {
    pub fn new() -> Bed {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("xenstored.sock");
        let daemon =
            xenstored::Daemon::start(xenstored::Config::new(&socket)).expect("start xenstored");
        // The stand-in sysfs: the real device tree (for partitions), and a
        // xen-backend bus the test controls.
        let sysfs = dir.path().join("sys");
        std::fs::create_dir_all(sysfs.join("bus/xen-backend/devices")).unwrap();
        std::os::unix::fs::symlink("/sys/dev", sysfs.join("dev")).unwrap();
        std::os::unix::fs::symlink("/sys/devices", sysfs.join("devices")).unwrap();
        let log = dir.path().join("xen-hotplug.log");
        Bed {
            dir,
            socket,
            sysfs,
            log,
            daemon: Some(daemon),
        }
    }

    pub fn client(&self) -> Client {
        Client::connect_socket(&self.socket).expect("connect to test xenstored")
    }

    /// A sparse image file of `mib` MiB.
    pub fn image(&self, name: &str, mib: u64) -> Image {
        let path = self.dir.path().join(name);
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(mib << 20).unwrap();
        let id = FileId::of(file.as_fd()).unwrap();
        Image { path, id }
    }

    /// Writes a vbd's backend and frontend directories in one transaction,
    /// as libxl's `libxl__device_disk_add` does (vbd-protocol.md §1), and
    /// the frontend domain's `vm` node.
    pub fn libxl_add(&self, fe: u32, devid: u32, params: &[u8], mode: &str) -> BackendPath {
        self.libxl_add_with(fe, devid, params, mode, &[])
    }

    pub fn libxl_add_with(
        &self,
        fe: u32,
        devid: u32,
        params: &[u8],
        mode: &str,
        extra: &[(&str, &str)],
    ) -> BackendPath {
        let backend = BackendPath::new(fe, devid);
        let be_abs = backend.absolute(0);
        let fe_dir = format!("/local/domain/{fe}/device/vbd/{devid}");
        let mut client = self.client();
        client
            .transaction(|tx| -> Result<(), xenstore::client::Error> {
                let fe_id = fe.to_string();
                let devid_s = devid.to_string();
                let mut nodes: Vec<(String, Vec<u8>)> = [
                    (node::FRONTEND, fe_dir.as_bytes()),
                    (node::FRONTEND_ID, fe_id.as_bytes()),
                    (node::ONLINE, b"1".as_slice()),
                    (node::REMOVABLE, b"0".as_slice()),
                    (node::BOOTABLE, b"1".as_slice()),
                    (node::STATE, b"1".as_slice()),
                    (node::DEV, b"xvda".as_slice()),
                    (node::TYPE, b"phy".as_slice()),
                    (node::MODE, mode.as_bytes()),
                    (node::DEVICE_TYPE, b"disk".as_slice()),
                    (node::PARAMS, params),
                    (node::SCRIPT, b"/etc/xen/scripts/block-diskseq".as_slice()),
                    (node::DISCARD_ENABLE, b"1".as_slice()),
                    (node::SPECIFICATION, b"xen".as_slice()),
                ]
                .into_iter()
                .map(|(n, v)| (format!("{be_abs}/{n}"), v.to_vec()))
                .collect();
                nodes.extend(
                    extra
                        .iter()
                        .map(|(n, v)| (format!("{be_abs}/{n}"), v.as_bytes().to_vec())),
                );
                nodes.extend(
                    [
                        (node::frontend::BACKEND, be_abs.as_str()),
                        (node::frontend::BACKEND_ID, "0"),
                        (node::frontend::STATE, "1"),
                        (node::frontend::VIRTUAL_DEVICE, devid_s.as_str()),
                        (node::frontend::DEVICE_TYPE, "disk"),
                    ]
                    .into_iter()
                    .map(|(n, v)| (format!("{fe_dir}/{n}"), v.as_bytes().to_vec())),
                );
                let vm = format!("/local/domain/{fe}/vm");
                if tx.read_opt(&vm)?.is_none() {
                    nodes.push((
                        vm,
                        format!("/vm/00000000-0000-0000-0000-{fe:012}").into_bytes(),
                    ));
                }
                let items: Vec<(&str, &[u8])> = nodes
                    .iter()
                    .map(|(p, v)| (p.as_str(), v.as_slice()))
                    .collect();
                tx.write_many(&items)?;
                tx.set_perms(
                    &be_abs,
                    &Perms(vec![perm(0, PermAccess::None), perm(fe, PermAccess::Read)]),
                )?;
                tx.set_perms(
                    &fe_dir,
                    &Perms(vec![perm(fe, PermAccess::None), perm(0, PermAccess::Read)]),
                )?;
                Ok(())
            })
            .expect("libxl-style backend write");
        backend
    }

    /// Runs the script as libxl does: `block-diskseq <cmd>` with the
    /// `XENBUS_*` variables, stdin from /dev/null; `env` adds or overrides.
    pub fn run(&self, cmd: &str, backend: &BackendPath, env: &[(&str, &str)]) -> Run {
        let mut command = self.script_command(cmd, backend, env);
        let before = self.log_text().len();
        let output = command.output().expect("spawn the script");
        let mut run = Run::from(output);
        run.log = self.log_text().get(before..).unwrap_or_default().to_owned();
        run
    }

    /// Runs the script with fault injection pausing it at `step`
    /// (`BLOCK_DISKSEQ_FAULT=pause:<step>`), runs `meanwhile` while it
    /// waits there, then lets it go on. Fails the test if the script ends
    /// without reaching `step`.
    pub fn run_interrupted(
        &self,
        cmd: &str,
        backend: &BackendPath,
        step: &str,
        meanwhile: impl FnOnce(),
    ) -> Run {
        use rustix::fs::{Mode, OFlags};
        let fifo = self.dir.path().join("pause.fifo");
        let _ = std::fs::remove_file(&fifo);
        testbed::fifo::mkfifo(&fifo);
        let fault = format!("pause:{step}");
        let mut command = self.script_command(
            cmd,
            backend,
            &[
                ("BLOCK_DISKSEQ_FAULT", &fault),
                ("BLOCK_DISKSEQ_FAULT_FIFO", fifo.to_str().unwrap()),
            ],
        );
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let before = self.log_text().len();
        let mut child = command.spawn().expect("spawn the script");
        // A non-blocking open for writing fails (ENXIO) until the script
        // has the FIFO open for reading, i.e. is at `step`.
        let pause = loop {
            match rustix::fs::open(&fifo, OFlags::WRONLY | OFlags::NONBLOCK, Mode::empty()) {
                Ok(fd) => break fd,
                Err(rustix::io::Errno::NXIO) => {
                    if let Some(status) = child.try_wait().unwrap() {
                        panic!("the script ended ({status}) without reaching {step}");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("open {}: {e}", fifo.display()),
            }
        };
        meanwhile();
        drop(pause);
        let mut run = Run::from(child.wait_with_output().expect("the script's end"));
        run.log = self.log_text().get(before..).unwrap_or_default().to_owned();
        let _ = std::fs::remove_file(&fifo);
        run
    }

    pub fn script_command(
        &self,
        cmd: &str,
        backend: &BackendPath,
        env: &[(&str, &str)],
    ) -> Command {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "support::script_entry",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env("BLOCK_DISKSEQ_TEST_ARGS", cmd)
            .env("XENSTORED_PATH", &self.socket)
            .env("XENBUS_PATH", backend.relative())
            .env("XENBUS_TYPE", "vbd")
            .env("XENBUS_BASE_PATH", "backend")
            .env("BLOCK_DISKSEQ_LOG", &self.log)
            .env("BLOCK_DISKSEQ_SYSFS", &self.sysfs)
            .env("BLOCK_DISKSEQ_TIMEOUT", "5")
            .env_remove("BLOCK_DISKSEQ_FAULT")
            .env_remove("BLOCK_DISKSEQ_HANDOFF")
            .stdin(std::process::Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        command
    }

    pub fn read(&self, backend: &BackendPath, name: &str) -> Option<String> {
        self.client()
            .read_opt(&backend.node(name))
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    }

    pub fn write(&self, backend: &BackendPath, name: &str, value: &str) {
        self.client().write(&backend.node(name), value).unwrap();
    }

    pub fn rm(&self, backend: &BackendPath, name: &str) {
        self.client().rm(&backend.node(name)).unwrap();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The stand-in for stock blkback's `/sys/bus/xen-backend/devices/vbd-<fe>-<devid>`.
    pub fn blkback_dir(&self, backend: &BackendPath) -> PathBuf {
        self.sysfs
            .join("bus/xen-backend/devices")
            .join(backend.sysfs_name())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop();
        }
    }
}

fn perm(domid: u32, access: PermAccess) -> Perm {
    Perm { domid, access }
}

/// What one run of the script did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stderr: String,
    /// The log lines this run wrote.
    pub log: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            signal: output.status.signal(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            log: String::new(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn assert_ok(&self) {
        assert_eq!(self.code, Some(0), "script failed: {self:?}");
    }
    #[track_caller]
    pub fn assert_failed(&self) {
        assert_eq!(
            self.code,
            Some(1),
            "script should have failed with 1: {self:?}"
        );
    }
}

/// An image file; dropping it detaches every loop device still bound to it
/// (only this test's file: its inode is unique), so a failing test leaves
/// nothing attached.
pub struct Image {
    pub path: PathBuf,
    pub id: FileId,
}

impl Image {
    /// Loop devices currently bound to this file.
    pub fn loops(&self) -> Vec<diskseq::LoopInfo> {
        diskseq::list_loops()
            .unwrap()
            .into_iter()
            .filter(|l| l.backing == self.id)
            .collect()
    }

    pub fn path_bytes(&self) -> &[u8] {
        use std::os::unix::ffi::OsStrExt;
        self.path.as_os_str().as_bytes()
    }

    /// A loop device of the test's own on this file, writable or not, with
    /// autoclear: a block device to hand the script, gone with the value.
    pub fn attach_held(&self, writable: bool) -> diskseq::LoopDevice {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&self.path)
            .unwrap();
        attach_loop(
            file.as_fd(),
            &diskseq::LoopOptions {
                autoclear: true,
                read_only: !writable,
                ..Default::default()
            },
        )
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        for info in diskseq::list_loops().unwrap_or_default() {
            if info.backing == self.id {
                let _ = diskseq::detach_verified(&info.id, Some(self.id));
            }
        }
    }
}

/// Runs `remove` for a device already gone (autoclear, or never held):
/// it must succeed, say so, and withdraw the record.
#[track_caller]
pub fn remove_finds_device_gone(bed: &Bed, backend: &BackendPath) {
    let run = bed.run("remove", backend, &[]);
    run.assert_ok();
    assert_device_gone(&run.log);
    assert_eq!(bed.read(backend, node::PHYSICAL_DEVICE), None);
    assert_eq!(bed.read(backend, node::DISKSEQ), None);
}

/// Checks that `remove` found its device gone — unbound, or (the freed
/// minor being the lowest free one, which parallel tests take at once)
/// already naming another disk — and took that as success.
#[track_caller]
pub fn assert_device_gone(log: &str) {
    assert!(
        log.contains(") is gone;"),
        "remove did not report the device gone:\n{log}"
    );
}

/// The record `add` published for `backend` (panics if there is none).
#[track_caller]
pub fn record(bed: &Bed, backend: &BackendPath) -> vbd::schema::PublishedDevice {
    record_opt(bed, backend).expect("a published record")
}

/// The record of `backend`, if one is published (panics on a malformed
/// one: no run of the script, killed or not, leaves one).
#[track_caller]
pub fn record_opt(bed: &Bed, backend: &BackendPath) -> Option<vbd::schema::PublishedDevice> {
    let values: Vec<Option<Vec<u8>>> = vbd::schema::PublishedDevice::NODES
        .iter()
        .map(|name| bed.read(backend, name).map(String::into_bytes))
        .collect();
    vbd::schema::PublishedDevice::from_values(&values).expect("a well-formed record")
}

/// Waits (bounded) until no loop device is bound to `image`: an autoclear
/// device detaches when its last fd closes, which may lag a process exit.
#[track_caller]
pub fn assert_no_loops(image: &Image) {
    for _ in 0..200 {
        if image.loops().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "loop devices left bound to {}: {:?}",
        image.path.display(),
        image.loops()
    );
}

/// A userspace stand-in for a backend that speaks the `opened` handshake
/// (the diskseq patch's blkback): writes `opened` = 0 at probe, waits for
/// `physical-device`, opens the device by number proving its diskseq,
/// holds the fd, and writes `opened` = 1.
pub struct OpenedBackend {
    release: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<Result<DiskId, String>>>,
    pub opens: Arc<AtomicUsize>,
}

impl OpenedBackend {
    /// `write_opened`: false plays a backend that never confirms.
    pub fn start(bed: &Bed, backend: &BackendPath, write_opened: bool) -> OpenedBackend {
        let mut client = bed.client();
        client.write(&backend.node(node::OPENED), "0").unwrap();
        client.write(&backend.node(node::STATE), "2").unwrap();
        let pd = backend.node(node::PHYSICAL_DEVICE);
        let seq_node = backend.node(node::DISKSEQ);
        let opened = backend.node(node::OPENED);
        client.watch(&pd, "pd").unwrap();
        let (release, released) = mpsc::channel::<()>();
        let opens = Arc::new(AtomicUsize::new(0));
        let counter = opens.clone();
        let thread = std::thread::spawn(move || -> Result<DiskId, String> {
            loop {
                match client.next_event(Some(Duration::from_millis(20))) {
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
                // Released, or the handle dropped (the sender then hangs up).
                if !matches!(released.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                    return Err("released before physical-device appeared".into());
                }
                let Some(raw) = client.read_opt(&pd).map_err(|e| e.to_string())? else {
                    continue;
                };
                let dev = diskseq::DevNum::parse_xenstore(std::str::from_utf8(&raw).unwrap())
                    .map_err(|e| e.to_string())?;
                let raw_seq = client.read(&seq_node).map_err(|e| e.to_string())?;
                let seq = DiskSeq::parse_xenstore(std::str::from_utf8(&raw_seq).unwrap())
                    .map_err(|e| e.to_string())?;
                let id = DiskId {
                    major: dev.major,
                    minor: dev.minor,
                    seq,
                };
                let device =
                    diskseq::open_verified(id, Access::ReadOnly).map_err(|e| e.to_string())?;
                counter.fetch_add(1, Ordering::SeqCst);
                if write_opened {
                    client.write(&opened, "1").map_err(|e| e.to_string())?;
                }
                let _ = released.recv();
                drop(device);
                return Ok(id);
            }
        });
        OpenedBackend {
            release: Some(release),
            thread: Some(thread),
            opens,
        }
    }

    /// Closes the device (like blkback on disconnect) and returns what it held.
    pub fn release(mut self) -> Result<DiskId, String> {
        drop(self.release.take());
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for OpenedBackend {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pass-through unix-socket proxy in front of the daemon that counts
/// round trips: a request sent while none is outstanding starts one.
pub struct RoundTripCounter {
    pub socket: PathBuf,
    pub round_trips: Arc<AtomicUsize>,
    /// Requests (frames from clients), watch registrations included.
    pub requests: Arc<AtomicUsize>,
}

impl RoundTripCounter {
    pub fn start(bed: &Bed) -> RoundTripCounter {
        use std::io::{Read, Write};
        use std::os::unix::net::{UnixListener, UnixStream};
        let socket = bed.dir.path().join("counting.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let upstream_path = bed.socket.clone();
        let round_trips = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let rt = round_trips.clone();
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let upstream = UnixStream::connect(&upstream_path).unwrap();
                let outstanding = Arc::new(std::sync::Mutex::new(0usize));
                let rt = rt.clone();
                let reqs = reqs.clone();
                let (mut c_read, mut u_write) =
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let (mut u_read, mut c_write) = (upstream, client);
                let out_up = outstanding.clone();
                std::thread::spawn(move || {
                    let mut frames = Frames::default();
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = c_read.read(&mut buf) {
                        if n == 0 {
                            let _ = u_write.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        for _msg_type in frames.feed(&buf[..n]) {
                            reqs.fetch_add(1, Ordering::SeqCst);
                            let mut o = out_up.lock().unwrap();
                            if *o == 0 {
                                rt.fetch_add(1, Ordering::SeqCst);
                            }
                            *o += 1;
                        }
                        if u_write.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
                std::thread::spawn(move || {
                    let mut frames = Frames::default();
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = u_read.read(&mut buf) {
                        if n == 0 {
                            let _ = c_write.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        for msg_type in frames.feed(&buf[..n]) {
                            if msg_type != xenstore::wire::MsgType::WatchEvent as u32 {
                                let mut o = outstanding.lock().unwrap();
                                *o = o.saturating_sub(1);
                            }
                        }
                        if c_write.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RoundTripCounter {
            socket,
            round_trips,
            requests,
        }
    }
}

/// Splits a byte stream into xenstore frames, yielding message types.
#[derive(Default)]
struct Frames {
    pending: Vec<u8>,
}

impl Frames {
    fn feed(&mut self, bytes: &[u8]) -> Vec<u32> {
        self.pending.extend_from_slice(bytes);
        let mut types = Vec::new();
        while self.pending.len() >= xenstore::wire::HEADER_SIZE {
            let header: [u8; xenstore::wire::HEADER_SIZE] = self.pending
                [..xenstore::wire::HEADER_SIZE]
                .try_into()
                .unwrap();
            let header = xenstore::wire::Header::decode(&header);
            let total = xenstore::wire::HEADER_SIZE + header.len as usize;
            if self.pending.len() < total {
                break;
            }
            types.push(header.msg_type);
            self.pending.drain(..total);
        }
        types
    }
}

pub fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting for {what}");
}

pub fn image_path(path: &Path) -> String {
    path.display().to_string()
}

/// Attaches a loop device for a test, riding out bursts of concurrent
/// attaches by other tests (`NoFreeLoop`), which the script also tolerates.
pub fn attach_loop(
    backing: std::os::fd::BorrowedFd<'_>,
    opts: &diskseq::LoopOptions,
) -> diskseq::LoopDevice {
    for _ in 0..500 {
        match diskseq::LoopDevice::attach(backing, opts) {
            Err(diskseq::Error::NoFreeLoop { .. }) => std::thread::sleep(Duration::from_millis(2)),
            result => return result.expect("attach a loop device"),
        }
    }
    panic!("no loop device could be attached in 1 s");
}
