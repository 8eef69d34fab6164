//! What the daemon is told at start: where to listen, who is who, limits.

use std::path::PathBuf;

/// Permission entries a guest may put on one node (the C daemon's `-A`
/// default); more is ENOSPC. Fixed: nothing in this project needs another.
pub const PERMS_PER_NODE: usize = 5;

/// Nodes one transaction of an unprivileged connection may use — read,
/// listed or written (the C daemon's `transaction-nodes` quota,
/// `quota_trans_nodes`, 1024 in Xen 4.17): the request needing one more is
/// ENOSPC and the transaction fails (its commit is ENOMEM). It bounds what
/// a guest's transaction copies (XSA-326). Fixed, like the permissions
/// limit: `Quotas` is built field by field by the CLI.
pub const TRANSACTION_NODES: usize = 1024;

/// Per-domain limits for unprivileged domains (dom0 is exempt), as the C
/// xenstored enforces them. Going over a limit yields an error reply, never
/// a disconnect; only `outstanding` is back-pressure (see the field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`-E`, `quota_nb_entry_per_domain`): ENOSPC.
    pub entries: usize,
    /// Size of one node record — header, permissions, value and children
    /// names, computed as the C daemon does (`-S`): ENOSPC.
    pub entry_size: usize,
    /// Watches per domain (`-W`): E2BIG.
    pub watches: usize,
    /// Open transactions of a guest (`-t`): ENOSPC once it already has
    /// more than this many open — so one more than the quota succeeds, as
    /// with the C daemon. The C daemon counts per connection and a real
    /// guest has one; ours counts all connections of a guest's socket
    /// together, so more connections do not mean more transactions.
    pub transactions: usize,
    /// Replies a connection may have queued unread before the daemon stops
    /// reading its requests (`-Q outstanding`). A guest that never reads
    /// cannot make the daemon buffer without bound.
    pub outstanding: usize,
    /// Longest path below a domain's home (`-M`, counted without the
    /// `/local/domain/<domid>/` prefix, the whole path elsewhere, as the C
    /// daemon does): EINVAL. Applies to every caller, dom0 included (Xen
    /// 4.17 exempts no one).
    pub path_len: usize,
}

impl Default for Quotas {
    /// The C xenstored's defaults (Xen 4.17).
    fn default() -> Self {
        Quotas {
            entries: 1000,
            entry_size: 2048,
            watches: 128,
            transactions: 10,
            outstanding: 1024,
            path_len: xenstore::path::REL_PATH_MAX,
        }
    }
}

/// Everything [`crate::Daemon::start`] and [`crate::run`] need.
#[derive(Debug, Clone)]
pub struct Config {
    /// The privileged socket: every connection on it is dom0.
    pub socket: PathBuf,
    /// Simulated guest rings: every connection on the socket at `PathBuf`
    /// is the unprivileged domain `u32`.
    pub domain_sockets: Vec<(u32, PathBuf)>,
    pub quotas: Quotas,
    /// Append one line per request and reply here (like xenstored `-T`).
    pub trace: Option<PathBuf>,
    /// Write the daemon's pid here once it is ready (like xenstored `-F`).
    pub pid_file: Option<PathBuf>,
}

impl Config {
    /// A dom0 socket at `socket`, no guests, default quotas.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Config {
            socket: socket.into(),
            domain_sockets: Vec::new(),
            quotas: Quotas::default(),
            trace: None,
            pid_file: None,
        }
    }

    /// Adds a simulated guest: connections on `socket` are domain `domid`.
    pub fn domain_socket(mut self, domid: u32, socket: impl Into<PathBuf>) -> Self {
        self.domain_sockets.push((domid, socket.into()));
        self
    }
}
