// The floor of a process start in the test dom0: a static (musl) Rust
// program that does nothing. Built by tests/xen/run with rustc alone.
fn main() {}
