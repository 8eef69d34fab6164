//! xenstore: the protocol Xen's control plane speaks, for both ends.
//!
//! - [`wire`]: frames, message types, errno names and payload encodings —
//!   one implementation shared by the client and the daemon (`xenstored`).
//! - [`path`]: validated absolute, relative and special paths.
//! - [`perms`]: node permission lists.
//! - [`client`]: a blocking client with watches and retried transactions.

pub mod client;
pub mod path;
pub mod perms;
pub mod wire;

pub use client::{Client, Error, ErrorKind, Scope, Session, Transaction, WatchEvent};
pub use path::{PathError, XsPath};
pub use perms::{Perm, PermAccess, Perms, PermsError};
pub use wire::{Errno, Message, MsgType};
