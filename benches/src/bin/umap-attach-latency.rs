//! Attach + detach latency of the driver's userspace mapper against the same sequence
//! done with Ceph's tools, on the same cluster, in one run.
//!
//! - **ours**, in-process as the volume plugin does it: `rbd_core::rbd::create`, the
//!   [`UserspaceMapper`] map (which starts `rbd-umap`), `mkfs.ext4` of 1 GiB, mount,
//!   umount, unmap, `rbd_core::rbd::remove`. The cluster connection is made once, before
//!   timing, as the plugin holds one.
//! - **anchor**: `rbd create`, `rbd-fuse` (until the image file shows), `losetup
//!   --direct-io=on`, `mkfs.ext4`, mount, umount, `losetup -d`, unmount rbd-fuse (and wait
//!   for it to exit), `rbd rm`.
//!
//! ```text
//! CEPH_CONF=... umap-attach-latency [REPS] [--umap-bin PATH]
//! ```
//! Needs root. Prints a markdown table of medians, per step and in total.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbd_core::rbd::ImageOptions;
use rbd_core::{ConnectOptions, IoCtx, Rados, Timeouts};
use rbd_driver::mapper::userspace::UserspaceMapper;
use rbd_driver::mapper::{CephAuth, MapOptions, MapRequest, Mapper, MapperConfig};

const POOL: &str = "rbd";
const SIZE: u64 = 1 << 30;
const STEPS: [&str; 6] = ["create", "map", "mkfs", "mount+umount", "unmap", "remove"];

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

fn mount_umount(dev: &Path, dir: &Path) {
    nix::mount::mount(
        Some(dev),
        dir,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount");
    nix::mount::umount(dir).expect("umount");
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
    mount_umount(&m.device, dir);
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
    mount_umount(&dev, dir);
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
        umap_bin,
        ..MapperConfig::default()
    });
    let mut o: Vec<Vec<f64>> = Vec::new();
    let mut a: Vec<Vec<f64>> = Vec::new();
    for rep in 0..reps {
        if rep % 2 == 0 {
            o.push(ours(&io, &mapper, &conf, &fs_dir));
            a.push(anchor(&conf, &fuse_dir, &fs_dir));
        } else {
            a.push(anchor(&conf, &fuse_dir, &fs_dir));
            o.push(ours(&io, &mapper, &conf, &fs_dir));
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let col = |runs: &[Vec<f64>], i: usize| median(runs.iter().map(|r| r[i]).collect());
    let total = |runs: &[Vec<f64>]| median(runs.iter().map(|r| r.iter().sum()).collect());
    println!("| step | Ceph CLI + rbd-fuse + losetup (ms) | ours (ms) |");
    println!("|---|---|---|");
    for (i, s) in STEPS.iter().enumerate() {
        println!("| {s} | {:.0} | {:.0} |", col(&a, i), col(&o, i));
    }
    let (ta, to) = (total(&a), total(&o));
    println!("| **total** | **{ta:.0}** | **{to:.0}** |");
    println!(
        "\nours / anchor: {:.2}x ({reps} runs each, medians)",
        to / ta
    );
    let all = |runs: &[Vec<f64>]| {
        runs.iter()
            .map(|r| format!("{:.0}", r.iter().sum::<f64>()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("all totals, anchor: {}; ours: {}", all(&a), all(&o));
}

/// A fresh directory under /run for mount points and the mapper's run dir.
fn tempfile_dir() -> PathBuf {
    let p = PathBuf::from(format!("/run/umap-attach-latency-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}
