//! Node permission lists.
//!
//! On the wire a list is NUL-separated entries of one letter and a domid:
//! `n0\0r5\0`. The first entry names the owner, who always has full access,
//! and its letter is the default for every other domain; later entries
//! override the default for one domain each (first match wins, as in the C
//! daemon). Privileged callers bypass permissions altogether; that is the
//! daemon's business, not this module's.

use std::fmt;
use std::str::FromStr;

/// What a permission entry grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermAccess {
    /// `n`: nothing.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl PermAccess {
    /// The wire letter.
    pub fn letter(self) -> char {
        match self {
            PermAccess::None => 'n',
            PermAccess::Read => 'r',
            PermAccess::Write => 'w',
            PermAccess::Both => 'b',
        }
    }

    /// The access named by a wire letter.
    pub fn from_letter(c: char) -> Option<Self> {
        match c {
            'n' => Some(PermAccess::None),
            'r' => Some(PermAccess::Read),
            'w' => Some(PermAccess::Write),
            'b' => Some(PermAccess::Both),
            _ => None,
        }
    }

    pub fn can_read(self) -> bool {
        matches!(self, PermAccess::Read | PermAccess::Both)
    }

    pub fn can_write(self) -> bool {
        matches!(self, PermAccess::Write | PermAccess::Both)
    }
}

/// Why a permission entry or list is invalid. Each variant names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermsError {
    #[error("empty permission list")]
    EmptyList,
    #[error("empty permission entry")]
    EmptyEntry,
    #[error("permission entry {entry:?}: unknown access letter (expected n, r, w or b)")]
    BadLetter { entry: String },
    #[error("permission entry {entry:?}: domid is not a decimal number")]
    BadDomid { entry: String },
}

/// One entry: an access letter for a domain, written `r5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub domid: u32,
    pub access: PermAccess,
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

impl FromStr for Perm {
    type Err = PermsError;

    /// Parses `r5`. Stricter than libxenstore's `strtol`: the domid must be
    /// plain decimal digits, so typos are reported instead of becoming dom0.
    fn from_str(s: &str) -> Result<Self, PermsError> {
        let mut chars = s.chars();
        let letter = chars.next().ok_or(PermsError::EmptyEntry)?;
        let access = PermAccess::from_letter(letter).ok_or_else(|| PermsError::BadLetter {
            entry: s.to_owned(),
        })?;
        let digits = chars.as_str();
        let bad_domid = || PermsError::BadDomid {
            entry: s.to_owned(),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_domid());
        }
        let domid = digits.parse().map_err(|_| bad_domid())?;
        Ok(Perm { domid, access })
    }
}

/// A node's permission list: owner + default first, then overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Perms(pub Vec<Perm>);

impl Perms {
    /// `n<domid>`: the domain owns the node, nobody else may access it.
    pub fn owner_only(domid: u32) -> Self {
        Perms(vec![Perm {
            domid,
            access: PermAccess::None,
        }])
    }

    /// The owning domain (domain 0 for an empty list, which the parsers
    /// never produce).
    pub fn owner(&self) -> u32 {
        self.0.first().map_or(0, |p| p.domid)
    }

    /// The access `domid` has, ignoring privilege: the owner has both, an
    /// override entry wins next (the first one for that domid), else the
    /// default.
    pub fn access_for(&self, domid: u32) -> PermAccess {
        let Some((first, overrides)) = self.0.split_first() else {
            return PermAccess::None;
        };
        if first.domid == domid {
            return PermAccess::Both;
        }
        overrides
            .iter()
            .find(|p| p.domid == domid)
            .map_or(first.access, |p| p.access)
    }

    pub fn can_read(&self, domid: u32) -> bool {
        self.access_for(domid).can_read()
    }

    pub fn can_write(&self, domid: u32) -> bool {
        self.access_for(domid).can_write()
    }

