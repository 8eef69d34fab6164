//! `diskseq generate-docs --out DIR` (hidden): man pages and shell
//! completions generated from the CLI definitions themselves, so they cannot
//! drift from `--help`. `scripts/package` runs it and installs the result.
//!
//! - `DIR/man/diskseq.8`, one `diskseq-<subcommand>.8` per subcommand (as
//!   git does), and `block-diskseq.8` from the constants its `--help` prints;
//! - `DIR/completions/diskseq.bash`, `_diskseq` (zsh), `diskseq.fish`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;
use clap_mangen::roff::{roman, Roff};
use clap_mangen::Man;

use crate::exit::{CmdResult, Failure, EXIT_STATUS_HELP};
use crate::hotplug_help;

/// Man pages of administration commands (both need root for their work).
const SECTION: &str = "8";
/// The manual's name in the page header.
const MANUAL: &str = "diskseq";

#[derive(Args)]
pub struct GenDocsArgs {
    /// Directory to write `man/` and `completions/` into (created).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: GenDocsArgs) -> CmdResult {
    let man_dir = args.out.join("man");
    let completions_dir = args.out.join("completions");
    for dir in [&man_dir, &completions_dir] {
        fs::create_dir_all(dir).map_err(|e| io_failure(dir, e))?;
    }
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    cmd.build();
    write_pages(&cmd, &man_dir)?;
    write_page(&man_dir, &hotplug_command(), &hotplug_sections())?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "diskseq", &completions_dir)
            .map_err(|e| io_failure(&completions_dir, e))?;
    }
    outln!("{}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Extra sections of a page: (heading, entries of (tag, text)).
type Sections = Vec<(&'static str, Vec<(String, String)>)>;

/// `cmd`'s page and, recursively, its visible subcommands' pages.
fn write_pages(cmd: &clap::Command, dir: &Path) -> Result<(), Failure> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir)?;
    }
    let name = cmd.get_display_name().unwrap_or(cmd.get_name());
    let mut sections: Sections = Vec::new();
    if name == "diskseq" || name == "diskseq-open" {
        sections.push(("EXIT STATUS", exit_status_entries()));
    }
    if name == "diskseq" {
        sections.push((
            "SEE ALSO",
            vec![(
                String::new(),
                "block-diskseq(8), losetup(8), lsblk(8), xl-disk-configuration(5); \
                 one page per subcommand: diskseq-ls(8), diskseq-loop-attach(8), ..."
                    .into(),
            )],
        ));
    } else {
        sections.push(("SEE ALSO", vec![(String::new(), "diskseq(8)".into())]));
    }
    write_page(dir, cmd, &sections)
}

/// Renders one page: clap_mangen's sections, then ours, then the version
/// (clap's after-help text is replaced by the sections it summarises).
fn write_page(dir: &Path, cmd: &clap::Command, sections: &Sections) -> Result<(), Failure> {
    let man = Man::new(cmd.clone().after_help(None::<&str>))
        .section(SECTION)
        .manual(MANUAL)
        .source(format!("diskseq {}", env!("CARGO_PKG_VERSION")));
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    let rendered = (|| -> std::io::Result<()> {
        man.render_title(&mut page)?;
        man.render_name_section(&mut page)?;
        man.render_synopsis_section(&mut page)?;
        man.render_description_section(&mut page)?;
        if cmd.get_arguments().any(|a| !a.is_hide_set()) {
            man.render_options_section(&mut page)?;
        }
        if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
            man.render_subcommands_section(&mut page)?;
        }
        let mut roff = Roff::default();
        for (heading, entries) in sections {
            roff.control("SH", [*heading]);
            for (tag, text) in entries {
                if tag.is_empty() {
                    roff.text([roman(text.replace('\n', " "))]);
                } else {
                    roff.control("TP", []);
                    roff.text([roman(tag.as_str())]);
                    roff.text([roman(text.replace('\n', " "))]);
                }
            }
        }
        roff.to_writer(&mut page)?;
        if cmd.get_version().is_some() {
            man.render_version_section(&mut page)?;
        }
        Ok(())
    })();
    rendered.map_err(|e| io_failure(&path, e))?;
    fs::File::create(&path)
        .and_then(|mut file| file.write_all(&page))
        .map_err(|e| io_failure(&path, e))
}

