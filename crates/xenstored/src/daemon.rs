//! Starting and stopping: binding the sockets, the pid file, the serving
//! thread, signals.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::config::Config;
use crate::dispatch::State;
use crate::server::{Listener, Server};
use crate::trace::Trace;

/// The xenstore daemon.
pub struct Daemon;

impl Daemon {
    /// Binds every socket, then serves on a background thread. The sockets
    /// accept connections as soon as this returns.
    pub fn start(config: Config) -> io::Result<DaemonHandle> {
        let prepared = Prepared::new(&config)?;
        let cleanup = prepared.cleanup.clone();
        let (stop_tx, stop_rx) = UnixStream::pair()?;
        let server = prepared.server(stop_rx).inspect_err(|_| cleanup.run())?;
        let thread = std::thread::Builder::new()
            .name("xenstored".into())
            .spawn(move || server.run())
            .inspect_err(|_| cleanup.run())?;
        Ok(DaemonHandle {
            socket: config.socket.clone(),
            cleanup,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// A running daemon. Dropping it stops the daemon and removes its sockets.
pub struct DaemonHandle {
    socket: PathBuf,
    cleanup: Cleanup,
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl DaemonHandle {
    /// The privileged (dom0) socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops serving, waits for the thread, removes the socket files.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for DaemonHandle {
    fn drop(&mut self) {
        if let Some(mut stop) = self.stop.take() {
            let _ = stop.write_all(b"x");
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.cleanup.run();
    }
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT, then removes
/// its sockets (and pid file).
pub fn run(config: Config) -> io::Result<()> {
    let prepared = Prepared::new(&config)?;
    let (stop_tx, stop_rx) = UnixStream::pair()?;
    stop_tx.set_nonblocking(true)?;
    let mut ids = Vec::new();
    for signal in [SIGTERM, SIGINT] {
        ids.push(signal_hook::low_level::pipe::register(
            signal,
            stop_tx.try_clone()?,
        )?);
    }
    let cleanup = prepared.cleanup.clone();
    let result = prepared.server(stop_rx).and_then(Server::run);
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    cleanup.run();
    result
}

/// Files to remove when the daemon stops.
#[derive(Debug, Clone, Default)]
struct Cleanup {
    files: Vec<PathBuf>,
}

impl Cleanup {
    fn run(&self) {
        for file in &self.files {
            let _ = fs::remove_file(file);
        }
    }
}

/// Sockets bound, trace open, pid written: all that can fail, done before
/// serving starts.
struct Prepared {
    listeners: Vec<Listener>,
    state: State,
    trace: Option<Trace>,
    cleanup: Cleanup,
}

impl Prepared {
    fn new(config: &Config) -> io::Result<Self> {
        raise_fd_limit();
        let mut cleanup = Cleanup::default();
        let mut listeners = Vec::new();
        let sockets = std::iter::once((0, &config.socket, true))
            .chain(config.domain_sockets.iter().map(|(d, p)| (*d, p, false)));
        for (domid, path, privileged) in sockets {
            let listener = match bind(path) {
                Ok(l) => l,
                Err(e) => {
                    cleanup.run();
                    return Err(e);
                }
            };
            cleanup.files.push(path.clone());
            listeners.push(Listener {
                listener,
                domid,
                privileged,
            });
        }
        let trace = match config.trace.as_deref().map(Trace::open).transpose() {
            Ok(t) => t,
            Err(e) => {
                cleanup.run();
                return Err(e);
            }
        };
        if let Some(pid_file) = &config.pid_file {
            if let Err(e) = fs::write(pid_file, format!("{}\n", std::process::id())) {
                cleanup.run();
                return Err(io::Error::new(
                    e.kind(),
                    format!("writing pid file {}: {e}", pid_file.display()),
                ));
            }
            cleanup.files.push(pid_file.clone());
        }
        Ok(Prepared {
            listeners,
            state: State::new(config.quotas),
            trace,
            cleanup,
        })
    }

    fn server(self, stop: UnixStream) -> io::Result<Server> {
        Server::new(self.listeners, stop, self.state, self.trace)
    }
}

/// Binds and listens at a temporary name, then renames it into place, so
/// the socket file exists only once it accepts connections. A stale socket
/// file is replaced; a live one (something answers) is an error.
fn bind(path: &Path) -> io::Result<UnixListener> {
    let named = |e: io::Error, what: &str| {
        io::Error::new(e.kind(), format!("{what} socket {}: {e}", path.display()))
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("socket {}: exists and is not a socket", path.display()),
            ));
        }
        Ok(_) if UnixStream::connect(path).is_ok() => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "socket {}: a daemon is already listening there",
                    path.display()
                ),
            ));
        }
        _ => {}
    }
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket {}: no file name", path.display()),
        )
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.binding", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let _ = fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp).map_err(|e| named(e, "binding"))?;
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(named(e, "placing"));
    }
    Ok(listener)
}

/// Thousands of connections need thousands of descriptors: lift the soft
/// limit to the hard one (what a daemon's unit file would do).
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}
