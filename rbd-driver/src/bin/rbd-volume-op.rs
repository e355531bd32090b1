//! `rbd-volume-op`: runs one [`Driver`] operation in its own process and prints the result
//! as one JSON line. A test tool (built only with the `crash-points` feature): the crash
//! tests run it with `RBD_VOLUMES_CRASH_AT=<op:step>` so that it dies with `SIGKILL` at
//! that step, then check that a new driver's recovery leaves no orphan.
//!
//! ```text
//! rbd-volume-op [common] create NAME [KEY=VALUE ...]
//! rbd-volume-op [common] attach NAME MOUNT_ID [rw|ro]
//! rbd-volume-op [common] detach NAME MOUNT_ID
//! rbd-volume-op [common] remove NAME [--force]
//! rbd-volume-op [common] get NAME
//! rbd-volume-op [common] recover
//! common: --conf PATH --state-dir DIR --mount-root DIR --run-dir DIR [--node ID]
//!         [--id CLIENT] [--keyring PATH] [--pool POOL] [--backend B] [--umap-bin PATH]
//!         [--format-at create|first-attach] [--fsck-on-attach true|false]
//! ```
//!
//! Output: `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`; exit status 0 or 1
//! (2 for a usage error).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use rbd_driver::mapper::CephAuth;
use rbd_driver::volume::{CreateSpec, Driver, DriverConfig};
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

    let result = (|| -> rbd_driver::Result<Value> {
        let d = Driver::new(cfg)?;
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
                    "expected create, attach, detach, remove, get or recover",
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