/// `block-diskseq` as a clap `Command`, for its man page only (the script
/// itself never parses with clap; see `hotplug_help`).
fn hotplug_command() -> clap::Command {
    clap::Command::new(hotplug_help::NAME)
        .version(env!("CARGO_PKG_VERSION"))
        .about(hotplug_help::ABOUT)
        .long_about(hotplug_help::DESCRIPTION.replace('\n', " "))
        .arg(
            clap::Arg::new("command")
                .value_name("add|remove")
                .required(true)
                .help("add: publish the disk and hand it over; remove: withdraw and detach"),
        )
}

fn hotplug_sections() -> Sections {
    let entries = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(tag, text)| (tag.to_string(), text.to_string()))
            .collect()
    };
    vec![
        ("ENVIRONMENT", entries(hotplug_help::ENVIRONMENT)),
        ("EXIT STATUS", entries(hotplug_help::EXIT_STATUS)),
        (
            "FILES",
            vec![(
                "/etc/xen/scripts/block-diskseq".into(),
                "Where libxl finds the script (script=block-diskseq in a disk spec).".into(),
            )],
        ),
        (
            "SEE ALSO",
            vec![(
                String::new(),
                "diskseq(8), xl-disk-configuration(5), /usr/share/doc/diskseq/README.Debian".into(),
            )],
        ),
    ]
}

/// `exit::EXIT_STATUS_HELP`'s lines ("  124  open: stale ...") as entries.
fn exit_status_entries() -> Vec<(String, String)> {
    EXIT_STATUS_HELP
        .lines()
        .skip(1)
        .filter_map(|line| {
            let line = line.trim();
            let (code, text) = line.split_once(char::is_whitespace)?;
            Some((code.to_owned(), text.trim().to_owned()))
        })
        .collect()
}

fn io_failure(path: &Path, e: std::io::Error) -> Failure {
    Failure::Error(format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every command says what it is: the man pages and
    /// completions are generated from these texts.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.get_help().is_none() && !matches!(id, "help" | "version") {
                    missing.push(format!("{} {id}", cmd.get_name()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, missing);
            }
        }
        let mut missing = Vec::new();
        let mut cmd = crate::Cli::command();
        cmd.build();
        walk(&cmd, &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    #[test]
    fn pages_and_completions_are_generated() {
        let dir = tempfile::tempdir().unwrap();
        run(GenDocsArgs {
            out: dir.path().to_owned(),
        })
        .unwrap();
        let read = |rel: &str| {
            fs::read_to_string(dir.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
        };
        let top = read("man/diskseq.8");
        assert!(top.contains(".TH diskseq 8"), "{top}");
        assert!(top.contains("EXIT STATUS") && top.contains("124"), "{top}");
        let open = read("man/diskseq-open.8");
        assert!(open.contains("127"), "{open}");
        assert!(read("man/diskseq-loop-attach.8").contains("autoclear"));
        assert!(!dir.path().join("man/diskseq-generate-docs.8").exists());
        let hotplug = read("man/block-diskseq.8");
        for needle in [
            "ENVIRONMENT",
            "BLOCK_DISKSEQ_HANDOFF",
            "EXIT STATUS",
            "XENBUS_PATH",
        ] {
            assert!(hotplug.contains(needle), "{needle} missing:\n{hotplug}");
        }
        assert!(read("completions/diskseq.bash").contains("loop"));
        assert!(read("completions/_diskseq").contains("#compdef diskseq"));
        assert!(read("completions/diskseq.fish").contains("complete -c diskseq"));
    }
}
