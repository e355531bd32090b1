//! Attach + detach latency, issue 4's sequence (create a 1 GiB image, map, `mkfs.ext4`,
//! mount, umount, unmap, remove), three ways on the same cluster, in one run:
//!
//! - **driver**: the API the plugin and rbdctl call, in-process as the plugin runs it:
//!   [`Driver::create`] (1 GiB, ext4, formatted at first attach), [`Driver::attach_with_report`]
//!   (reconcile check, cluster-wide claim in the registry, map with `rbd-umap`, probe,
//!   `mkfs.ext4`, mount, registry records), [`Driver::detach`] (umount, unmap,
//!   unregister) and [`Driver::remove`] (claim, image and index removal). A
//!   [`NodeDaemon`] serves this node in the same process, as in the plugin (the attach
//!   pings it). One driver, made before timing, as the plugin holds one.
//! - **mapper**: the same sequence one layer down: `rbd_core::rbd::create`, the
//!   [`UserspaceMapper`] map (which starts `rbd-umap`), `mkfs.ext4`, mount, umount, unmap,
//!   `rbd_core::rbd::remove`: where the driver's time goes beyond the mapper.
//! - **anchor**: `rbd create`, `rbd-fuse` (until the image file shows), `losetup
//!   --direct-io=on`, `mkfs.ext4`, mount, umount, `losetup -d`, unmount rbd-fuse (and wait
//!   for it to exit), `rbd rm`.
//!
//! The contenders run in a rotating order in each repetition; the tables show medians.
//!
//! ```text
//! CEPH_CONF=... umap-attach-latency [REPS] [--umap-bin PATH]
//! ```
//! Needs root. Prints markdown tables of medians, per step and in total, and the load
//! average before and after.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use rbd_core::rbd::ImageOptions;
use rbd_core::{ConnectOptions, IoCtx, Rados, Timeouts};
use rbd_driver::daemon::{DaemonOptions, NodeDaemon};
use rbd_driver::mapper::userspace::UserspaceMapper;
use rbd_driver::mapper::{Backend, CephAuth, MapOptions, MapRequest, Mapper, MapperConfig};
use rbd_driver::volume::{AttachTimings, CreateSpec, Driver, DriverConfig};

const POOL: &str = "rbd";
const SIZE: u64 = 1 << 30;
/// The steps of the mapper and anchor sequences.
const STEPS: [&str; 7] = [
    "create", "map", "mkfs", "mount", "umount", "unmap", "remove",
];
/// The driver's calls, and which of [`STEPS`] each covers.
const CALLS: [(&str, std::ops::Range<usize>); 4] = [
    ("create", 0..1),
    ("attach (map, mkfs, mount)", 1..4),
    ("detach (umount, unmap)", 4..6),
    ("remove", 6..7),
];

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new("timeout")
        .arg("120")
        .arg(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mkfs(dev: &Path) {
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
            dev.to_str().unwrap(),
        ],
    );
}

