//! vbd
pub mod backend;
pub mod demo;
pub mod frontend;
pub mod hotplug;
pub mod schema;
pub mod toolstack;