    /// Parses the entries of a GET_PERMS reply or the tail of a SET_PERMS
    /// request. At least one entry is required.
    pub fn parse_fields<'a>(fields: impl Iterator<Item = &'a [u8]>) -> Result<Self, PermsError> {
        let mut perms = Vec::new();
        for field in fields {
            let entry = std::str::from_utf8(field).map_err(|_| PermsError::BadLetter {
                entry: String::from_utf8_lossy(field).into_owned(),
            })?;
            perms.push(entry.parse()?);
        }
        if perms.is_empty() {
            return Err(PermsError::EmptyList);
        }
        Ok(Perms(perms))
    }

    /// The wire form: every entry followed by a NUL (`n0\0r5\0`).
    pub fn to_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for perm in &self.0 {
            out.extend_from_slice(perm.to_string().as_bytes());
            out.push(0);
        }
        out
    }
}

impl fmt::Display for Perms {
    /// Entries separated by spaces, as `xenstore-ls -p` shows them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, perm) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{perm}")?;
        }
        Ok(())
    }
}

impl FromStr for Perms {
    type Err = PermsError;

    /// Parses entries separated by spaces or commas (`"n0 r5"`, `"n0,r5"`),
    /// the way command lines write them.
    fn from_str(s: &str) -> Result<Self, PermsError> {
        Self::parse_fields(
            s.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|e| !e.is_empty())
                .map(str::as_bytes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;
    use proptest::prelude::*;

    fn perms(s: &str) -> Perms {
        s.parse().unwrap()
    }

    #[test]
    fn owner_default_and_overrides() {
        let p = perms("n0 r5 w6 b7 n5");
        assert_eq!(p.owner(), 0);
        assert_eq!(p.access_for(0), PermAccess::Both);
        assert_eq!(p.access_for(5), PermAccess::Read, "first override wins");
        assert_eq!(p.access_for(6), PermAccess::Write);
        assert_eq!(p.access_for(7), PermAccess::Both);
        assert_eq!(p.access_for(9), PermAccess::None, "default");
        assert!(p.can_read(5) && !p.can_write(5));
        assert!(!p.can_read(6) && p.can_write(6));

        let guest_owned = perms("r5");
        assert!(guest_owned.can_write(5), "owner always has full access");
        assert!(guest_owned.can_read(3) && !guest_owned.can_write(3));
        assert_eq!(Perms::owner_only(4), perms("n4"));
    }

    #[test]
    fn wire_round_trip() {
        let p = perms("n0,r5");
        assert_eq!(p.to_payload(), b"n0\0r5\0");
        assert_eq!(
            Perms::parse_fields(wire::fields(&p.to_payload())).unwrap(),
            p
        );
        assert_eq!(p.to_string(), "n0 r5");
    }

    #[test]
    fn bad_permission_strings() {
        assert_eq!("".parse::<Perms>(), Err(PermsError::EmptyList));
        assert!(matches!(
            "x5".parse::<Perm>(),
            Err(PermsError::BadLetter { .. })
        ));
        assert!(matches!(
            "r".parse::<Perm>(),
            Err(PermsError::BadDomid { .. })
        ));
        assert!(matches!(
            "r-1".parse::<Perm>(),
            Err(PermsError::BadDomid { .. })
        ));
        assert!(matches!(
            "r0x5".parse::<Perm>(),
            Err(PermsError::BadDomid { .. })
        ));
        assert!(matches!(
            "r99999999999".parse::<Perm>(),
            Err(PermsError::BadDomid { .. })
        ));
        assert!(
            Perms::parse_fields(wire::fields(b"n0\0\0")).is_err(),
            "empty entry"
        );
        assert!(Perms::parse_fields(wire::fields(b"")).is_err());
        let err = "q7".parse::<Perm>().unwrap_err();
        assert!(err.to_string().contains("q7"));
    }

    proptest! {
        #[test]
        fn perms_round_trip(entries in proptest::collection::vec((0usize..4, any::<u32>()), 1..8)) {
            let letters = [PermAccess::None, PermAccess::Read, PermAccess::Write, PermAccess::Both];
            let p = Perms(entries.iter().map(|&(a, domid)| Perm { domid, access: letters[a] }).collect());
            prop_assert_eq!(Perms::parse_fields(wire::fields(&p.to_payload())).unwrap(), p.clone());
            prop_assert_eq!(p.to_string().parse::<Perms>().unwrap(), p);
        }

        #[test]
        fn arbitrary_fields_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = Perms::parse_fields(wire::fields(&raw));
        }
    }
}
