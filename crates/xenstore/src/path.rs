//! Validated xenstore paths.
//!
//! The rules are the daemons' (`is_valid_nodename` in the C xenstored): the
//! characters `A-Z a-z 0-9 - / _ @`, no `//`, no trailing `/` except the root,
//! not empty, at most [`ABS_PATH_MAX`] bytes absolute. A path that starts
//! with neither `/` nor `@` is relative to the caller's home
//! `/local/domain/<domid>`. Paths starting with `@` are the special watch
//! paths [`INTRODUCE_DOMAIN`] and [`RELEASE_DOMAIN`]; no other `@` name is
//! accepted. Inside an ordinary path `@` is an ordinary character, as both
//! real daemons allow.

use std::fmt;

/// Longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;

/// Longest relative path as written by a caller (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;

/// Special watch path fired when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";

/// Special watch path fired when a domain is released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// Why a string is not a valid xenstore path. Every variant names the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty xenstore path")]
    Empty,
    #[error("xenstore path {path:?}: invalid character {ch:?} (allowed: A-Z a-z 0-9 - / _ @)")]
    InvalidChar { path: String, ch: char },
    #[error("xenstore path {path:?} contains \"//\"")]
    DoubleSlash { path: String },
    #[error("xenstore path {path:?} ends with \"/\"")]
    TrailingSlash { path: String },
    #[error("xenstore path {path:?} is {len} bytes, more than the limit of {max}")]
    TooLong {
        path: String,
        len: usize,
        max: usize,
    },
    #[error("xenstore path {path:?} is not absolute")]
    NotAbsolute { path: String },
    #[error(
        "xenstore path {path:?} is not a known special path (@introduceDomain, @releaseDomain)"
    )]
    UnknownSpecial { path: String },
    #[error("xenstore path {path:?} is special and has no parent or children")]
    SpecialHasNoChildren { path: String },
}

/// An absolute or special xenstore path that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct XsPath(String);

impl XsPath {
    /// The root node `/`.
    pub fn root() -> Self {
        XsPath("/".to_owned())
    }

