//! Shared setup for the backend, toolstack and demo tests: a private
//! xenstore daemon per test (with guest domain sockets), backends and
//! frontend models on threads, disk images with a recognisable first
//! sector, and loop devices that always clean up after themselves.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vbd::schema::{node, BackendPath, XenbusState};
use xen_sim::backend::{Backend, BackendConfig, BackendHandle};
use xen_sim::frontend::{Frontend, FrontendHandle};
use xenstore::client::Client;
use xenstored::{Config, Daemon, DaemonHandle};

/// A binary of the workspace (`diskseq`, `block-diskseq`), built next to
/// this test's target directory by `cargo build` (which `scripts/test` runs
/// before the tests).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build -p diskseq-cli` (scripts/test does)",
        path.display()
    );
    path
}

/// A private daemon with guest sockets, and the temp dir holding it.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub daemon: DaemonHandle,
    guests: Vec<(u32, PathBuf)>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Env {
    /// A daemon with a domain socket for each of `guests`.
    pub fn new(guests: &[u32]) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("vbd-test-")
            .tempdir()
            .expect("temp dir");
        let mut config = Config::new(dir.path().join("xenstored.sock"));
        let mut sockets = Vec::new();
        for &domid in guests {
            let socket = dir.path().join(format!("dom{domid}.sock"));
            config = config.domain_socket(domid, &socket);
            sockets.push((domid, socket));
        }
        let daemon = Daemon::start(config).expect("start xenstored");
        Env {
            dir,
            daemon,
            guests: sockets,
            log: Arc::default(),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.daemon.socket().to_owned()
    }

    /// A dom0 connection.
    pub fn dom0(&self) -> Client {
        Client::connect_socket(self.daemon.socket()).expect("connect dom0")
    }

    /// A connection as guest `domid`.
    pub fn guest(&self, domid: u32) -> Client {
        let socket = &self
            .guests
            .iter()
            .find(|(d, _)| *d == domid)
            .unwrap_or_else(|| panic!("no socket for guest {domid}"))
            .1;
        Client::connect_socket(socket).expect("connect guest")
    }

    /// A backend config whose log lines are kept for failure messages.
    pub fn backend_config(&self, domid: u32) -> BackendConfig {
        let mut config = BackendConfig::new(domid);
        let log = Arc::clone(&self.log);
        config.logger = Arc::new(move |line| log.lock().unwrap().push(line.to_owned()));
        config
    }

    pub fn start_backend(&self, config: BackendConfig) -> BackendHandle {
        Backend::new(self.dom0(), config)
            .spawn()
            .expect("spawn backend")
    }

    /// The frontend model of guest `domid`, over its own domain socket.
    pub fn start_frontend(&self, domid: u32) -> FrontendHandle {
        Frontend::new(self.guest(domid), domid)
            .spawn()
            .expect("spawn frontend")
    }

    /// Writes an image whose first sector starts with `marker`.
    pub fn image(&self, name: &str, marker: &str, size: u64) -> PathBuf {
        testbed::images::marked_image(self.dir.path(), name, marker, size)
    }

    pub fn backend_log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// The backend dir for guest `fe`, device `devid`, of backend domain 0.
pub fn backend_path(fe: u32, devid: u32) -> BackendPath {
    BackendPath::new_absolute(0, fe, devid)
}

/// Reads a node as text, `None` when absent.
pub fn read(client: &mut Client, path: &str) -> Option<String> {
    client
        .read_opt(path)
        .expect("read")
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Polls `path` until `pred` holds on its value, or panics after `timeout`.
pub fn wait_node(
    client: &mut Client,
    path: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(Option<&str>) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let value = read(client, path);
        if pred(value.as_deref()) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: {what} not reached within {timeout:?} (value {value:?})"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits for a backend state.
pub fn wait_backend_state(client: &mut Client, path: &BackendPath, state: XenbusState) {
    let want = state.to_string();
    wait_node(
        client,
        &path.node(node::STATE),
        Duration::from_secs(10),
        &format!("state {state:?}"),
        |v| v == Some(want.as_str()),
    );
}

/// Waits until a backend gave up: Closing, or already Closed when a
/// frontend model answered the Closing at once.
pub fn wait_backend_failed(client: &mut Client, path: &BackendPath) {
    wait_node(
        client,
        &path.node(node::STATE),
        Duration::from_secs(10),
        "state Closing or Closed",
        |v| matches!(v, Some("5" | "6")),
    );
}

/// Publishes a record as a block script does: one transaction.
pub fn publish(
    client: &mut Client,
    path: &BackendPath,
    physical_device: &str,
    diskseq: Option<&str>,
    device_path: &Path,
) {
    let dir = path.dir();
    client
        .transaction(|tx| {
            if let Some(seq) = diskseq {
                tx.write(&format!("{dir}/{}", node::DISKSEQ), seq)?;
            }
            tx.write(
                &format!("{dir}/{}", node::PHYSICAL_DEVICE_PATH),
                device_path.to_string_lossy().as_bytes(),
            )?;
            tx.write(&format!("{dir}/{}", node::PHYSICAL_DEVICE), physical_device)
        })
        .expect("publish record");
}
