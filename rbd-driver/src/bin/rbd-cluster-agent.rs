//! `rbd-cluster-agent`: a minimal node agent for the cluster layer, used by the multi-node
//! tests (one per test-bed node namespace) and handy for poking at a cluster by hand.
//!
//! ```text
//! rbd-cluster-agent serve --node ID [--hold NAME] [--in-use-file PATH] [common]
//! rbd-cluster-agent claim --node ID --image NAME [--mode rw|ro] [--force] [--no-fence] [common]
//! rbd-cluster-agent ping --node ID --target NODE [common]
//! rbd-cluster-agent registry [common]
//! common: [--pool rbd] [--namespace rbd-volumes] [--conf PATH] [--ping-timeout SECS]
//! ```
//!
//! `serve` answers control requests for its node. Each `--hold NAME` stands in for a
//! mapping: the image is opened on a client connection of its own (its own exact address,
//! as a mapper process has), its exclusive lock taken, and the node registered read-write
//! with that address. A release request closes that image (unless the `--in-use-file`
//! exists and the request is not forced: then the refusal names the mount IDs listed in
//! the file, one per line). It prints `READY {json}` once serving (the holds with their
//! addresses), then one line per event, and stops on SIGTERM or SIGINT.
//!
//! `claim` registers the image for its node through [`Cluster::claim`] (release request,
//! or fencing of a silent holder) and prints `{"ok":true,"claim":...}` or
//! `{"ok":false,"error":"..."}`; exit status 0 or 1 (2 for a usage error).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbd_core::rbd::LockMode;
use rbd_core::{ConnectOptions, Image, OpenOptions, Rados, Timeouts};
use rbd_driver::cluster::{
    ClaimOptions, Cluster, ClusterConfig, HolderRecord, ImageRef, Mode, NodeId, ReleaseOutcome,
    ReleaseRequest,
};
use serde_json::json;

#[derive(Default)]
struct Args {
    op: String,
    values: BTreeMap<String, Vec<String>>,
    switches: Vec<String>,
}

const VALUED: [&str; 11] = [
    "--node",
    "--target",
    "--hold",
    "--in-use-file",
    "--image",
    "--mode",
    "--pool",
    "--namespace",
    "--conf",
    "--ping-timeout",
    "--release-timeout",
];
const SWITCHES: [&str; 2] = ["--force", "--no-fence"];

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        op: it
            .next()
            .ok_or("missing operation (serve, claim, registry)")?,
        ..Args::default()
    };
    while let Some(x) = it.next() {
        if VALUED.contains(&x.as_str()) {
            let v = it.next().ok_or(format!("{x} needs a value"))?;
            a.values.entry(x).or_default().push(v);
        } else if SWITCHES.contains(&x.as_str()) {
            a.switches.push(x);
        } else {
            return Err(format!("unknown argument {x:?}"));
        }
    }
    Ok(a)
}

impl Args {
    fn get(&self, k: &str) -> Option<&str> {
        self.values
            .get(k)
            .and_then(|v| v.last())
            .map(String::as_str)
    }
    fn all(&self, k: &str) -> Vec<String> {
        self.values.get(k).cloned().unwrap_or_default()
    }
    fn has(&self, k: &str) -> bool {
        self.switches.iter().any(|s| s == k)
    }
    fn secs(&self, k: &str, default: u64) -> Result<Duration, String> {
        match self.get(k) {
            None => Ok(Duration::from_secs(default)),
            Some(v) => v
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| format!("{k} {v:?} is not a number of seconds")),
        }
    }
}

fn connect(a: &Args) -> rbd_driver::Result<Rados> {
    let mut o = ConnectOptions::new().timeouts(Timeouts::uniform(Duration::from_secs(10)));
    if let Some(c) = a.get("--conf") {
        o = o.conf_file(c);
    }
    Rados::connect(&o).map_err(|e| rbd_driver::DriverError::ceph("connecting to the cluster", e))
}

fn cluster(a: &Args) -> Result<Cluster, String> {
    let node = NodeId::resolve(a.get("--node")).map_err(|e| e.to_string())?;
    let mut cfg = ClusterConfig::new(node);
    if let Some(ns) = a.get("--namespace") {
        cfg.namespace = ns.to_owned();
    }
    cfg.ping_timeout = a.secs("--ping-timeout", 2)?;
    cfg.release_timeout = a.secs("--release-timeout", 15)?;
    Ok(Cluster::new(connect(a).map_err(|e| e.to_string())?, cfg))
}

fn say(v: serde_json::Value) {
    println!("{v}");
}

/// One held image: its own connection (address) and open handle with the lock.
struct Held {
    image: ImageRef,
    handle: Option<(Image, Rados)>,
}

fn open_hold(a: &Args, pool: &str, name: &str) -> rbd_driver::Result<(ImageRef, Image, Rados)> {
    let r = connect(a)?;
    let io = r
        .ioctx(pool)
        .map_err(|e| rbd_driver::DriverError::ceph(format!("opening pool {pool}"), e))?;
    let id = rbd_core::rbd::image_id_by_name(&io, name)
        .map_err(|e| rbd_driver::DriverError::ceph(format!("looking up {name}"), e))?;
    let img = Image::open_by_id(&io, &id, &OpenOptions::new())
        .map_err(|e| rbd_driver::DriverError::ceph(format!("opening {name}"), e))?;
    img.lock_acquire(LockMode::Exclusive)
        .map_err(|e| rbd_driver::DriverError::ceph(format!("locking {name}"), e))?;
    Ok((ImageRef::new(pool, "", name, id), img, r))
}

