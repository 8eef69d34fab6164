//! `diskseq`: block-device identity, loop devices, xenstore and the vbd
//! handoff from the command line. Each subcommand lives in its own module;
//! this file only parses arguments and maps results to exit codes.

#[macro_use]
mod out;

mod demo;
mod dev;
mod doctor;
mod exit;
mod gen_docs;
mod hotplug_help;
mod loop_cmd;
mod loop_gc;
mod vbd_cmd;
mod xenstored_cmd;
mod xs;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "diskseq",
    version,
    about = "Race-free block-device handoff for Xen, by disk sequence number",
    after_help = exit::EXIT_STATUS_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // Each helper adds its subcommands here (one line per variant) and a
    // matching arm in `main`; the work itself lives in the module.
    /// List every block device with its diskseq and pinned target name.
    Ls(dev::LsArgs),
    /// Show one block device (path or decimal MAJ:MIN).
    Show(dev::ShowArgs),
    /// Run a command with a verified device on fd 3 (exit 124 if stale).
    Open(dev::OpenArgs),
    /// Attach, detach (verified) and list loop devices.
    #[command(subcommand)]
    Loop(loop_cmd::LoopCommand),
    /// Show the whole handoff on this host (no Xen) and the race it prevents.
    Demo(demo::DemoArgs),
    /// Run the vbd backend (blkback's protocol with the diskseq check).
    Backend(vbd_cmd::BackendArgs),
    /// Attach a disk to a guest, as libxl does (`xl block-attach`).
    Attach(vbd_cmd::AttachArgs),
    /// Detach a guest's disk, as libxl does (`xl block-detach`).
    Detach(vbd_cmd::DetachArgs),
    /// Read, write, list, remove and watch xenstore nodes.
    Xs(xs::XsArgs),
    /// Run a xenstore daemon (dom0 socket plus simulated guest sockets).
    Xenstored(xenstored_cmd::XenstoredArgs),
    /// Check whether this host's block handoff is race-free (exit 0 safe, 4 degraded, 5 unsafe).
    Doctor(doctor::DoctorArgs),
    /// Write the man pages and shell completions (scripts/package).
    #[command(hide = true)]
    GenerateDocs(gen_docs::GenDocsArgs),
}

fn main() -> ExitCode {
    // Invoked under the hotplug script's name (a link made by `diskseq
    // demo`), this binary is `block-diskseq`: the same `vbd::hotplug::main`
    // the standalone binary runs, so the demo works after `cargo run`, which
    // builds only this binary.
    if invoked_as_hotplug_script() {
        return hotplug_help::main(std::env::args_os().skip(1));
    }
    let cli: Cli = exit::parse();
    let result: exit::CmdResult = match cli.command {
        Command::Ls(args) => dev::ls(args),
        Command::Show(args) => dev::show(args),
        Command::Open(args) => dev::open(args),
        Command::Loop(command) => loop_cmd::run(command),
        Command::Demo(args) => demo::run(args),
        Command::Backend(args) => vbd_cmd::backend(args),
        Command::Attach(args) => vbd_cmd::attach(args),
        Command::Detach(args) => vbd_cmd::detach(args),
        Command::Xs(args) => xs::run(args),
        Command::Xenstored(args) => xenstored_cmd::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::GenerateDocs(args) => gen_docs::run(args),
    };
    exit::finish(result)
}

/// Whether argv[0]'s file name is `block-diskseq` (busybox-style multicall).
fn invoked_as_hotplug_script() -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .is_some_and(|arg0| arg0.file_name() == Some(demo::HOTPLUG_SCRIPT_NAME.as_ref()))
}
