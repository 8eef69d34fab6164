//! xenstored: a xenstore daemon with the Xen 4.17 daemons' semantics, for
//! hosts without Xen and as the bed for every test.
//!
//! One thread runs an epoll loop over non-blocking Unix sockets (see
//! [`server`]); requests are handled to completion one at a time
//! ([`dispatch`]), so the store needs no locks and watch events reach each
//! connection in the order the changes happened. Connections on the main
//! socket are dom0; each configured domain socket simulates one guest.

pub mod access;
pub mod config;
mod daemon;
pub mod dispatch;
pub mod domains;
pub mod ops;
mod server;
pub mod store;
mod trace;
pub mod watch;

pub use config::{Config, Quotas};
pub use daemon::{run, Daemon, DaemonHandle};
