//! The xenstore entries libxl writes for one disk, as data: which nodes go
//! in the backend and frontend directories and who may read or write them.
//!
//! Kept apart from the code that writes them so the permission rule — the
//! guest may read its backend directory but never write it, so it cannot
//! forge `physical-device`, `diskseq`, `params` or `mode` — is one table
//! that unit tests check and the end-to-end tests then prove on the daemon.

use std::path::PathBuf;

use xenstore::perms::{Perm, PermAccess, Perms};

use crate::toolstack::vdev::Vdev;
use vbd::schema::{node, BackendPath, Mode, XenbusState};

/// `disk` or `cdrom` (the `device-type` node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceType {
    /// A disk.
    #[default]
    Disk,
    /// A cdrom (read-only media).
    Cdrom,
}

impl DeviceType {
    /// The node's value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Disk => "disk",
            DeviceType::Cdrom => "cdrom",
        }
    }
}

/// One disk to attach, as `xl block-attach` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The guest.
    pub frontend_domid: u32,
    /// The domain running the backend (0: this one).
    pub backend_domid: u32,
    /// The guest's device name and id.
    pub vdev: Vdev,
    /// `params`: a block device or a regular file.
    pub target: PathBuf,
    /// Access for the guest.
    pub mode: Mode,
    /// Disk or cdrom.
    pub device_type: DeviceType,
    /// The hotplug script (`script` node).
    pub script: PathBuf,
    /// `discard-enable`.
    pub discard_enable: bool,
}