    /// Parses an absolute (`/…`) or special (`@…`) path.
    pub fn parse_absolute(s: &str) -> Result<Self, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.starts_with('@') {
            return if s == INTRODUCE_DOMAIN || s == RELEASE_DOMAIN {
                Ok(XsPath(s.to_owned()))
            } else {
                Err(PathError::UnknownSpecial { path: s.to_owned() })
            };
        }
        if !s.starts_with('/') {
            return Err(PathError::NotAbsolute { path: s.to_owned() });
        }
        check_syntax(s, ABS_PATH_MAX)?;
        Ok(XsPath(s.to_owned()))
    }

    /// Resolves `s` as the daemon does for a caller of domain `caller_domid`:
    /// relative paths go below `/local/domain/<caller_domid>`.
    pub fn resolve(s: &str, caller_domid: u32) -> Result<Self, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.starts_with('/') || s.starts_with('@') {
            return Self::parse_absolute(s);
        }
        check_syntax(s, REL_PATH_MAX)?;
        let full = format!("/local/domain/{caller_domid}/{s}");
        check_syntax(&full, ABS_PATH_MAX)?;
        Ok(XsPath(full))
    }

    /// Checks the syntax of a path as a client would send it, absolute or
    /// relative, without resolving it.
    pub fn validate_request(s: &str) -> Result<(), PathError> {
        if s.starts_with('/') || s.starts_with('@') {
            Self::parse_absolute(s).map(drop)
        } else if s.is_empty() {
            Err(PathError::Empty)
        } else {
            check_syntax(s, REL_PATH_MAX)
        }
    }

    /// `/local/domain/<domid>`, the home relative paths resolve against.
    pub fn domain_home(domid: u32) -> Self {
        XsPath(format!("/local/domain/{domid}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `@introduceDomain` or `@releaseDomain`.
    pub fn is_special(&self) -> bool {
        self.0.starts_with('@')
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The enclosing node; `None` for the root and for special paths.
    pub fn parent(&self) -> Option<XsPath> {
        if self.is_special() || self.is_root() {
            return None;
        }
        let cut = self.0.rfind('/')?;
        Some(XsPath(if cut == 0 {
            "/".to_owned()
        } else {
            self.0[..cut].to_owned()
        }))
    }

    /// The last component (`"c"` for `/a/b/c`, `""` for the root).
    pub fn name(&self) -> &str {
        match self.0.rfind('/') {
            Some(cut) => &self.0[cut + 1..],
            None => &self.0,
        }
    }

    /// The path of `child` below this node; `child` may have several
    /// components (`"a/b"`) and is validated.
    pub fn join(&self, child: &str) -> Result<XsPath, PathError> {
        if self.is_special() {
            return Err(PathError::SpecialHasNoChildren {
                path: self.0.clone(),
            });
        }
        if child.is_empty() {
            return Err(PathError::Empty);
        }
        let full = if self.is_root() {
            format!("/{child}")
        } else {
            format!("{}/{child}", self.0)
        };
        check_syntax(&full, ABS_PATH_MAX)?;
        Ok(XsPath(full))
    }

    /// Whether this node is `ancestor` or inside its subtree — the watch
    /// matching rule. `/a/b` is below `/a` and `/`; `/ab` is not below `/a`.
    /// Special paths match only themselves.
    pub fn is_at_or_below(&self, ancestor: &XsPath) -> bool {
        if self.0 == ancestor.0 {
            return true;
        }
        if self.is_special() || ancestor.is_special() {
            return false;
        }
        ancestor.is_root()
            || self
                .0
                .strip_prefix(ancestor.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// This path written relative to `base` (`""` when equal), or `None`
    /// when it is not at or below `base`. Relative watches report event paths
    /// relative to the caller's home this way.
    pub fn relative_to(&self, base: &XsPath) -> Option<&str> {
        if !self.is_at_or_below(base) {
            return None;
        }
        let rest = &self.0[base.0.len()..];
        Some(rest.strip_prefix('/').unwrap_or(rest))
    }
}

impl fmt::Display for XsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for XsPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for XsPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, PathError> {
        Self::parse_absolute(s)
    }
}

/// Character set, `//`, trailing `/` and length checks shared by absolute
/// and relative paths.
fn check_syntax(s: &str, max: usize) -> Result<(), PathError> {
    if s.is_empty() {
        return Err(PathError::Empty);
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '@')))
    {
        return Err(PathError::InvalidChar {
            path: s.to_owned(),
            ch,
        });
    }
    if s.contains("//") {
        return Err(PathError::DoubleSlash { path: s.to_owned() });
    }
    if s.len() > 1 && s.ends_with('/') {
        return Err(PathError::TrailingSlash { path: s.to_owned() });
    }
    if s.len() > max {
        return Err(PathError::TooLong {
            path: s.to_owned(),
            len: s.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> XsPath {
        XsPath::parse_absolute(s).unwrap()
    }

    #[test]
    fn accepts_valid_paths() {
        for s in [
            "/",
            "/a",
            "/local/domain/0/backend/vbd/5/51712",
            "/A-z_0@9",
            INTRODUCE_DOMAIN,
            RELEASE_DOMAIN,
        ] {
            assert_eq!(p(s).as_str(), s);
        }
    }

    #[test]
    fn rejects_invalid_paths() {
        type IsExpected = fn(&PathError) -> bool;
        let cases: [(&str, IsExpected); 7] = [
            ("", |e| matches!(e, PathError::Empty)),
            ("/a b", |e| {
                matches!(e, PathError::InvalidChar { ch: ' ', .. })
            }),
            ("/a.b", |e| {
                matches!(e, PathError::InvalidChar { ch: '.', .. })
            }),
            ("/a//b", |e| matches!(e, PathError::DoubleSlash { .. })),
            ("/a/", |e| matches!(e, PathError::TrailingSlash { .. })),
            ("a/b", |e| matches!(e, PathError::NotAbsolute { .. })),
            ("@foo", |e| matches!(e, PathError::UnknownSpecial { .. })),
        ];
        for (s, ok) in cases {
            let err = XsPath::parse_absolute(s).unwrap_err();
            assert!(ok(&err), "{s:?}: unexpected {err:?}");
            if !s.is_empty() {
                assert!(
                    err.to_string().contains(s),
                    "error {err} does not name {s:?}"
                );
            }
        }
        assert!(XsPath::parse_absolute("/a\0b").is_err());
        assert!(XsPath::parse_absolute("/é").is_err());
    }

    #[test]
    fn length_limits() {
        let max = format!("/{}", "a".repeat(ABS_PATH_MAX - 1));
        assert!(XsPath::parse_absolute(&max).is_ok());
        let over = format!("{max}a");
        assert!(matches!(
            XsPath::parse_absolute(&over),
            Err(PathError::TooLong { len: 3073, .. })
        ));
        let rel = "a".repeat(REL_PATH_MAX + 1);
        assert!(matches!(
            XsPath::resolve(&rel, 0),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn resolves_relative_against_domain_home() {
        assert_eq!(
            XsPath::resolve("backend/vbd/5/51712", 0).unwrap().as_str(),
            "/local/domain/0/backend/vbd/5/51712"
        );
        assert_eq!(
            XsPath::resolve("device", 7).unwrap().as_str(),
            "/local/domain/7/device"
        );
        assert_eq!(XsPath::resolve("/abs", 7).unwrap().as_str(), "/abs");
        assert_eq!(
            XsPath::resolve("@releaseDomain", 7).unwrap().as_str(),
            "@releaseDomain"
        );
        assert!(XsPath::resolve("a/", 7).is_err());
        assert!(XsPath::resolve("", 7).is_err());
        assert_eq!(XsPath::domain_home(3).as_str(), "/local/domain/3");
    }

    #[test]
    fn parent_name_and_join() {
        assert_eq!(p("/a/b").parent(), Some(p("/a")));
        assert_eq!(p("/a").parent(), Some(p("/")));
        assert_eq!(p("/").parent(), None);
        assert_eq!(p(INTRODUCE_DOMAIN).parent(), None);
        assert_eq!(p("/a/b").name(), "b");
        assert_eq!(p("/").name(), "");
        assert_eq!(p("/").join("a").unwrap(), p("/a"));
        assert_eq!(p("/a").join("b/c").unwrap(), p("/a/b/c"));
        assert!(p("/a").join("").is_err());
        assert!(p("/a").join("b/").is_err());
        assert!(p("/a").join("/b").is_err(), "leading slash makes a //");
        assert!(p(RELEASE_DOMAIN).join("x").is_err());
    }

    #[test]
    fn subtree_matching() {
        assert!(p("/a/b").is_at_or_below(&p("/a")));
        assert!(p("/a/b").is_at_or_below(&p("/")));
        assert!(p("/a").is_at_or_below(&p("/a")));
        assert!(!p("/ab").is_at_or_below(&p("/a")));
        assert!(!p("/a").is_at_or_below(&p("/a/b")));
        assert!(!p(INTRODUCE_DOMAIN).is_at_or_below(&p("/")));
        assert!(p(INTRODUCE_DOMAIN).is_at_or_below(&p(INTRODUCE_DOMAIN)));
    }

    #[test]
    fn relative_event_paths() {
        let home = XsPath::domain_home(5);
        assert_eq!(
            p("/local/domain/5/device/vbd").relative_to(&home),
            Some("device/vbd")
        );
        assert_eq!(home.relative_to(&home), Some(""));
        assert_eq!(p("/local/domain/50").relative_to(&home), None);
        assert_eq!(p("/a/b").relative_to(&p("/")), Some("a/b"));
    }

    proptest! {
        #[test]
        fn valid_paths_round_trip(parts in proptest::collection::vec("[A-Za-z0-9_@-]{1,12}", 0..8)) {
            let s = format!("/{}", parts.join("/"));
            let path = XsPath::parse_absolute(&s).unwrap();
            prop_assert_eq!(path.as_str(), s.as_str());
            if let Some(parent) = path.parent() {
                prop_assert_eq!(parent.join(path.name()).unwrap(), path.clone());
                prop_assert!(path.is_at_or_below(&parent));
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,40}", domid in any::<u32>()) {
            if let Ok(path) = XsPath::resolve(&s, domid) {
                // Whatever resolves is a valid absolute path again.
                prop_assert_eq!(XsPath::parse_absolute(path.as_str()).unwrap(), path);
            }
        }
    }
}
