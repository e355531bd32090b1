//! `rbdctl fence`: the OSD blocklist and the cluster layer's fence log (who was fenced,
//! for which image, by which node, why, until when): list, add, remove, and fence an
//! image's clients by hand.

use std::time::{Duration, SystemTime};

use clap::Subcommand;
use rbd_core::EntityAddr;

use rbd_driver::cluster::NAMESPACE;
use serde_json::json;

use crate::Cli;
use crate::cmd::cluster::{self, FenceImageArgs};
use crate::error::{CliError, CliResult};
use crate::output::{Table, done, emit};

/// Fencing subcommands.
#[derive(Debug, Subcommand)]
pub enum FenceCmd {
    /// List blocklisted addresses and their expiry, and the fence log of the pool (the
    /// cluster layer's fences: image, node, addresses, by whom, why, expiry).
    Ls {
        /// The fence logs of every pool, not only `-p/--pool`.
        #[arg(long = "all-pools")]
        all_pools: bool,
        /// Also list expired fence records.
        #[arg(long)]
        expired: bool,
        /// RADOS namespace of the fence log.
        #[arg(long = "registry-namespace", default_value = NAMESPACE)]
        registry_namespace: String,
    },
    /// Blocklist a client address (e.g. 10.0.0.5:0/3710147553).
    Add {
        /// The exact client address; a bare IP fences a whole host and needs --whole-host.
        addr: EntityAddr,
        /// Expiry in seconds (default: the monitor's, one hour).
        #[arg(long)]
        expire: Option<u64>,
        /// Confirm fencing every client on a host (a bare IP, or port 0 and nonce 0): without
        /// it such an address is refused and nothing is blocklisted.
        #[arg(long)]
        whole_host: bool,
        /// Record the fence in this image's fence log ([pool/[namespace/]]image).
        #[arg(long)]
        image: Option<String>,
        /// Why (with --image, recorded in the fence log).
        #[arg(long, default_value = "fenced by hand with rbdctl")]
        reason: String,
        /// RADOS namespace of the fence log.
        #[arg(long = "registry-namespace", default_value = NAMESPACE)]
        registry_namespace: String,
    },
    /// Remove a blocklist entry (and the fence-log records it lifts).
    Rm {
        /// The address as listed by `rbdctl fence ls`.
        addr: EntityAddr,
        /// Look at the fence logs of every pool, not only `-p/--pool`.
        #[arg(long = "all-pools")]
        all_pools: bool,
        /// RADOS namespace of the fence log.
        #[arg(long = "registry-namespace", default_value = NAMESPACE)]
        registry_namespace: String,
    },
    /// Fence an image's clients by hand, as the cluster layer does for a silent holder:
    /// blocklist their exact addresses, break the locks, check no watcher is left, record
    /// the fence, drop the fenced holders from the registry.
    Image(FenceImageArgs),
}

/// Runs a fence subcommand.
pub fn run(cli: &Cli, cmd: &FenceCmd) -> CliResult {
    match cmd {
        FenceCmd::Ls {
            all_pools,
            expired,
            registry_namespace,
        } => {
            let rados = cli.connect()?;
            let list = rados.blocklist_ls()?;
            let pools = cluster::pools(cli, &rados, *all_pools)?;
            let log = cluster::fence_log(&rados, &pools, registry_namespace, *expired)?;
            let value = json!({"blocklist": list, "fence_log": log});
            emit(cli.format, &value, || {
                let mut t = Table::new(&["ADDRESS", "EXPIRES", "REMAINING"]);
                for e in &list {
                    let remaining = e
                        .until
                        .and_then(|u| u.duration_since(SystemTime::now()).ok())
                        .map(|d| format!("{}s", d.as_secs()))
                        .unwrap_or_else(|| "-".into());
                    t.row(vec![e.addr.to_string(), e.until_raw.clone(), remaining]);
                }
                let mut s = t.render();
                s += &format!(
                    "\nfence log ({}):\n",
                    if *all_pools {
                        "all pools".to_string()
                    } else {
                        format!("pool {}", cli.pool)
                    }
                );
                if log.is_empty() {
                    s += "none\n";
                } else {
                    s += &cluster::render_fence_log(&log);
                }
                s
            });
            Ok(())
        }
        FenceCmd::Image(a) => cluster::fence_image(cli, a),
        FenceCmd::Add {
            addr,
            expire,
            whole_host,
            image,
            reason,
            registry_namespace,
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
            let mut text = format!("fenced {addr}");
            let mut recorded = serde_json::Value::Null;
            if let Some(img) = image {
                // The monitor's default expiry is one hour.
                let expiry = Duration::from_secs(expire.unwrap_or(3600));
                let rec = cluster::record_manual_fence(
                    cli,
                    &rados,
                    img,
                    addr,
                    reason,
                    expiry,
                    registry_namespace,
                )?;
                text += &format!("\nrecorded in the fence log of {} ({})", rec.image, rec.id);
                recorded = serde_json::to_value(&rec).unwrap_or(serde_json::Value::Null);
            }
            done(
                cli.format,
                json!({
                    "fenced": addr,
                    "expire_secs": expire,
                    "whole_host": addr.is_whole_host(),
                    "recorded": recorded,
                }),
                || text,
            );
            Ok(())
        }
        FenceCmd::Rm {
            addr,
            all_pools,
            registry_namespace,
        } => {
            let rados = cli.connect()?;
            rados.blocklist_rm(addr)?;
            let pools = cluster::pools(cli, &rados, *all_pools)?;
            let n = cluster::forget_lifted_fences(&rados, &pools, registry_namespace)?;
            done(
                cli.format,
                json!({ "unfenced": addr, "fence_log_records_removed": n }),
                || {
                    let mut s = format!("unfenced {addr}");
                    if n > 0 {
                        s += &format!(
                            "\nremoved {n} fence-log records whose addresses are all unfenced"
                        );
                    }
                    s
                },
            );
            Ok(())
        }
    }
}
