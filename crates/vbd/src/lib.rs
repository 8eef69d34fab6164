//! vbd
