//! `diskseq xs read|write|ls|rm|watch`: look inside xenstore without
//! Debian's `xenstore-utils`, with the same output conventions (values are
//! shown C-escaped, `ls` prints `path = "value"` lines like `xenstore-ls -f`).

use crate::exit::{CmdResult, Failure};
use clap::{Args, Subcommand};
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use xenstore::{Client, Errno};

#[derive(Args)]
pub struct XsArgs {
    /// Daemon socket or xenbus device (a socket is connected to, anything
    /// else is opened as a device, as libxenstore does); default:
    /// $XENSTORED_PATH, $XENSTORED_RUNDIR/socket, /var/run/xenstored/socket,
    /// then /dev/xen/xenbus.
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: XsCommand,
}

#[derive(Subcommand)]
enum XsCommand {
    /// Print the value of each PATH, one per line (read in one transaction).
    Read {
        /// Print values as they are instead of C-escaped.
        #[arg(short = 'R', long)]
        raw: bool,
        /// Nodes to read: absolute (/local/domain/0/name) or relative to
        /// this connection's home (name).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Set each PATH to VALUE (in one transaction); creates missing parents.
    Write {
        /// Take values literally instead of interpreting \n, \t, \\, \xNN.
        #[arg(short = 'R', long)]
        raw: bool,
        /// PATH VALUE pairs.
        #[arg(required = true, value_names = ["PATH", "VALUE"], num_args = 2..)]
        pairs: Vec<String>,
    },
    /// Print the tree below PATH (default /) as `path = "value"` lines.
    Ls {
        /// Also print each node's permissions.
        #[arg(short = 'p', long)]
        perms: bool,
        /// The subtree's root: absolute, or relative to this connection's home.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Remove each PATH and everything below it (in one transaction).
    Rm {
        /// Nodes to remove with their subtrees: absolute, or relative to
        /// this connection's home.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Watch each PATH and print the path of every event, one per line.
    Watch {
        /// Stop after this many events (the first fires at once).
        #[arg(short = 'n', long, value_name = "N")]
        count: Option<u64>,
        /// Nodes to watch (each with its subtree), or a special path such as
        /// @introduceDomain / @releaseDomain.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
}

pub fn run(args: XsArgs) -> CmdResult {
    let mut client = match &args.socket {
        Some(path) => Client::connect_path(path),
        None => Client::connect(),
    }
    .map_err(fail)?;
    let mut out = io::stdout().lock();
    match args.command {
        XsCommand::Read { raw, paths } => read(&mut client, &mut out, &paths, raw),
        XsCommand::Write { raw, pairs } => write(&mut client, &pairs, raw),
        XsCommand::Ls { perms, path } => ls(&mut client, &mut out, &path, perms),
        XsCommand::Rm { paths } => rm(&mut client, &paths),
        XsCommand::Watch { count, paths } => watch(&mut client, &mut out, &paths, count),
    }
}

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::Error(e.to_string())
}

fn read(client: &mut Client, out: &mut impl Write, paths: &[String], raw: bool) -> CmdResult {
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let values = client.transaction(|tx| tx.read_many(&refs)).map_err(fail)?;
    for (path, value) in paths.iter().zip(values) {
        let value = value
            .ok_or_else(|| Failure::Error(format!("xenstore READ {path}: {}", Errno::ENOENT)))?;
        if raw {
            out.write_all(&value)
        } else {
            writeln!(out, "{}", escape_value(&value))
        }
        .map_err(fail)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write(client: &mut Client, pairs: &[String], raw: bool) -> CmdResult {
    if pairs.len() % 2 != 0 {
        return Err(Failure::Error(format!(
            "write needs PATH VALUE pairs, got {} arguments",
            pairs.len()
        )));
    }
    let items: Vec<(&str, Vec<u8>)> = pairs
        .chunks_exact(2)
        .map(|pair| {
            let value = if raw {
                pair[1].as_bytes().to_vec()
            } else {
                unescape_value(&pair[1])
            };
            (pair[0].as_str(), value)
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = items.iter().map(|(p, v)| (*p, v.as_slice())).collect();
    client
        .transaction(|tx| tx.write_many(&refs))
        .map_err(fail)?;
    Ok(ExitCode::SUCCESS)
}

fn rm(client: &mut Client, paths: &[String]) -> CmdResult {
    client
        .transaction(|tx| paths.iter().try_for_each(|path| tx.rm(path)))
        .map_err(fail)?;
    Ok(ExitCode::SUCCESS)
}

fn watch(
    client: &mut Client,
    out: &mut impl Write,
    paths: &[String],
    count: Option<u64>,
) -> CmdResult {
    for path in paths {
        // The token is the path, so events of overlapping watches stay apart.
        client.watch(path, path).map_err(fail)?;
    }
    let mut seen = 0;
    while count.is_none_or(|limit| seen < limit) {
        let Some(event) = client.next_event(None).map_err(fail)? else {
            continue;
        };
        writeln!(out, "{}", event.path)
            .and_then(|()| out.flush())
            .map_err(fail)?;
        seen += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints every node below `root` in depth-first preorder (a node, then its
/// subtree), children in the daemon's order, as `xenstore-ls -f` does:
/// `path = "value"`, or `path:` when the value cannot be read.
fn ls(client: &mut Client, out: &mut impl Write, root: &str, perms: bool) -> CmdResult {
    /// A directory being listed: the prefix of its children's paths and
    /// the children not printed yet.
    struct Level {
        prefix: String,
        children: std::vec::IntoIter<String>,
    }
    let level = |dir: &str, children: Vec<String>| Level {
        prefix: if dir.ends_with('/') {
            dir.to_owned()
        } else {
            format!("{dir}/")
        },
        children: children.into_iter(),
    };
    let top = client.directory(root).map_err(fail)?;
    let mut stack = vec![level(root, top)];
    while let Some(current) = stack.last_mut() {
        let Some(child) = current.children.next() else {
            stack.pop();
            continue;
        };
        let path = format!("{}{child}", current.prefix);
        print_node(client, out, &path, perms)?;
        match client.directory(&path) {
            Ok(children) => stack.push(level(&path, children)),
            // A node removed while we walk the tree is no error.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(fail(e)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_node(
    client: &mut Client,
    out: &mut impl Write,
    path: &str,
    perms: bool,
) -> Result<(), Failure> {
    let mut line = match client.read_opt(path) {
        Ok(Some(value)) => format!("{path} = \"{}\"", escape_value(&value)),
        Ok(None) => return Ok(()), // removed meanwhile
        Err(_) => format!("{path}:"),
    };
    if perms {
        match client.get_perms(path) {
            Ok(p) => {
                let list: Vec<String> = p.0.iter().map(ToString::to_string).collect();
                line.push_str(&format!("  ({})", list.join(",")));
            }
            Err(e) => line.push_str(&format!("  (permissions unreadable: {})", e.kind())),
        }
    }
    writeln!(out, "{line}").map_err(fail)
}

/// Shows a value as printable ASCII: `\t \n \r \\`, octal `\NNN` below
/// 0o10, `\xNN` for other bytes outside `' '..='~'` — xenstore's tools'
/// convention, so output compares with theirs.
pub fn escape_value(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value {
        match b {
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(char::from(b)),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            0..=7 => out.push_str(&format!("\\{b:03o}")),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The inverse of [`escape_value`] for values typed on a command line:
/// `\t \n \r \\`, `\xNN` (up to two hex digits), `\NNN` (up to three octal
/// digits, first 0-7); any other escaped character stands for itself.
pub fn unescape_value(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        if b != b'\\' || i == bytes.len() {
            out.push(b);
            continue;
        }
        let escaped = bytes[i];
        i += 1;
        match escaped {
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'x' => {
                let (value, used) = digits(&bytes[i..], 16, 2);
                i += used;
                out.push(value);
            }
            b'0'..=b'7' => {
                let (value, used) = digits(&bytes[i - 1..], 8, 3);
                i += used - 1;
                out.push(value);
            }
            other => out.push(other),
        }
    }
    out
}

/// Parses up to `max` digits of `radix` at the start of `bytes`; returns the
/// value (truncated to a byte) and how many digits were used.
fn digits(bytes: &[u8], radix: u32, max: usize) -> (u8, usize) {
    let mut value = 0u32;
    let mut used = 0;
    for &b in bytes.iter().take(max) {
        let Some(d) = char::from(b).to_digit(radix) else {
            break;
        };
        value = value * radix + d;
        used += 1;
    }
    (value as u8, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_matches_xenstore_tools() {
        assert_eq!(escape_value(b"plain text"), "plain text");
        assert_eq!(escape_value(b"a\\b"), "a\\\\b");
        assert_eq!(escape_value(b"\t\n\r"), "\\t\\n\\r");
        assert_eq!(
            escape_value(b"\0\x07\x08\x7f\xff"),
            "\\000\\007\\x08\\x7f\\xff"
        );
    }

    #[test]
    fn unescape_inverts_escape() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unescape_value(&escape_value(&all)), all);
        assert_eq!(unescape_value("a\\x4"), b"a\x04");
        assert_eq!(unescape_value("\\101B"), b"AB");
        assert_eq!(unescape_value("\\q\\"), b"q\\");
    }
}