/// The directories, nodes and permissions of one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The backend directory (absolute form).
    pub backend: BackendPath,
    /// `/local/domain/<fe>/device/vbd/<devid>`.
    pub frontend_dir: String,
    /// Nodes of the backend directory (besides `frontend`, which comes
    /// first and is listed here too).
    pub backend_nodes: Vec<(&'static str, String)>,
    /// Nodes of the frontend directory.
    pub frontend_nodes: Vec<(&'static str, String)>,
    /// Backend dir: owned by the backend domain, readable by the guest.
    pub backend_perms: Perms,
    /// Frontend dir: owned by the guest, readable by the backend domain.
    pub frontend_perms: Perms,
}

/// Where a guest's frontend directory for `devid` lives.
pub fn frontend_dir(frontend_domid: u32, devid: u32) -> String {
    format!("/local/domain/{frontend_domid}/device/vbd/{devid}")
}

impl Layout {
    /// libxl's entries for `spec`.
    pub fn new(spec: &DiskSpec) -> Self {
        let backend =
            BackendPath::new_absolute(spec.backend_domid, spec.frontend_domid, spec.vdev.devid);
        let frontend_dir = frontend_dir(spec.frontend_domid, spec.vdev.devid);
        let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
        let initialising = XenbusState::Initialising.to_string();
        let backend_nodes = vec![
            (node::FRONTEND, frontend_dir.clone()),
            (node::FRONTEND_ID, spec.frontend_domid.to_string()),
            (node::ONLINE, "1".into()),
            (node::REMOVABLE, flag(spec.device_type == DeviceType::Cdrom)),
            (node::BOOTABLE, "1".into()),
            (node::STATE, initialising.clone()),
            (node::DEV, spec.vdev.name.clone()),
            (node::TYPE, "phy".into()),
            (node::MODE, spec.mode.to_string()),
            (node::DEVICE_TYPE, spec.device_type.as_str().into()),
            (node::PARAMS, spec.target.to_string_lossy().into_owned()),
            (node::SCRIPT, spec.script.to_string_lossy().into_owned()),
            (node::DISCARD_ENABLE, flag(spec.discard_enable)),
            (node::SPECIFICATION, "xen".into()),
        ];
        let frontend_nodes = vec![
            (node::frontend::BACKEND, backend.dir()),
            (node::frontend::BACKEND_ID, spec.backend_domid.to_string()),
            (node::frontend::STATE, initialising),
            (node::frontend::VIRTUAL_DEVICE, spec.vdev.devid.to_string()),
            (
                node::frontend::DEVICE_TYPE,
                spec.device_type.as_str().into(),
            ),
        ];
        Layout {
            backend,
            frontend_dir,
            backend_nodes,
            frontend_nodes,
            backend_perms: owned_readable_by(spec.backend_domid, spec.frontend_domid),
            frontend_perms: owned_readable_by(spec.frontend_domid, spec.backend_domid),
        }
    }

    /// The backend directory's absolute path.
    pub fn backend_dir(&self) -> String {
        self.backend.dir()
    }
}

/// `n<owner>, r<reader>`: the owner has full access, `reader` may read,
/// everyone else nothing.
fn owned_readable_by(owner: u32, reader: u32) -> Perms {
    Perms(vec![
        Perm {
            domid: owner,
            access: PermAccess::None,
        },
        Perm {
            domid: reader,
            access: PermAccess::Read,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DiskSpec {
        DiskSpec {
            frontend_domid: 5,
            backend_domid: 0,
            vdev: "xvda".parse().unwrap(),
            target: "/srv/a.img".into(),
            mode: Mode::ReadWrite,
            device_type: DeviceType::Disk,
            script: "/usr/lib/diskseq/block-diskseq".into(),
            discard_enable: true,
        }
    }

    #[test]
    fn nodes_are_libxls() {
        let layout = Layout::new(&spec());
        assert_eq!(layout.backend_dir(), "/local/domain/0/backend/vbd/5/51712");
        assert_eq!(layout.frontend_dir, "/local/domain/5/device/vbd/51712");
        let value = |nodes: &[(&str, String)], name: &str| {
            nodes
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        let be = &layout.backend_nodes;
        assert_eq!(be[0], (node::FRONTEND, layout.frontend_dir.clone()));
        for (name, want) in [
            (node::FRONTEND_ID, "5"),
            (node::ONLINE, "1"),
            (node::STATE, "1"),
            (node::TYPE, "phy"),
            (node::MODE, "w"),
            (node::DEV, "xvda"),
            (node::PARAMS, "/srv/a.img"),
            (node::DEVICE_TYPE, "disk"),
            (node::SPECIFICATION, "xen"),
            (node::DISCARD_ENABLE, "1"),
            (node::BOOTABLE, "1"),
            (node::REMOVABLE, "0"),
        ] {
            assert_eq!(value(be, name).as_deref(), Some(want), "{name}");
        }
        let fe = &layout.frontend_nodes;
        assert_eq!(
            value(fe, node::frontend::BACKEND).as_deref(),
            Some("/local/domain/0/backend/vbd/5/51712")
        );
        assert_eq!(
            value(fe, node::frontend::VIRTUAL_DEVICE).as_deref(),
            Some("51712")
        );
        assert_eq!(value(fe, node::frontend::STATE).as_deref(), Some("1"));
        // The script writes these, the backend reads them: never the toolstack.
        for name in [node::PHYSICAL_DEVICE, node::DISKSEQ, node::OPENED] {
            assert_eq!(value(be, name), None, "{name}");
        }
    }

    #[test]
    fn the_guest_reads_its_backend_dir_and_never_writes_it() {
        let layout = Layout::new(&spec());
        let be = &layout.backend_perms;
        assert_eq!(be.owner(), 0);
        assert!(be.can_read(5) && !be.can_write(5));
        assert!(
            !be.can_read(6) && !be.can_write(6),
            "other guests see nothing"
        );
        let fe = &layout.frontend_perms;
        assert_eq!(fe.owner(), 5);
        assert!(fe.can_write(5) && fe.can_read(0));
        assert!(!fe.can_read(6));
    }

    #[test]
    fn read_only_cdrom() {
        let mut spec = spec();
        spec.mode = Mode::ReadOnly;
        spec.device_type = DeviceType::Cdrom;
        spec.discard_enable = false;
        spec.backend_domid = 3;
        let layout = Layout::new(&spec);
        assert!(layout.backend_nodes.contains(&(node::MODE, "r".into())));
        assert!(layout
            .backend_nodes
            .contains(&(node::DEVICE_TYPE, "cdrom".into())));
        assert!(layout
            .backend_nodes
            .contains(&(node::REMOVABLE, "1".into())));
        assert!(layout
            .backend_nodes
            .contains(&(node::DISCARD_ENABLE, "0".into())));
        assert_eq!(layout.backend_dir(), "/local/domain/3/backend/vbd/5/51712");
        assert_eq!(layout.backend_perms.owner(), 3);
    }
}
