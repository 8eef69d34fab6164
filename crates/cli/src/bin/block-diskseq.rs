//! `block-diskseq add|remove`: the Xen block hotplug script (see crate `vbd`).
fn main() {
    eprintln!("block-diskseq: not built yet");
    std::process::exit(1);
}
