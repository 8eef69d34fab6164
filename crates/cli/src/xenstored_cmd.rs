//! `diskseq xenstored`: the xenstore daemon in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;

use xenstored::{Config, Quotas};

use crate::exit::{CmdResult, Failure};

/// Run a xenstore daemon (Xen 4.17 semantics) until SIGTERM or SIGINT.
///
/// Connections on --socket are dom0 (privileged); each --domain-socket
/// simulates one unprivileged guest domain. The socket exists once the
/// daemon accepts connections; it is removed on exit.
#[derive(clap::Args, Debug)]
pub struct XenstoredArgs {
    /// The dom0 socket (point XENSTORED_PATH at it).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// A guest's socket: its connections are unprivileged domain DOMID.
    #[arg(long = "domain-socket", value_name = "DOMID=PATH", value_parser = parse_domain_socket)]
    domain_sockets: Vec<(u32, PathBuf)>,
    /// Write the daemon's pid here once it is ready.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Log every request, reply and watch event to FILE.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Nodes each guest may own.
    #[arg(long, value_name = "N", default_value_t = Quotas::default().entries)]
    quota_entries: usize,
    /// Largest node record a guest may write (bytes, as the C daemon counts).
    #[arg(long, value_name = "BYTES", default_value_t = Quotas::default().entry_size)]
    quota_entry_size: usize,
    /// Watches each guest may hold.
    #[arg(long, value_name = "N", default_value_t = Quotas::default().watches)]
    quota_watches: usize,
    /// Transactions a guest connection may have open: one more is
    /// granted and the next refused, as the C daemon counts.
    #[arg(long, value_name = "N", default_value_t = Quotas::default().transactions)]
    quota_transactions: usize,
    /// Unread replies a guest connection may have before it is not read from.
    #[arg(long, value_name = "N", default_value_t = Quotas::default().outstanding)]
    quota_outstanding: usize,
    /// Longest path anyone may use (dom0 too, as in Xen 4.17), counted
    /// below /local/domain/<domid>/, whole elsewhere.
    #[arg(long, value_name = "BYTES", default_value_t = Quotas::default().path_len)]
    quota_path_len: usize,
}

fn parse_domain_socket(s: &str) -> Result<(u32, PathBuf), String> {
    let (domid, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected DOMID=PATH"))?;
    let domid: u32 = domid
        .parse()
        .map_err(|_| format!("{s:?}: domid {domid:?} is not a number"))?;
    if domid == 0 {
        return Err(format!("{s:?}: domain 0 is the privileged --socket"));
    }
    if path.is_empty() {
        return Err(format!("{s:?}: empty socket path"));
    }
    Ok((domid, PathBuf::from(path)))
}

pub fn run(args: XenstoredArgs) -> CmdResult {
    let config = Config {
        socket: args.socket,
        domain_sockets: args.domain_sockets,
        quotas: Quotas {
            entries: args.quota_entries,
            entry_size: args.quota_entry_size,
            watches: args.quota_watches,
            transactions: args.quota_transactions,
            outstanding: args.quota_outstanding,
            path_len: args.quota_path_len,
        },
        trace: args.trace,
        pid_file: args.pid_file,
    };
    xenstored::run(config).map_err(|e| Failure::Error(format!("xenstored: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_socket_arguments() {
        assert_eq!(
            parse_domain_socket("5=/run/guest5.sock"),
            Ok((5, PathBuf::from("/run/guest5.sock")))
        );
        assert_eq!(
            parse_domain_socket("7=a=b"),
            Ok((7, PathBuf::from("a=b"))),
            "only the first = separates"
        );
        for bad in ["5", "x=/p", "0=/p", "5=", "-1=/p"] {
            assert!(parse_domain_socket(bad).is_err(), "{bad}");
        }
    }
}
