//! `rbd-volume-op`: runs one [`Driver`] operation in its own process and prints the result
//! as one JSON line. A test tool (built only with the `crash-points` feature): the crash
//! tests run it with `RBD_VOLUMES_CRASH_AT=<op:step>` so that it dies with `SIGKILL` at
//! that step, then check that a new driver's recovery leaves no orphan.
//!
//! ```text
//! rbd-volume-op [common] create NAME [KEY=VALUE ...]
//! rbd-volume-op [common] attach NAME MOUNT_ID [rw|ro]
//! rbd-volume-op [common] attach-report NAME MOUNT_ID [rw|ro]
//! rbd-volume-op [common] detach NAME MOUNT_ID
//! rbd-volume-op [common] remove NAME [--force]
//! rbd-volume-op [common] get NAME
//! rbd-volume-op [common] status NAME
//! rbd-volume-op [common] recover
//! rbd-volume-op [common] reconcile [--dry-run]
//! rbd-volume-op [common] [--interval SECS] daemon
//! common: --conf PATH --state-dir DIR --mount-root DIR --run-dir DIR [--node ID]
//!         [--id CLIENT] [--keyring PATH] [--pool POOL] [--backend B] [--umap-bin PATH]
//!         [--format-at create|first-attach] [--ping-timeout SECS] [--io-timeout SECS]
//!         [--timeout SECS] [--cluster-namespace NS] [--start-at-ms EPOCH_MS]
//!         [--fsck-on-attach true|false]
//! ```
//!
//! Output: `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`; exit status 0 or 1
//! (2 for a usage error).
//!
//! `--start-at-ms` waits, once connected, until that time (ms since the epoch) before
//! running the operation: two processes started a moment apart then race for real.
//!
//! `daemon` runs a [`NodeDaemon`] for the node until `SIGTERM`/`SIGINT`: it prints
//! `READY {json}` once it answers control requests and its first reconcile is done, then
//! one `RECONCILE {json}` line per finished reconcile (the report's summary lines).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;
use std::time::Duration;

use rbd_driver::daemon::{DaemonOptions, NodeDaemon};
use rbd_driver::mapper::CephAuth;
use rbd_driver::volume::{CreateSpec, Driver, DriverConfig, ReconcileOptions};

/// Runs a node daemon until a signal; see the module docs.
fn daemon(d: Driver, interval: Duration) -> rbd_driver::Result<serde_json::Value> {
    rbd_driver::daemon::stop_on_signals().expect("installing the signal handlers");
    let d = Arc::new(d);
    let daemon = NodeDaemon::start(
        d.clone(),
        DaemonOptions {
            reconcile_interval: interval,
            ..DaemonOptions::default()
        },
    )?;
    let mut seen = daemon.wait_for_reconcile(0, Duration::from_secs(120));
    println!(
        "READY {}",
        json!({"node": d.node().as_str(), "pools": daemon.pools(),
               "addr": d.rados().getaddrs().map(|a| a.to_string()).unwrap_or_default(),
               "reconciles": seen, "report": daemon.last_report()})
    );
    while !rbd_driver::daemon::stop_requested() {
        std::thread::sleep(Duration::from_millis(100));
        let n = daemon.reconcile_count();
        if n > seen {
            seen = n;
            if let Some(r) = daemon.last_report() {
                println!(
                    "RECONCILE {}",
                    json!({"n": n, "summary": r.summary(), "elapsed_ms": r.elapsed_ms,
                           "cleaned": r.cleaned.len()})
                );
            }
        }
    }
    daemon.stop();
    Ok(json!({"stopped": true}))
}
use serde_json::{Value, json};

