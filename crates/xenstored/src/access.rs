//! Who is asking, and what a permission list grants them.
//!
//! The rules are the C daemon's `perm_for_conn`: privileged callers and the
//! node's owner (or a domain acting for the owner through SET_TARGET) get
//! everything; otherwise the first override entry for the caller (or its
//! target) decides, else the list's default.

use xenstore::perms::{PermAccess, Perms};

/// The identity a request is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub domid: u32,
    /// dom0: bypasses permission checks and quotas.
    pub privileged: bool,
    /// The domain this one manages (SET_TARGET), whose rights it shares.
    pub target: Option<u32>,
}

impl Caller {
    /// A dom0 (privileged) caller; also the daemon acting on its own
    /// (RELEASE's cleanup).
    pub const DOM0: Caller = Caller {
        domid: 0,
        privileged: true,
        target: None,
    };

    /// An unprivileged guest without a target.
    #[cfg(test)]
    pub fn guest(domid: u32) -> Self {
        Caller {
            domid,
            privileged: false,
            target: None,
        }
    }

    fn is(&self, domid: u32) -> bool {
        self.domid == domid || self.target == Some(domid)
    }

    /// What `perms` grant this caller.
    pub fn rights(&self, perms: &Perms) -> Rights {
        let Some((first, overrides)) = perms.0.split_first() else {
            return if self.privileged {
                Rights::ALL
            } else {
                Rights::NONE
            };
        };
        if self.privileged || self.is(first.domid) {
            return Rights::ALL;
        }
        let access = overrides
            .iter()
            .find(|p| self.is(p.domid))
            .map_or(first.access, |p| p.access);
        Rights::from_access(access)
    }

    /// Whether this caller may do `need` on a node with `perms`.
    pub fn may(&self, perms: &Perms, need: Need) -> bool {
        let rights = self.rights(perms);
        match need {
            Need::Read => rights.read,
            Need::Write => rights.write,
            Need::Own => rights.write && rights.owner,
        }
    }
}

/// The access an operation requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
    /// Write access and ownership (SET_PERMS).
    Own,
}

/// The rights a caller holds on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rights {
    pub read: bool,
    pub write: bool,
    pub owner: bool,
}

impl Rights {
    pub const ALL: Rights = Rights {
        read: true,
        write: true,
        owner: true,
    };
    pub const NONE: Rights = Rights {
        read: false,
        write: false,
        owner: false,
    };

    fn from_access(access: PermAccess) -> Self {
        Rights {
            read: access.can_read(),
            write: access.can_write(),
            owner: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(s: &str) -> Perms {
        s.parse().unwrap()
    }

    #[test]
    fn owner_and_dom0_get_everything() {
        let p = perms("n5");
        assert_eq!(Caller::guest(5).rights(&p), Rights::ALL);
        assert_eq!(Caller::DOM0.rights(&p), Rights::ALL);
        assert_eq!(Caller::guest(6).rights(&p), Rights::NONE);
    }

    #[test]
    fn override_beats_default_and_first_override_wins() {
        let p = perms("r0 w7 n7 b8");
        let seven = Caller::guest(7);
        assert!(seven.may(&p, Need::Write) && !seven.may(&p, Need::Read));
        assert!(Caller::guest(9).may(&p, Need::Read));
        assert!(!Caller::guest(9).may(&p, Need::Write));
        assert!(Caller::guest(8).may(&p, Need::Write));
        assert!(!Caller::guest(8).may(&p, Need::Own));
    }

    #[test]
    fn target_shares_the_targets_rights() {
        let p = perms("n5 r6");
        let stubdom = Caller {
            domid: 9,
            privileged: false,
            target: Some(5),
        };
        assert_eq!(stubdom.rights(&p), Rights::ALL);
        let reader = Caller {
            domid: 9,
            privileged: false,
            target: Some(6),
        };
        assert!(reader.may(&p, Need::Read) && !reader.may(&p, Need::Write));
    }
}
