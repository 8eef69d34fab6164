//! A running backend, as its starter (a test, the demo, `diskseq backend`)
//! holds it: stop it, and look at the disks it holds through its own fds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use diskseq::BlockDevice;
use vbd::schema::BackendPath;

use crate::backend::config::{BackendError, HeldDisk};
use crate::backend::service::HeldTable;

/// A running backend (see [`Backend::spawn`]). Dropping it stops the loop.
pub struct BackendHandle {
    pub(super) domid: u32,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) thread: Option<JoinHandle<Result<(), BackendError>>>,
    pub(super) held: HeldTable,
}

impl BackendHandle {
    /// Stops the loop and closes every held disk (as if the process died:
    /// xenstore is left as it is, for a restarted backend to resume).
    pub fn stop(mut self) -> Result<(), BackendError> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Result<(), BackendError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| BackendError::Panicked)?,
            None => Ok(()),
        }
    }

    /// True while the loop runs (false after a xenstore failure).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The disks held open right now.
    pub fn held_disks(&self) -> Vec<HeldDisk> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut disks: Vec<HeldDisk> = held
            .iter()
            .map(|(path, disk)| HeldDisk {
                path: path.clone(),
                id: disk.id(),
            })
            .collect();
        disks.sort_by_key(|d| (d.path.frontend_domid(), d.path.devid()));
        disks
    }

    /// Runs `f` on the disk held for `path`, through the backend's own fd
    /// (e.g. to read what a guest would read). `None` when none is held.
    pub fn with_held_disk<R>(
        &self,
        path: &BackendPath,
        f: impl FnOnce(&BlockDevice) -> R,
    ) -> Option<R> {
        let key = match path.backend_domid() {
            Some(_) => path.clone(),
            None => path.with_backend_domid(self.domid),
        };
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&key).map(|disk| f(disk))
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}
