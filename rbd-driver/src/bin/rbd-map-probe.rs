//! `rbd-map-probe`: drives one [`Mapper`] operation and prints the result as one JSON line.
//!
//! A diagnostic and test tool: the guest tests run it inside a qemu guest with a real
//! kernel, so they exercise this crate's mappers, not the `rbd` CLI.
//!
//! ```text
//! rbd-map-probe check BACKEND        (BACKEND: krbd, nbd, userspace or auto)
//! rbd-map-probe map BACKEND --pool P --image I --image-id ID [--namespace NS] [--snap S]
//!               [--read-only] [--exclusive] [--share] [--lock-on-read] [--queue-depth N]
//!               [--io-timeout SECS] [--give-up-after SECS] [--ms-mode MODE] [--conf PATH] [--id ID] [--keyring PATH]
//! rbd-map-probe list BACKEND
//! rbd-map-probe unmap BACKEND DEVICE [--force]
//! common: [--run-dir DIR] [--sysfs DIR] [--rbd-nbd PATH]
//! ```
//!
//! `auto` chooses the backend as the Driver does ([`select`]: krbd, then nbd, then
//! userspace); `check auto` prints `{"selected": BACKEND}`, and every line's `backend` is
//! the one chosen.
//!
//! Output: `{"ok":true,"op":...,"ms":...,"result":...}` or
//! `{"ok":false,"op":...,"ms":...,"error":"...","variant":"InUse"}`; exit status 0 or 1
//! (2 for a usage error).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use rbd_driver::DriverError;
use rbd_driver::mapper::{
    Backend, CephAuth, MapOptions, MapRequest, Mapper, MapperConfig, mapper_for, select,
};
use serde_json::{Value, json};

struct Args {
    op: String,
    /// `None`: `auto`.
    backend: Option<Backend>,
    positional: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

const VALUED: [&str; 15] = [
    "--pool",
    "--image",
    "--image-id",
    "--namespace",
    "--snap",
    "--queue-depth",
    "--io-timeout",
    "--give-up-after",
    "--ms-mode",
    "--conf",
    "--id",
    "--keyring",
    "--run-dir",
    "--sysfs",
    "--rbd-nbd",
];

impl Args {
    fn parse() -> Result<Args, String> {
        let mut it = std::env::args().skip(1);
        let op = it.next().ok_or("missing operation")?;
        let backend = match it.next().ok_or("missing backend")?.as_str() {
            "auto" => None,
            b => Some(b.parse().map_err(|e: DriverError| e.to_string())?),
        };
        let mut positional = Vec::new();
        let mut flags = Vec::new();
        while let Some(a) = it.next() {
            if let Some((k, v)) = a.split_once('=').filter(|(k, _)| k.starts_with("--")) {
                flags.push((k.to_owned(), Some(v.to_owned())));
            } else if VALUED.contains(&a.as_str()) {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                flags.push((a, Some(v)));
            } else if a.starts_with("--") {
                flags.push((a, None));
            } else {
                positional.push(a);
            }
        }
        Ok(Args {
            op,
            backend,
            positional,
            flags,
        })
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| f == k)
            .and_then(|(_, v)| v.as_deref())
    }

    fn has(&self, k: &str) -> bool {
        self.flags.iter().any(|(f, _)| f == k)
    }

    fn need(&self, k: &str) -> Result<String, String> {
        self.get(k)
            .map(str::to_owned)
            .ok_or_else(|| format!("{k} is required"))
    }

    fn num(&self, k: &str) -> Result<Option<u32>, String> {
        self.get(k)
            .map(|v| v.parse().map_err(|_| format!("{k}: not a number: {v}")))
            .transpose()
    }
}

fn config(a: &Args) -> MapperConfig {
    let mut cfg = MapperConfig::default();
    if let Some(d) = a.get("--run-dir") {
        cfg.run_dir = d.into();
    }
    if let Some(d) = a.get("--sysfs") {
        cfg.sysfs = d.into();
    }
    if let Some(d) = a.get("--rbd-nbd") {
        cfg.rbd_nbd_bin = d.into();
    }
    cfg
}

fn request(a: &Args) -> Result<MapRequest, String> {
    let conf = a
        .get("--conf")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CEPH_CONF").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/ceph/ceph.conf"));
    Ok(MapRequest {
        pool: a.need("--pool")?,
        namespace: a.get("--namespace").unwrap_or("").to_owned(),
        image: a.need("--image")?,
        image_id: a.need("--image-id")?,
        snap: a.get("--snap").map(str::to_owned),
        read_only: a.has("--read-only"),
        exclusive: a.has("--exclusive"),
        auth: CephAuth {
            conf,
            id: a.get("--id").unwrap_or("admin").to_owned(),
            keyring: a.get("--keyring").map(PathBuf::from),
        },
        options: MapOptions {
            noshare: !a.has("--share"),
            lock_on_read: a.has("--lock-on-read"),
            queue_depth: a.num("--queue-depth")?,
            io_timeout_secs: a.num("--io-timeout")?,
            give_up_after_secs: a.num("--give-up-after")?,
            ms_mode: a.get("--ms-mode").map(str::to_owned),
        },
    })
}

/// The error and its causes, `: `-separated.
fn chain(e: &DriverError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn variant(e: &DriverError) -> String {
    format!("{e:?}")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

fn run(a: &Args, m: &dyn Mapper) -> Result<Result<Value, DriverError>, String> {
    Ok(match a.op.as_str() {
        "check" if a.backend.is_none() => m
            .check_available()
            .map(|()| json!({"selected": m.backend()})),
        "check" => m.check_available().map(|()| Value::Null),
        "map" => {
            let req = request(a)?;
            m.map(&req).map(|mapping| json!(mapping))
        }
        "list" => m.list().map(|l| json!(l)),
        "unmap" => {
            let dev = a.positional.first().ok_or("unmap needs a DEVICE")?.clone();
            match m.list() {
                Err(e) => Err(e),
                Ok(list) => match list
                    .into_iter()
                    .find(|x| x.device.as_os_str() == dev.as_str())
                {
                    None => Err(DriverError::invalid("device", dev, "not mapped")),
                    Some(mapping) => m.unmap(&mapping, a.has("--force")).map(|()| json!(mapping)),
                },
            }
        }
        other => return Err(format!("unknown operation {other}")),
    })
}

fn main() -> ExitCode {
    let a = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rbd-map-probe: {e}");
            eprintln!(
                "usage: rbd-map-probe check|map|list|unmap krbd|nbd|userspace|auto [options]"
            );
            return ExitCode::from(2);
        }
    };
    let cfg = config(&a);
    let t = Instant::now();
    let picked = match a.backend {
        Some(b) => Ok(mapper_for(b, &cfg)),
        None => select(None, &cfg),
    };
    let (backend, res) = match picked {
        Ok(m) => match run(&a, m.as_ref()) {
            Ok(r) => (json!(m.backend()), r),
            Err(usage) => {
                eprintln!("rbd-map-probe: {usage}");
                return ExitCode::from(2);
            }
        },
        Err(e) => (json!("auto"), Err(e)),
    };
    let ms = t.elapsed().as_millis() as u64;
    let (line, code) = match res {
        Ok(v) => (
            json!({"ok": true, "op": a.op, "backend": backend, "ms": ms, "result": v}),
            0,
        ),
        Err(e) => (
            json!({"ok": false, "op": a.op, "backend": backend, "ms": ms,
                   "error": chain(&e), "variant": variant(&e)}),
            1,
        ),
    };
    println!("{line}");
    ExitCode::from(code)
}
