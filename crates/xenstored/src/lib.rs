//! xenstored: a xenstore daemon with the Xen 4.17 daemons' semantics, for
//! hosts without Xen and as the bed for every test.
//!
//! One thread runs an epoll loop over non-blocking Unix sockets (module
//! `server`); requests are handled to completion one at a time (`dispatch`,
//! then `ops` on the `store`), so the store needs no locks and watch events
//! reach each connection in the order the changes happened. Connections on
//! the main socket are dom0; each configured domain socket simulates one
//! guest. See docs/design/xenstored.md.
//!
//! ```no_run
//! let dir = std::path::Path::new("/run/diskseq");
//! let config = xenstored::Config::new(dir.join("xenstored.sock"))
//!     .domain_socket(5, dir.join("guest5.sock"));
//! let daemon = xenstored::Daemon::start(config)?; // the sockets accept now
//! // ... XENSTORED_PATH=/run/diskseq/xenstored.sock xenstore-ls ...
//! daemon.stop(); // also on drop; removes the sockets
//! # Ok::<(), std::io::Error>(())
//! ```

mod access;
pub mod config;
mod daemon;
mod dispatch;
mod domains;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod ops;
mod release;
mod server;
mod store;
mod trace;
mod watch;

pub use config::{Config, Quotas};
pub use daemon::{run, Daemon, DaemonHandle};