fn serve(a: &Args) -> Result<(), String> {
    rbd_driver::daemon::stop_on_signals().expect("installing the signal handlers");
    let c = cluster(a)?;
    let pool = a.get("--pool").unwrap_or("rbd").to_owned();
    let in_use_file = a.get("--in-use-file").map(PathBuf::from);
    let mut holds = Vec::new();
    let mut ready = Vec::new();
    for name in a.all("--hold") {
        let (image, img, r) = open_hold(a, &pool, &name).map_err(|e| e.to_string())?;
        let addr = *r
            .getaddrs()
            .map_err(|e| e.to_string())?
            .primary()
            .ok_or("no client address")?;
        let mut rec = HolderRecord::new(c.node().clone(), Mode::Rw);
        rec.client_addr = Some(addr);
        c.claim(
            &image,
            Mode::Rw,
            &ClaimOptions {
                holder: Some(rec),
                protect: vec![addr],
                ..ClaimOptions::default()
            },
        )
        .map_err(|e| e.to_string())?;
        ready.push(json!({"image": name, "image_id": image.image_id, "addr": addr.to_string()}));
        holds.push(Held {
            image,
            handle: Some((img, r)),
        });
    }
    let holds = Arc::new(Mutex::new(holds));
    let h2 = holds.clone();
    let node = c.node().clone();
    let handler = move |req: &ReleaseRequest| {
        let mut holds = h2.lock().unwrap_or_else(|p| p.into_inner());
        let Some(h) = holds
            .iter_mut()
            .find(|h| h.image.image_id == req.image.image_id && h.handle.is_some())
        else {
            say(json!({"event": "release", "image_id": req.image.image_id, "outcome": "not-held"}));
            return ReleaseOutcome::NotHeld;
        };
        if let Some(f) = &in_use_file
            && !req.force
            && let Ok(text) = std::fs::read_to_string(f)
        {
            let ids: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            say(
                json!({"event": "release", "image_id": req.image.image_id, "outcome": "refused", "from": req.from.as_str()}),
            );
            return ReleaseOutcome::InUse {
                reason: format!("in use on {node} by {} mounts", ids.len()),
                mount_ids: ids,
            };
        }
        if let Some((img, r)) = h.handle.take() {
            let closed = img.close();
            drop(r);
            if let Err(e) = closed {
                return ReleaseOutcome::Failed(format!("closing the image: {e}"));
            }
        }
        say(
            json!({"event": "release", "image_id": req.image.image_id, "outcome": "released", "from": req.from.as_str(), "force": req.force}),
        );
        ReleaseOutcome::Released
    };
    let server = c
        .serve(&pool, Arc::new(handler))
        .map_err(|e| e.to_string())?;
    println!(
        "READY {}",
        json!({"node": c.node().as_str(), "holds": ready,
               "daemon_addr": c.rados().getaddrs().map(|a| a.to_string()).unwrap_or_default()})
    );
    let mut watching = true;
    while !rbd_driver::daemon::stop_requested() {
        std::thread::sleep(Duration::from_millis(100));
        let now = server.is_watching();
        if now != watching {
            say(json!({"event": "watch", "watching": now}));
            watching = now;
        }
    }
    say(json!({"event": "stopping"}));
    server.stop();
    // Close what is still held, bounded: a fenced client's close may stall.
    let left: Vec<(Image, Rados)> = holds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter_mut()
        .filter_map(|h| h.handle.take())
        .collect();
    let _ = rbd_core::rados::with_deadline(
        "closing held images",
        rbd_core::Context::none(),
        Duration::from_secs(10),
        move || {
            drop(left);
            Ok(())
        },
    );
    Ok(())
}

fn claim(a: &Args) -> Result<serde_json::Value, String> {
    let c = cluster(a)?;
    let pool = a.get("--pool").unwrap_or("rbd");
    let name = a.get("--image").ok_or("--image is required")?;
    let mode: Mode = a
        .get("--mode")
        .unwrap_or("rw")
        .parse()
        .map_err(|e: rbd_driver::DriverError| e.to_string())?;
    let io = c.rados().ioctx(pool).map_err(|e| e.to_string())?;
    let id = rbd_core::rbd::image_id_by_name(&io, name).map_err(|e| e.to_string())?;
    let image = ImageRef::new(pool, "", name, id);
    let opts = ClaimOptions {
        force: a.has("--force"),
        fence: !a.has("--no-fence"),
        ..ClaimOptions::default()
    };
    let claim = c.claim(&image, mode, &opts).map_err(|e| e.to_string())?;
    serde_json::to_value(&claim).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rbd-cluster-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let r = match a.op.as_str() {
        "serve" => serve(&a).map(|()| json!({"ok": true})),
        "claim" => claim(&a).map(|c| json!({"ok": true, "claim": c})),
        "ping" => cluster(&a).and_then(|c| {
            let target = NodeId::new(a.get("--target").ok_or("--target is required")?)
                .map_err(|e| e.to_string())?;
            let r = c
                .control(a.get("--pool").unwrap_or("rbd"))
                .and_then(|ctl| ctl.ping(&target, c.config().ping_timeout))
                .map_err(|e| e.to_string())?;
            Ok(json!({"ok": true, "alive": r == rbd_driver::cluster::PingResult::Alive}))
        }),
        "registry" => cluster(&a).and_then(|c| {
            let l = c
                .registry(a.get("--pool").unwrap_or("rbd"))
                .and_then(|r| r.list())
                .map_err(|e| e.to_string())?;
            Ok(json!({"ok": true, "registry": l}))
        }),
        other => {
            eprintln!("rbd-cluster-agent: unknown operation {other:?}");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(v) => {
            say(v);
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(json!({"ok": false, "error": e}));
            ExitCode::FAILURE
        }
    }
}
