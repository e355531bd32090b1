//! `rbdctl fence`: list, add and remove OSD blocklist entries.

use std::time::{Duration, SystemTime};

use clap::Subcommand;
use rbd_core::EntityAddr;

use crate::Cli;
use crate::error::{CliError, CliResult};
use crate::output::{Table, emit};

/// Fencing subcommands.
#[derive(Debug, Subcommand)]
pub enum FenceCmd {
    /// List blocklisted addresses and their expiry.
    Ls,
    /// Blocklist a client address (e.g. 10.0.0.5:0/3710147553).
    Add {
        /// The exact client address; a bare IP fences a whole host and needs --whole-host.
        addr: EntityAddr,
        /// Expiry in seconds (default: the monitor's, one hour).
        #[arg(long)]
        expire: Option<u64>,
        /// Allow fencing every client on a host (port 0 and nonce 0).
        #[arg(long)]
        whole_host: bool,
    },
    /// Remove a blocklist entry.
    Rm {
        /// The address as listed by `rbdctl fence ls`.
        addr: EntityAddr,
    },
}

/// Runs a fence subcommand.
pub fn run(cli: &Cli, cmd: &FenceCmd) -> CliResult {
    match cmd {
        FenceCmd::Ls => {
            let rados = cli.connect()?;
            let list = rados.blocklist_ls()?;
            emit(cli.format, &list, || {
                let mut t = Table::new(&["ADDRESS", "EXPIRES", "REMAINING"]);
                for e in &list {
                    let remaining = e
                        .until
                        .and_then(|u| u.duration_since(SystemTime::now()).ok())
                        .map(|d| format!("{}s", d.as_secs()))
                        .unwrap_or_else(|| "-".into());
                    t.row(vec![e.addr.to_string(), e.until_raw.clone(), remaining]);
                }
                t.render()
            });
            Ok(())
        }
        FenceCmd::Add {
            addr,
            expire,
            whole_host,
        } => {
            if addr.is_whole_host() && !whole_host {
                return Err(CliError::Usage(format!(
                    "{addr} names every client on a host; pass --whole-host to fence them all"
                )));
            }
            if *expire == Some(0) {
                return Err(CliError::Usage("--expire must be at least 1 second".into()));
            }
            let rados = cli.connect()?;
            let own = rados.getaddrs()?;
            if own.0.iter().any(|a| a.same_instance(addr)) {
                return Err(CliError::Usage(format!(
                    "{addr} is this rbdctl's own client address; refusing to fence ourselves"
                )));
            }
            rados.blocklist_add(addr, expire.map(Duration::from_secs))?;
            println!("fenced {addr}");
            Ok(())
        }
        FenceCmd::Rm { addr } => {
            let rados = cli.connect()?;
            rados.blocklist_rm(addr)?;
            println!("unfenced {addr}");
            Ok(())
        }
    }
}