fn mount(dev: &Path, dir: &Path) {
    nix::mount::mount(
        Some(dev),
        dir,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount");
}

struct Timer {
    t: Instant,
    steps: Vec<f64>,
}

impl Timer {
    fn new() -> Self {
        Self {
            t: Instant::now(),
            steps: Vec::new(),
        }
    }
    fn step(&mut self) {
        let now = Instant::now();
        self.steps.push((now - self.t).as_secs_f64() * 1000.0);
        self.t = now;
    }
}

fn ours(io: &IoCtx, mapper: &UserspaceMapper, conf: &Path, dir: &Path) -> Vec<f64> {
    let name = unique("lat-u");
    let mut t = Timer::new();
    rbd_core::rbd::create(io, &name, SIZE, &ImageOptions::new()).expect("create");
    let id = rbd_core::rbd::image_id_by_name(io, &name).expect("image id");
    t.step();
    let m = mapper
        .map(&MapRequest {
            pool: POOL.into(),
            namespace: String::new(),
            image: name.clone(),
            image_id: id,
            snap: None,
            read_only: false,
            exclusive: false,
            auth: CephAuth {
                conf: conf.to_path_buf(),
                id: "admin".into(),
                keyring: None,
            },
            options: MapOptions::default(),
        })
        .expect("map");
    t.step();
    mkfs(&m.device);
    t.step();
    mount(&m.device, dir);
    t.step();
    nix::mount::umount(dir).expect("umount");
    t.step();
    mapper.unmap(&m, false).expect("unmap");
    t.step();
    rbd_core::rbd::remove(io, &name).expect("remove");
    t.step();
    t.steps
}

/// rbd-fuse, killed by its own pid if the test fails before it exits.
struct Fuse(Child, PathBuf);
impl Drop for Fuse {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.1, nix::mount::MntFlags::MNT_DETACH);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn anchor(conf: &Path, fuse_dir: &Path, dir: &Path) -> Vec<f64> {
    let name = unique("lat-a");
    let c = conf.to_str().unwrap();
    let spec = format!("{POOL}/{name}");
    let mut t = Timer::new();
    run("rbd", &["-c", c, "create", "--size", "1G", &spec]);
    t.step();
    let child = Command::new("rbd-fuse")
        .args(["-c", c, "-p", POOL, "-r", &name, "-f"])
        .arg(fuse_dir)
        .stderr(Stdio::null())
        .spawn()
        .expect("rbd-fuse");
    let mut fuse = Fuse(child, fuse_dir.to_path_buf());
    let file = fuse_dir.join(&name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !file.exists() {
        assert!(Instant::now() < deadline, "rbd-fuse did not show {name}");
        std::thread::sleep(Duration::from_millis(1));
    }
    let out = Command::new("timeout")
        .args(["60", "losetup", "--direct-io=on", "-f", "--show"])
        .arg(&file)
        .output()
        .expect("losetup");
    assert!(out.status.success());
    let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    t.step();
    mkfs(&dev);
    t.step();
    mount(&dev, dir);
    t.step();
    nix::mount::umount(dir).expect("umount");
    t.step();
    run("losetup", &["-d", dev.to_str().unwrap()]);
    nix::mount::umount(fuse_dir).expect("umount rbd-fuse");
    let _ = fuse.0.wait();
    drop(fuse);
    t.step();
    run("rbd", &["-c", c, "rm", "--no-progress", &spec]);
    t.step();
    t.steps
}

/// The driver's volumes still to remove, and its cluster namespace objects, removed on
/// drop (also after a panic).
struct DriverRun {
    driver: Arc<Driver>,
    daemon: Option<NodeDaemon>,
    admin: Rados,
    live: std::sync::Mutex<Vec<String>>,
}

impl Drop for DriverRun {
    fn drop(&mut self) {
        for n in self.live.lock().unwrap().drain(..) {
            let _ = self.driver.detach(&n, "bench");
            let _ = self.driver.remove(&n, true);
        }
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
        let ns = &self.driver.config().cluster.namespace;
        if let Ok(io) = self.admin.ioctx(POOL).and_then(|i| i.with_namespace(ns)) {
            for o in [
                rbd_driver::cluster::registry::REGISTRY_OBJECT,
                rbd_driver::cluster::registry::FENCE_OBJECT,
                rbd_driver::cluster::control::CONTROL_OBJECT,
            ] {
                let _ = io.remove_object(o);
            }
        }
    }
}

/// One driver sequence: the four calls' times and the attach's own step timings.
fn driver_seq(run: &DriverRun, spec: &CreateSpec) -> (Vec<f64>, AttachTimings) {
    let d = &run.driver;
    let name = unique("lat-d");
    let mut t = Timer::new();
    d.create(&name, spec).expect("Driver::create");
    run.live.lock().unwrap().push(name.clone());
    t.step();
    let rep = d
        .attach_with_report(&name, "bench", None)
        .expect("Driver::attach");
    assert!(
        rep.warnings.is_empty() && !rep.shared && rep.cleaned.is_empty(),
        "{rep:?}"
    );
    t.step();
    d.detach(&name, "bench").expect("Driver::detach");
    t.step();
    d.remove(&name, false).expect("Driver::remove");
    run.live.lock().unwrap().retain(|n| n != &name);
    t.step();
    (t.steps, rep.timings)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reps: usize = args
        .iter()
        .find(|a| !a.starts_with("--") && a.parse::<usize>().is_ok())
        .map(|a| a.parse().unwrap())
        .unwrap_or(7);
    let umap_bin = args
        .iter()
        .position(|a| a == "--umap-bin")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let conf = PathBuf::from(std::env::var("CEPH_CONF").expect("CEPH_CONF"));
    let rados = Rados::connect(
        &ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(Timeouts::uniform(Duration::from_secs(30))),
    )
    .expect("connect");
    let io = rados.ioctx(POOL).expect("pool");
    let work = tempfile_dir();
    let fs_dir = work.join("fs");
    let fuse_dir = work.join("rbd-fuse");
    std::fs::create_dir_all(&fs_dir).unwrap();
    std::fs::create_dir_all(&fuse_dir).unwrap();
    let mapper = UserspaceMapper::new(&MapperConfig {
        run_dir: work.join("run"),
        umap_bin: umap_bin.clone(),
        ..MapperConfig::default()
    });

    // The driver, as the plugin sets it up: its own node, state, mount root and run dir,
    // the userspace backend, a cluster namespace of this run's own, and a node daemon.
    let mut cfg = DriverConfig::new(CephAuth {
        conf: conf.clone(),
        id: "admin".into(),
        keyring: None,
    });
    cfg.node_id = unique("bench-node");
    cfg.state_dir = work.join("driver-state");
    cfg.mount_root = work.join("driver-mounts");
    cfg.mapper.run_dir = work.join("driver-run");
    cfg.mapper.umap_bin = umap_bin;
    cfg.backend = Some(Backend::Userspace);
    cfg.cluster.namespace = unique("rbd-volumes-lat");
    cfg.timeouts = Timeouts::uniform(Duration::from_secs(30));
    let driver = Arc::new(Driver::new(cfg).expect("Driver::new"));
    let daemon = NodeDaemon::start(
        driver.clone(),
        DaemonOptions {
            pools: vec![POOL.into()],
            ..DaemonOptions::default()
        },
    )
    .expect("NodeDaemon::start");
    daemon.wait_for_reconcile(0, Duration::from_secs(60));
    let drun = DriverRun {
        driver,
        daemon: Some(daemon),
        admin: rados.clone(),
        live: std::sync::Mutex::new(Vec::new()),
    };
    let spec = CreateSpec::from_options(
        &[
            ("size".to_string(), "1G".to_string()),
            ("fstype".to_string(), "ext4".to_string()),
        ]
        .into(),
    )
    .expect("spec");

    let load_before = loadavg();
    let started = std::time::SystemTime::now();
    let mut o: Vec<Vec<f64>> = Vec::new();
    let mut a: Vec<Vec<f64>> = Vec::new();
    let mut dv: Vec<Vec<f64>> = Vec::new();
    let mut dt: Vec<AttachTimings> = Vec::new();
    for rep in 0..reps {
        // Rotate who goes first.
        for k in 0..3 {
            match (rep + k) % 3 {
                0 => {
                    let (s, t) = driver_seq(&drun, &spec);
                    dv.push(s);
                    dt.push(t);
                }
                1 => o.push(ours(&io, &mapper, &conf, &fs_dir)),
                _ => a.push(anchor(&conf, &fuse_dir, &fs_dir)),
            }
        }
    }
    let load_after = loadavg();
    drop(drun);
    let _ = std::fs::remove_dir_all(&work);

    let col = |runs: &[Vec<f64>], r: std::ops::Range<usize>| {
        median(runs.iter().map(|x| x[r.clone()].iter().sum()).collect())
    };
    let total = |runs: &[Vec<f64>]| median(runs.iter().map(|r| r.iter().sum()).collect());
    println!(
        "started {} s after the epoch; load average before {load_before}, after {load_after}\n",
        started
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    println!("| call | Ceph CLI + rbd-fuse + losetup (ms) | Driver (ms) | mapper only (ms) |");
    println!("|---|---|---|---|");
    for (i, (call, r)) in CALLS.iter().enumerate() {
        println!(
            "| {call} | {:.0} | {:.0} | {:.0} |",
            col(&a, r.clone()),
            median(dv.iter().map(|x| x[i]).collect()),
            col(&o, r.clone())
        );
    }
    let (ta, td, to) = (total(&a), total(&dv), total(&o));
    println!("| **total** | **{ta:.0}** | **{td:.0}** | **{to:.0}** |");
    println!(
        "\nDriver / anchor: {:.2}x; mapper only / anchor: {:.2}x ({reps} runs each, medians)",
        td / ta,
        to / ta
    );
    println!("\n| step | anchor (ms) | mapper only (ms) |");
    println!("|---|---|---|");
    for (i, s) in STEPS.iter().enumerate() {
        println!(
            "| {s} | {:.0} | {:.0} |",
            col(&a, i..i + 1),
            col(&o, i..i + 1)
        );
    }
    let m = |f: fn(&AttachTimings) -> f64| median(dt.iter().map(f).collect());
    println!(
        "\nDriver::attach, its own step timings (medians, ms): check {:.0}, claim {:.0}, map \
         {:.0}, probe+mkfs+mount {:.0}, registry records {:.0}, total {:.0}",
        m(|t| t.check_ms),
        m(|t| t.claim_ms),
        m(|t| t.map_ms),
        m(|t| t.mount_ms),
        m(|t| t.register_ms),
        m(|t| t.total_ms)
    );
    let all = |runs: &[Vec<f64>]| {
        runs.iter()
            .map(|r| format!("{:.0}", r.iter().sum::<f64>()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "all totals, anchor: {}; Driver: {}; mapper only: {}",
        all(&a),
        all(&dv),
        all(&o)
    );
}

/// A fresh directory under /run for mount points and the mapper's run dir.
fn tempfile_dir() -> PathBuf {
    let p = PathBuf::from(format!("/run/umap-attach-latency-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}
