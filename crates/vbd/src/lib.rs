//! What ships to a Xen host: the VBD record and the hotplug script that
//! writes it.
//!
//! - [`schema`]: the typed shape of a vbd backend directory in xenstore —
//!   every node name, and the one parser of every value the toolstack, the
//!   script and a backend exchange (`physical-device`, `diskseq`, …);
//! - [`hotplug`]: `block-diskseq add|remove`, libxl's block hotplug script.
//!
//! Nothing here is simulated: the simulators (blkback, blkfront, libxl) and
//! the demo live in the `xen-sim` crate, which depends on this one and never
//! the other way round.

pub mod hotplug;
pub mod schema;