fn usage(msg: &str) -> ExitCode {
    eprintln!("rbd-volume-op: {msg} (see the source's doc comment for usage)");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut flags: BTreeMap<String, String> = BTreeMap::new();
    while args.first().is_some_and(|a| a.starts_with("--")) {
        let k = args.remove(0);
        if args.is_empty() {
            return usage(&format!("{k} needs a value"));
        }
        flags.insert(k, args.remove(0));
    }
    let Some(op) = args.first().cloned() else {
        return usage("no operation");
    };
    let rest = &args[1..];
    let need = |k: &str| flags.get(k).map(PathBuf::from);
    let (Some(conf), Some(state), Some(mounts), Some(run)) = (
        need("--conf"),
        need("--state-dir"),
        need("--mount-root"),
        need("--run-dir"),
    ) else {
        return usage("--conf, --state-dir, --mount-root and --run-dir are required");
    };
    let mut cfg = DriverConfig::new(CephAuth {
        conf,
        id: flags.get("--id").cloned().unwrap_or_else(|| "admin".into()),
        keyring: flags.get("--keyring").map(PathBuf::from),
    });
    cfg.state_dir = state;
    cfg.mount_root = mounts;
    cfg.mapper.run_dir = run;
    if let Some(b) = flags.get("--umap-bin") {
        cfg.mapper.umap_bin = Some(PathBuf::from(b));
    }
    if let Some(n) = flags.get("--node") {
        cfg.node_id = n.clone();
    }
    if let Some(p) = flags.get("--pool") {
        cfg.defaults.pool = p.clone();
    }
    if let Some(b) = flags.get("--backend") {
        match b.parse() {
            Ok(b) => cfg.backend = Some(b),
            Err(e) => return usage(&e.to_string()),
        }
    }
    if let Some(f) = flags.get("--fsck-on-attach") {
        match f.parse() {
            Ok(f) => cfg.defaults.fsck_on_attach = f,
            Err(_) => return usage(&format!("--fsck-on-attach {f}: expected true or false")),
        }
    }
    if let Some(f) = flags.get("--format-at") {
        match f.parse() {
            Ok(f) => cfg.defaults.format_at = f,
            Err(e) => return usage(&e.to_string()),
        }
    }
    let secs = |k: &str| -> Result<Option<u64>, String> {
        flags
            .get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{k} {v:?} is not a number"))
            })
            .transpose()
    };
    let (ping, io, timeout, interval) = match (
        secs("--ping-timeout"),
        secs("--io-timeout"),
        secs("--timeout"),
        secs("--interval"),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return usage(&e),
    };
    if let Some(ns) = flags.get("--cluster-namespace") {
        cfg.cluster.namespace = ns.clone();
    }
    if let Some(p) = ping {
        cfg.cluster.ping_timeout = Duration::from_secs(p.max(1));
    }
    if let Some(t) = io {
        cfg.map_options.io_timeout_secs = Some(t.max(1) as u32);
    }
    if let Some(t) = timeout {
        cfg.timeouts = rbd_core::Timeouts::uniform(Duration::from_secs(t.max(1)));
    }
    let interval = Duration::from_secs(interval.unwrap_or(30).max(1));
    let start_at = match flags.get("--start-at-ms").map(|v| v.parse::<u64>()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return usage("--start-at-ms needs milliseconds since the epoch"),
    };

    let dry_run = op == "reconcile" && rest.iter().any(|a| a == "--dry-run");
    if dry_run {
        cfg.recover_on_start = false;
    }
    let result = (|| -> rbd_driver::Result<Value> {
        let d = Driver::new(cfg)?;
        if let Some(at) = start_at {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            std::thread::sleep(Duration::from_millis(at.saturating_sub(now).min(60_000)));
        }
        let arg = |i: usize| {
            rest.get(i).cloned().ok_or_else(|| {
                rbd_driver::DriverError::invalid("arguments", rest.join(" "), "too few")
            })
        };
        Ok(match op.as_str() {
            "create" => {
                let opts: BTreeMap<String, String> = rest[1.min(rest.len())..]
                    .iter()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let spec = CreateSpec::from_options(&opts)?;
                json!(d.create(&arg(0)?, &spec)?)
            }
            "attach" => {
                let mode = rest.get(2).map(|m| m.parse()).transpose()?;
                json!(d.attach(&arg(0)?, &arg(1)?, mode)?)
            }
            "attach-report" => {
                let mode = rest.get(2).map(|m| m.parse()).transpose()?;
                json!(d.attach_with_report(&arg(0)?, &arg(1)?, mode)?)
            }
            "status" => json!(d.status(&arg(0)?)?),
            "reconcile" => json!(d.reconcile(&ReconcileOptions {
                dry_run,
                prune_fences: !dry_run,
                pools: Vec::new(),
            })?),
            "daemon" => daemon(d, interval)?,
            "detach" => json!(d.detach_with_report(&arg(0)?, &arg(1)?)?),
            "remove" => {
                d.remove(&arg(0)?, rest.get(1).map(String::as_str) == Some("--force"))?;
                Value::Null
            }
            "get" => json!(d.get(&arg(0)?)?),
            "recover" => json!(d.last_recovery()),
            other => {
                return Err(rbd_driver::DriverError::invalid(
                    "operation",
                    other,
                    "expected create, attach, attach-report, detach, remove, get, status, \
                     recover, reconcile or daemon",
                ));
            }
        })
    })();
    match result {
        Ok(v) => {
            println!("{}", json!({"ok": true, "result": v}));
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut chain = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                chain.push_str(&format!(": {s}"));
                src = s.source();
            }
            println!("{}", json!({"ok": false, "error": chain}));
            ExitCode::FAILURE
        }
    }
}
