//! xenstored
