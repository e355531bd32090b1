//! This node's volume driver from the command line: `rbdctl daemon` (the node daemon for
//! hosts that use only the CLI) and `rbdctl reconcile` (the reconcile check, by hand).
//!
//! Both take the node settings of [`crate::node::NodeArgs`] (the same flags, variables and
//! plugin config file as the volume and device commands and the Docker plugin), so they see
//! the same attachments as every other tool on the host.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use rbd_driver::cluster::{NAMESPACE, Verdict};
use rbd_driver::daemon::{DaemonOptions, NodeDaemon};
use rbd_driver::volume::{Driver, DriverConfig, NodeReconcileReport, ReconcileOptions};

use crate::Cli;
use crate::error::{CliError, CliResult};
use crate::node::{NODE_HELP, NodeArgs};
use crate::output::{Format, Table, emit};

/// The cluster layer's settings of this node.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// RADOS namespace of the cluster registry, fence log and control object (the same on
    /// every node).
    #[arg(long = "registry-namespace", default_value = NAMESPACE)]
    pub registry_namespace: String,
    /// Seconds a holder has to answer a ping before it counts as silent (and is fenced).
    #[arg(long = "ping-timeout", default_value_t = 2)]
    pub ping_timeout: u64,
}

impl ClusterArgs {
    fn apply(&self, cfg: &mut DriverConfig) {
        cfg.cluster.namespace = self.registry_namespace.clone();
        cfg.cluster.ping_timeout = Duration::from_secs(self.ping_timeout.max(1));
    }
}

/// `rbdctl daemon`.
#[derive(Debug, Args)]
#[command(after_help = NODE_HELP)]
pub struct DaemonArgs {
    /// The node.
    #[command(flatten)]
    pub node: NodeArgs,
    /// The cluster layer.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Seconds between reconciles (also on start, and when a control watch comes back).
    #[arg(long = "interval", default_value_t = 30)]
    pub interval: u64,
    /// Another pool to answer control requests in (repeatable; the default pool, the pools
    /// of this node's attachments and those in the volume index are always served).
    #[arg(long = "serve-pool")]
    pub serve_pool: Vec<String>,
}

/// `rbdctl reconcile`.
#[derive(Debug, Args)]
#[command(after_help = NODE_HELP)]
pub struct ReconcileArgs {
    /// The node.
    #[command(flatten)]
    pub node: NodeArgs,
    /// The cluster layer.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only report what is stale and why; change nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
}

/// Logs to stderr (`RUST_LOG` filters; default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the node daemon until SIGTERM or SIGINT: answers other nodes' control requests
/// (ping, release) for this node, reconciles on start and every `--interval`. Prints one
/// `READY` line (JSON with `--format json`) once serving and reconciled, then one line
/// per reconcile finding.
pub fn daemon(cli: &Cli, a: &DaemonArgs) -> CliResult {
    if a.interval == 0 {
        return Err(CliError::Usage(
            "--interval must be at least 1 second".into(),
        ));
    }
    init_logging();
    rbd_driver::daemon::stop_on_signals()
        .map_err(|e| CliError::io("installing the signal handlers", e))?;
    let mut cfg = crate::node::driver_config(cli, &a.node)?;
    a.cluster.apply(&mut cfg);
    let driver = Arc::new(crate::node::open_driver(cfg)?);
    let d = NodeDaemon::start(
        driver.clone(),
        DaemonOptions {
            reconcile_interval: Duration::from_secs(a.interval),
            pools: a.serve_pool.clone(),
            prune_fences: true,
        },
    )?;
    let mut seen = d.wait_for_reconcile(0, Duration::from_secs(120));
    let ready = serde_json::json!({
        "node": driver.node().as_str(),
        "pools": d.pools(),
        "addr": driver.rados().getaddrs().map(|a| a.to_string()).unwrap_or_default(),
        "reconcile": d.last_report(),
        "reconcile_error": d.last_error(),
    });
    match cli.format {
        Format::Json => println!("READY {ready}"),
        Format::Table => {
            println!(
                "READY node {} answering in pools {}; first reconcile: {}",
                driver.node(),
                d.pools().keys().cloned().collect::<Vec<_>>().join(", "),
                match (d.last_report(), d.last_error()) {
                    (_, Some(e)) => format!("failed ({e})"),
                    (Some(r), None) => format!("{} findings", r.summary().len()),
                    (None, None) => "not done yet".into(),
                }
            );
            if let Some(r) = d.last_report() {
                for l in r.summary() {
                    println!("  {l}");
                }
            }
        }
    }
    while !rbd_driver::daemon::stop_requested() {
        std::thread::sleep(Duration::from_millis(200));
        let n = d.reconcile_count();
        if n > seen {
            seen = n;
            if let Some(r) = d.last_report() {
                for l in r.summary() {
                    println!("reconcile: {l}");
                }
            }
        }
    }
    tracing::info!("stopping");
    d.stop();
    Ok(())
}

/// Runs the reconcile check on this node and prints every local mapping with its
/// verdict (current, stale and why, unregistered) and what was cleaned.
pub fn reconcile(cli: &Cli, a: &ReconcileArgs) -> CliResult {
    let mut cfg = crate::node::driver_config(cli, &a.node)?;
    a.cluster.apply(&mut cfg);
    let driver = if a.dry_run {
        // A dry run changes nothing: not even the local recovery a driver runs on start.
        cfg.recover_on_start = false;
        Driver::new(cfg)?
    } else {
        crate::node::open_driver(cfg)?
    };
    let r = driver.reconcile(&ReconcileOptions {
        dry_run: a.dry_run,
        prune_fences: !a.dry_run,
        pools: Vec::new(),
    })?;
    emit(cli.format, &r, || render(&r));
    Ok(())
}

fn render(r: &NodeReconcileReport) -> String {
    let mut t = Table::new(&["DEVICE", "BACKEND", "IMAGE", "ID", "VERDICT", "WHY"]);
    for c in &r.check.checks {
        let m = &c.mapping;
        let (verdict, why) = match &c.verdict {
            Verdict::Current => ("current", String::new()),
            Verdict::Unregistered => ("unregistered", "not in the registry".to_string()),
            Verdict::Stale { reasons } => (
                "stale",
                reasons
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        };
        t.row(vec![
            m.device.display().to_string(),
            m.backend.to_string(),
            m.spec(),
            m.image_id.clone(),
            verdict.into(),
            why,
        ]);
    }
    let mut s = format!(
        "node {}{}: {} local mappings, pools {}\n",
        r.node,
        if r.dry_run { " (dry run)" } else { "" },
        r.check.checks.len(),
        r.pools.join(", ")
    );
    if !r.check.checks.is_empty() {
        s += &t.render();
    }
    for e in &r.check.dangling {
        s += &format!(
            "registry entry of this node with nothing mapped here: {}\n",
            e.image_ref()
        );
    }
    let actions: Vec<String> = if r.dry_run { Vec::new() } else { r.summary() };
    if actions.is_empty() {
        if !r.dry_run {
            s += "nothing to do\n";
        }
    } else {
        s += "done:\n";
        for a in actions {
            s += &format!("  {a}\n");
        }
    }
    s
}
