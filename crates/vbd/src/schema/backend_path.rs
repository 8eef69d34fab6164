//! Where a vbd lives in xenstore, and the label its loop device carries.

use std::fmt;
use std::str::FromStr;

use diskseq::LoopLabel;

use super::{parse_id, SchemaError};

/// Where a vbd's backend directory lives: `backend/vbd/<fe-domid>/<devid>`
/// under the backend domain's home.
///
/// libxl passes the relative form in `XENBUS_PATH`; the daemon resolves it
/// against the caller's home, so a script need not know its own domid. The
/// absolute form `/local/domain/<be>/backend/vbd/<fe>/<devid>` is accepted
/// too and kept as given: [`BackendPath::node`] answers in the form parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendPath {
    backend_domid: Option<u32>,
    frontend_domid: u32,
    devid: u32,
}

const BACKEND_VBD_PREFIX: &str = "backend/vbd/";
const DOMAIN_PREFIX: &str = "/local/domain/";

impl BackendPath {
    /// A backend path in relative form.
    pub fn new(frontend_domid: u32, devid: u32) -> Self {
        BackendPath {
            backend_domid: None,
            frontend_domid,
            devid,
        }
    }

    /// A backend path in absolute form, for a backend in `backend_domid`.
    pub fn new_absolute(backend_domid: u32, frontend_domid: u32, devid: u32) -> Self {
        BackendPath {
            backend_domid: Some(backend_domid),
            frontend_domid,
            devid,
        }
    }

    /// Parses `backend/vbd/<fe>/<devid>` or
    /// `/local/domain/<be>/backend/vbd/<fe>/<devid>` (decimal ids, nothing
    /// after the devid).
    pub fn parse(s: &str) -> Result<Self, SchemaError> {
        let bad = |reason| SchemaError::BadBackendPath {
            path: s.to_owned(),
            reason,
        };
        let (backend_domid, rest) = match s.strip_prefix(DOMAIN_PREFIX) {
            Some(abs) => {
                let (be, rest) = abs.split_once('/').ok_or_else(|| bad("no backend dir"))?;
                (
                    Some(parse_id(be).ok_or_else(|| bad("backend domid is not a number"))?),
                    rest,
                )
            }
            None if s.starts_with('/') => {
                return Err(bad("absolute path is not under /local/domain/<domid>/"))
            }
            None => (None, s),
        };
        let rest = rest
            .strip_prefix(BACKEND_VBD_PREFIX)
            .ok_or_else(|| bad("expected backend/vbd/<frontend-domid>/<devid>"))?;
        let (fe, devid) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected <frontend-domid>/<devid>"))?;
        Ok(BackendPath {
            backend_domid,
            frontend_domid: parse_id(fe).ok_or_else(|| bad("frontend domid is not a number"))?,
            devid: parse_id(devid).ok_or_else(|| bad("devid is not a number"))?,
        })
    }

    /// The backend domain, when the path was absolute.
    pub fn backend_domid(&self) -> Option<u32> {
        self.backend_domid
    }

    /// The frontend (guest) domain.
    pub fn frontend_domid(&self) -> u32 {
        self.frontend_domid
    }

    /// The virtual device number (e.g. 51712 for xvda).
    pub fn devid(&self) -> u32 {
        self.devid
    }

    /// `backend/vbd/<fe>/<devid>`.
    pub fn relative(&self) -> String {
        format!("{BACKEND_VBD_PREFIX}{}/{}", self.frontend_domid, self.devid)
    }

    /// `/local/domain/<be>/backend/vbd/<fe>/<devid>`.
    pub fn absolute(&self, backend_domid: u32) -> String {
        format!("{DOMAIN_PREFIX}{backend_domid}/{}", self.relative())
    }

    /// The same directory with its backend domain known.
    pub fn with_backend_domid(&self, backend_domid: u32) -> Self {
        BackendPath {
            backend_domid: Some(backend_domid),
            ..self.clone()
        }
    }

    /// The directory in the form it was parsed (relative or absolute).
    pub fn dir(&self) -> String {
        match self.backend_domid {
            Some(be) => self.absolute(be),
            None => self.relative(),
        }
    }

    /// A node inside the backend directory, in the form it was parsed.
    pub fn node(&self, name: &str) -> String {
        format!("{}/{name}", self.dir())
    }

    /// `backend/vbd/<fe>`: the parent listing every vbd of this frontend.
    pub fn frontend_dir(&self) -> String {
        let dir = self.dir();
        match dir.rsplit_once('/') {
            Some((parent, _)) => parent.to_owned(),
            None => dir,
        }
    }

    /// Where `xenbus_dev_fatal` reports errors for this device:
    /// `/local/domain/<be>/error/backend/vbd/<fe>/<devid>/error`.
    pub fn error_node(&self, backend_domid: u32) -> String {
        format!(
            "{DOMAIN_PREFIX}{backend_domid}/error/{}/error",
            self.relative()
        )
    }

    /// The stock sysfs name of this device in the backend domain
    /// (`vbd-<fe>-<devid>` under `/sys/bus/xen-backend/devices`).
    pub fn sysfs_name(&self) -> String {
        format!("vbd-{}-{}", self.frontend_domid, self.devid)
    }
}

impl fmt::Display for BackendPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dir())
    }
}

impl FromStr for BackendPath {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// What a loop device created for a vbd carries in its name field: the
/// backend directory it was made for. `remove` finds by it the device of an
/// `add` killed before it published, and `diskseq loop gc` the devices whose
/// backend is gone; a device without it is never touched.
pub const LOOP_LABEL_PREFIX: &str = "diskseq-vbd:";

impl BackendPath {
    /// The label of a loop device made for this backend:
    /// `diskseq-vbd:vbd/<fe>/<devid>` for the relative form (this domain's
    /// backend), `diskseq-vbd:<be>/vbd/<fe>/<devid>` for the absolute one.
    /// At most 48 bytes, within the kernel's 63.
    pub fn loop_label(&self) -> LoopLabel {
        let tail = format!("vbd/{}/{}", self.frontend_domid, self.devid);
        let text = match self.backend_domid {
            Some(be) => format!("{LOOP_LABEL_PREFIX}{be}/{tail}"),
            None => format!("{LOOP_LABEL_PREFIX}{tail}"),
        };
        LoopLabel::new(text).expect("a vbd label is short printable ASCII")
    }

    /// The backend a [`loop_label`](Self::loop_label) names; `None` for any
    /// other label.
    pub fn from_loop_label(label: &LoopLabel) -> Option<BackendPath> {
        let rest = label.as_str().strip_prefix(LOOP_LABEL_PREFIX)?;
        let path = match rest.split_once("/vbd/") {
            Some((be, tail)) => format!("{DOMAIN_PREFIX}{be}/{BACKEND_VBD_PREFIX}{tail}"),
            None => format!("backend/{}", rest),
        };
        BackendPath::parse(&path)
            .ok()
            .filter(|parsed| parsed.loop_label() == *label)
    }
}
