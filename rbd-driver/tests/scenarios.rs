//! The four scenarios of the stale-mapping fix, end to end on the multi-node test bed
//! (`testkit::testbed`: one network namespace runs a real Ceph cluster, each node its own
//! namespace).
//!
//! Every node runs its own node daemon (`rbd-volume-op daemon`: a
//! [`NodeDaemon`](rbd_driver::daemon::NodeDaemon) over a `Driver`, what the Docker
//! plugin and `rbdctl daemon` run) with its own node id, state dir, mount root and mapper
//! run dir; volume operations run as separate processes in the node's namespace (as
//! `rbdctl` or the plugin would), with the real userspace mapper (`rbd-umap`: FUSE +
//! loop). Data is written and read through the nodes' real mounts and checked by checksum;
//! cluster state is checked from an observer in the cluster's namespace: the registry, the
//! fence log, the OSD blocklist, the image's watchers and the pool's image list. The bed
//! (daemons, mappers, mounts, loop devices, namespaces) is torn down even when a test fails.
//!
//! Timings are printed as `TIMING scenario=... step=... ms=...` lines (recorded in
//! BENCHMARKS.md), never asserted, with one exception that is a requirement rather than a
//! benchmark: in scenario 2, B must hold and mount the volume within 5 s of asking
//! (issue 5), measured by the driver itself (the attach's `total_ms`, from B's request
//! through noticing A is silent, fencing it, mapping and mounting).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rbd_core::{ConnectOptions, EntityAddr, ErrorKind, Image, OpenOptions, Rados, Timeouts};
use rbd_driver::cluster::{FenceRecord, NAMESPACE, Registry, RegistryEntry};
use rbd_driver::mapper::MapperConfig;
use rbd_driver::mapper::loopdev;
use rbd_driver::mapper::userspace::UserspaceMapper;
use rbd_driver::volume::State;
use serde_json::Value;
use testkit::testbed::{Daemon, Node, Testbed};

const OP: &str = env!("CARGO_BIN_EXE_rbd-volume-op");
const UMAP: &str = env!("CARGO_BIN_EXE_rbd-umap");
const POOL: &str = "rbd";
/// Reconcile interval of the node daemons in these tests.
const INTERVAL_SECS: &str = "2";

fn timing(scenario: &str, step: &str, d: Duration) {
    eprintln!(
        "TIMING scenario={scenario} step={step} ms={:.0}",
        d.as_secs_f64() * 1000.0
    );
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `f` on a thread and waits at most `limit` for it (`None`: it did not return; the
/// thread is left behind). For file I/O on a node's mount that may block while its
/// cluster is unreachable.
fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `sha256sum` of a file.
fn sha256(path: &Path) -> String {
    let out = Command::new("timeout")
        .args(["60", "sha256sum"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Writes `len` bytes to `path` and fsyncs the file and its directory; returns the
/// checksum.
fn write_synced(path: &Path, len: usize, seed: u64) -> String {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&data(len, seed)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::File::open(path.parent().unwrap())
        .unwrap()
        .sync_all()
        .unwrap();
    sha256(path)
}

fn mounted(p: &Path) -> bool {
    fs_format::is_mountpoint(p).unwrap_or(false)
}

/// The mapper run dirs of the bed's nodes live under /run (their admin socket paths must
/// stay short). Cleaned after the bed is down: FUSE mounts, loop devices, directories.
struct RunDirs(Vec<PathBuf>);

impl Drop for RunDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let m = UserspaceMapper::new(&MapperConfig {
                run_dir: dir.clone(),
                ..MapperConfig::default()
            });
            for e in m.entries().unwrap_or_default() {
                if std::fs::metadata(format!("/proc/{}", e.record.pid)).is_ok() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(e.record.pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if let Ok(mi) = fs_format::read_mountinfo() {
                for mnt in mi.iter().rev() {
                    if mnt.mount_point.starts_with(dir) {
                        let _ =
                            nix::mount::umount2(&mnt.mount_point, nix::mount::MntFlags::MNT_DETACH);
                    }
                }
            }
            if let Ok(loops) = loopdev::list() {
                for l in loops.iter().filter(|l| l.backing_file.starts_with(dir)) {
                    let _ = loopdev::detach(l.number);
                }
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A bed with two nodes, an observer connection in the cluster's namespace, and the
/// nodes' mapper run dirs. Fields drop in order: the observer first, then the bed, then
/// the run dirs.
struct World {
    admin: Rados,
    bed: Testbed,
    _runs: RunDirs,
}

impl World {
    fn up() -> Option<World> {
        let bed = Testbed::up(2)?;
        let conf = bed.ceph_conf().to_owned();
        let admin = bed.ceph().enter(|| {
            Rados::connect(
                &ConnectOptions::new()
                    .conf_file(&conf)
                    .timeouts(Timeouts::uniform(Duration::from_secs(20))),
            )
            .expect("observer connection")
        });
        let runs = RunDirs(
            (1..=2)
                .map(|i| PathBuf::from(format!("/run/{}-n{i}", bed.prefix())))
                .collect(),
        );
        Some(World {
            admin,
            bed,
            _runs: runs,
        })
    }

    fn node(&self, i: usize) -> N<'_> {
        N {
            node: self.bed.node(i),
            id: format!("n{i}"),
            run: self._runs.0[i - 1].clone(),
            conf: self.bed.ceph_conf().to_owned(),
        }
    }

    fn registry(&self) -> Registry {
        Registry::open(&self.admin, POOL, NAMESPACE).unwrap()
    }

    /// The registry entry of image id `id`.
    fn entry(&self, id: &str) -> Option<RegistryEntry> {
        self.registry()
            .list()
            .unwrap()
            .entries
            .into_values()
            .find(|e| e.image_id == id)
    }

    fn fences_of(&self, id: &str) -> Vec<FenceRecord> {
        self.registry()
            .fences(true)
            .unwrap()
            .into_iter()
            .filter(|f| f.image.image_id == id)
            .collect()
    }

    fn blocklist(&self) -> Vec<EntityAddr> {
        self.admin
            .blocklist_ls()
            .unwrap()
            .into_iter()
            .map(|b| b.addr)
            .collect()
    }

    fn blocklisted(&self, a: &EntityAddr) -> bool {
        self.blocklist().iter().any(|b| b.same_instance(a))
    }

    /// Whether image id `id` exists in the pool (`rbd ls` by id).
    fn image_exists(&self, id: &str) -> bool {
        let io = self.admin.ioctx(POOL).unwrap();
        rbd_core::rbd::list(&io).unwrap().iter().any(|s| s.id == id)
    }

    fn watchers(&self, id: &str) -> Vec<EntityAddr> {
        let io = self.admin.ioctx(POOL).unwrap();
        match Image::open_by_id(&io, id, &OpenOptions::new().read_only(true)) {
            Ok(img) => img
                .watchers()
                .unwrap()
                .into_iter()
                .map(|w| w.addr)
                .collect(),
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("opening image {id}: {e}"),
        }
    }
}

/// One node of the bed: its namespace, id and dirs.
struct N<'a> {
    node: Node<'a>,
    id: String,
    run: PathBuf,
    conf: PathBuf,
}

impl N<'_> {
    fn common(&self) -> Vec<String> {
        let s = |p: &Path| p.display().to_string();
        vec![
            "--conf".into(),
            s(&self.conf),
            "--state-dir".into(),
            s(&self.node.state_dir()),
            "--mount-root".into(),
            s(&self.node.mount_root()),
            "--run-dir".into(),
            s(&self.run),
            "--node".into(),
            self.id.clone(),
            "--backend".into(),
            "userspace".into(),
            "--umap-bin".into(),
            UMAP.into(),
            "--io-timeout".into(),
            "10".into(),
            "--timeout".into(),
            "10".into(),
            "--interval".into(),
            INTERVAL_SECS.into(),
        ]
    }

    fn argv(&self, extra: &[String], args: &[&str]) -> Vec<String> {
        let mut v = vec![OP.to_owned()];
        v.extend(self.common());
        v.extend(extra.iter().cloned());
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// Runs one volume operation on this node: `(ok, result or error)`.
    fn op(&self, args: &[&str]) -> (bool, Value) {
        let argv = self.argv(&[], args);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = self.node.exec(&refs, Duration::from_secs(180));
        parse(&self.id, args, &out.stdout, &out.stderr)
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> Value {
        let (ok, v) = self.op(args);
        assert!(ok, "{} {args:?} failed: {v}", self.id);
        v
    }

    #[track_caller]
    fn fails(&self, args: &[&str]) -> String {
        let (ok, v) = self.op(args);
        assert!(!ok, "{} {args:?} should have failed: {v}", self.id);
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Starts this node's daemon and waits until it serves and has reconciled once.
    fn daemon(&self) -> Daemon {
        let argv = self.argv(&[], &["daemon"]);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut d = self.node.spawn("node-daemon", &refs);
        assert!(
            d.wait_for("READY ", Duration::from_secs(120)),
            "{}'s daemon did not get ready:\n{}",
            self.id,
            d.log()
        );
        d
    }

    fn mountpoint(&self, vol: &str) -> PathBuf {
        self.node.mount_root().join(vol)
    }

    fn state(&self) -> State {
        match std::fs::read(self.node.state_dir().join("state.json")) {
            Ok(b) => serde_json::from_slice(&b).unwrap(),
            Err(_) => State::default(),
        }
    }

    /// This node's userspace mapper records (any state).
    fn mapper_entries(&self) -> Vec<rbd_driver::mapper::userspace::Entry> {
        UserspaceMapper::new(&MapperConfig {
            run_dir: self.run.clone(),
            ..MapperConfig::default()
        })
        .entries()
        .unwrap_or_default()
    }
}

fn parse(node: &str, args: &[&str], stdout: &[u8], stderr: &[u8]) -> (bool, Value) {
    let text = String::from_utf8_lossy(stdout);
    let v: Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "{node} {args:?} printed no JSON:\n{text}\n{}",
                String::from_utf8_lossy(stderr)
            )
        });
    if v["ok"] == true {
        (true, v["result"].clone())
    } else {
        (false, v["error"].clone())
    }
}

fn addr(v: &Value) -> EntityAddr {
    v.as_str()
        .unwrap_or_else(|| panic!("not an address: {v}"))
        .parse()
        .unwrap()
}

/// The local mapping of this node's attachment (pid, client address, device).
fn local_mapping(n: &N<'_>, vol: &str) -> Value {
    let st = n.ok(&["status", vol]);
    let maps = st["local_mappings"].as_array().unwrap();
    assert_eq!(maps.len(), 1, "{}: {st}", n.id);
    maps[0].clone()
}

/// Checks an exported image with e2fsck (read-only) and returns its root directory's
/// files with their checksums (debugfs: no mount needed).
fn files_in_image(image: &Path, scratch: &Path) -> BTreeMap<String, String> {
    let fsck = Command::new("timeout")
        .args(["120", "e2fsck", "-fn"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn of the exported image: {}\n{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let ls = Command::new("timeout")
        .args(["60", "debugfs", "-R", "ls -p /"])
        .arg(image)
        .output()
        .unwrap();
    assert!(ls.status.success());
    let mut out = BTreeMap::new();
    for line in String::from_utf8_lossy(&ls.stdout).lines() {
        // /inode/mode/uid/gid/name/size/
        let f: Vec<&str> = line.split('/').collect();
        if f.len() < 7 || !f[2].starts_with("10") {
            continue; // not a regular file
        }
        let name = f[5].to_owned();
        let dst = scratch.join(&name);
        let d = Command::new("timeout")
            .args(["60", "debugfs", "-R"])
            .arg(format!("dump /{name} {}", dst.display()))
            .arg(image)
            .output()
            .unwrap();
        assert!(d.status.success());
        out.insert(name, sha256(&dst));
    }
    out
}

/// Exports image `name` from inside `n`'s namespace to a file in the bed's dir.
fn export(w: &World, n: &N<'_>, name: &str) -> PathBuf {
    let path = w.bed.dir().join(format!("{name}.img"));
    let out = n.node.exec(
        &[
            "rbd",
            "-c",
            &w.bed.ceph_conf().display().to_string(),
            "export",
            &format!("{POOL}/{name}"),
            &path.display().to_string(),
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "rbd export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Scenario 1 (seed-004), with node A made stale by `kill -9` of its mapper and daemon:
/// `v` removed from B, recreated, attached again on A and B with no manual step; A's
/// stale device is gone once A's daemon restarts.
#[test]
fn seed_004_remove_on_b_while_a_is_dead_then_recreate() {
    let Some(w) = World::up() else { return };
    let (a, b) = (w.node(1), w.node(2));
    let mut da = a.daemon();
    let _db = b.daemon();
    let v = "v";

    // v attached on A, written, detached.
    let id1 = a.ok(&["create", v, "size=64M"])["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mp_a = PathBuf::from(a.ok(&["attach", v, "m-w", "rw"]).as_str().unwrap());
    assert_eq!(mp_a, a.mountpoint(v));
    let sum1 = write_synced(&mp_a.join("data1"), 3 << 20, 1);
    a.ok(&["detach", v, "m-w"]);
    assert!(w.entry(&id1).is_none(), "the detach unregisters");

    // Then read-only on A and on B: both see the data; the registry names both.
    let mp_a = PathBuf::from(a.ok(&["attach", v, "m-ra", "ro"]).as_str().unwrap());
    let mp_b = PathBuf::from(b.ok(&["attach", v, "m-rb", "ro"]).as_str().unwrap());
    assert_eq!(sha256(&mp_a.join("data1")), sum1);
    assert_eq!(sha256(&mp_b.join("data1")), sum1);
    let e = w.entry(&id1).expect("registered");
    assert_eq!(e.mode.as_str(), "ro");
    let nodes: Vec<&str> = e.holders.iter().map(|h| h.node.as_str()).collect();
    assert_eq!(nodes, vec!["n1", "n2"], "{e:?}");
    let ma = local_mapping(&a, v);
    let a_addr = addr(&ma["client_addr"]);
    let a_dev = PathBuf::from(ma["device"].as_str().unwrap());
    // The binding's identity (its path in sysfs changes once A's FUSE mount is lazily
    // unmounted).
    let a_bind = loopdev::binding_id(loopdev::parse_device(&a_dev).unwrap()).expect("bound");
    let ha = e.holder(&"n1".parse().unwrap()).unwrap();
    assert_eq!(
        ha.client_addr,
        Some(a_addr),
        "the exact client address is recorded"
    );
    assert_eq!(ha.device.as_deref(), Some(a_dev.as_path()));
    assert_eq!(ha.mount_ids.iter().collect::<Vec<_>>(), vec!["m-ra"]);
    // (Read-only opens do not watch the image header: the registry's addresses are what
    // fencing a read-only holder uses.)
    assert!(w.watchers(&id1).is_empty());

    // A goes stale: kill -9 its mapper and its daemon.
    let pid = ma["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    da.kill9();
    assert!(
        mounted(&mp_a),
        "A's filesystem stays mounted on its dead device"
    );

    // v is removed from B (B detaches its own mount first): A does not answer, so its
    // mapping's exact address is fenced, and the remove goes through.
    let t = Instant::now();
    b.ok(&["remove", v, "--force"]);
    timing("s1-kill", "remove-on-b-with-fencing", t.elapsed());
    assert!(
        !w.image_exists(&id1),
        "rbd ls still lists the removed image"
    );
    assert!(
        w.entry(&id1).is_none(),
        "registry entry left: {:?}",
        w.entry(&id1)
    );
    assert!(w.blocklisted(&a_addr), "A's mapping {a_addr} is not fenced");
    let f = w.fences_of(&id1);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].fenced_node.as_ref().map(|n| n.as_str()), Some("n1"));
    assert_eq!(f[0].by_node.as_str(), "n2");
    assert!(f[0].addrs.iter().any(|x| x.same_instance(&a_addr)));
    assert!(f[0].expires_ms > f[0].at_ms);
    assert!(!mounted(&mp_b));

    // v is recreated (a new image id) and used on B.
    let t = Instant::now();
    let id2 = b.ok(&["create", v, "size=64M"])["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(id2, id1);
    let mp_b = PathBuf::from(b.ok(&["attach", v, "m-w2", "rw"]).as_str().unwrap());
    let sum2 = write_synced(&mp_b.join("data2"), 2 << 20, 2);
    assert!(!mp_b.join("data1").exists(), "the new v is a new volume");
    b.ok(&["detach", v, "m-w2"]);
    timing("s1-kill", "recreate-and-use-on-b", t.elapsed());

    // A's stale device is still there (its node was down) ...
    assert!(mounted(&mp_a));
    assert_eq!(a.state().volumes[v].image_id, id1);
    // ... until A's daemon restarts: it is cleaned at start, by image id.
    let t = Instant::now();
    let da = a.daemon();
    timing("s1-kill", "a-daemon-restart-to-clean", t.elapsed());
    assert!(!mounted(&mp_a), "A's stale mount is still there");
    assert!(!a.state().volumes.contains_key(v), "{:?}", a.state());
    assert!(
        a.mapper_entries().iter().all(|e| e.record.image_id != id1),
        "a record of the old mapping is left"
    );
    let n = loopdev::parse_device(&a_dev).unwrap();
    // Its loop device is released (A has mapped nothing new yet: no binding to A's
    // mapper files may remain).
    assert!(
        wait_until(Duration::from_secs(10), || !loopdev::is_bound_to(
            n, &a_bind
        )),
        "{} is still bound to the old mapping: {:?}",
        a_dev.display(),
        loopdev::backing_file(n)
    );

    // Attaching on A and on B works, with no manual step, and shows the new v.
    let t = Instant::now();
    let mp_a = PathBuf::from(a.ok(&["attach", v, "m-ra2", "ro"]).as_str().unwrap());
    timing("s1-kill", "attach-new-v-on-a", t.elapsed());
    let mp_b = PathBuf::from(b.ok(&["attach", v, "m-rb2", "ro"]).as_str().unwrap());
    assert_eq!(sha256(&mp_a.join("data2")), sum2);
    assert_eq!(sha256(&mp_b.join("data2")), sum2);
    assert!(!mp_a.join("data1").exists());
    let e = w.entry(&id2).unwrap();
    assert_eq!(e.holders.len(), 2, "{e:?}");
    a.ok(&["detach", v, "m-ra2"]);
    b.ok(&["detach", v, "m-rb2"]);
    a.ok(&["remove", v]);
    assert!(!w.image_exists(&id2));
    assert!(w.registry().list().unwrap().entries.is_empty());
    drop(da);
}

/// Scenario 1 with node A partitioned instead (its mapper and daemon keep running): `v`
/// is removed from B (A fenced), recreated and used on B; when A's link heals, its mapper
/// sees it was fenced and exits while its filesystem keeps the loop device — that device
/// (no longer listed by any mapper) is found through A's state file and cleaned, and A
/// attaches the new `v` with no manual step.
#[test]
fn seed_004_remove_on_b_while_a_is_partitioned_then_heal() {
    let Some(w) = World::up() else { return };
    let (a, b) = (w.node(1), w.node(2));
    let da = a.daemon();
    let _db = b.daemon();
    let v = "v";
    let id1 = a.ok(&["create", v, "size=64M"])["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mp = PathBuf::from(a.ok(&["attach", v, "m-w", "rw"]).as_str().unwrap());
    let sum1 = write_synced(&mp.join("data1"), 1 << 20, 3);
    a.ok(&["detach", v, "m-w"]);
    let mp_a = PathBuf::from(a.ok(&["attach", v, "m-ra", "ro"]).as_str().unwrap());
    b.ok(&["attach", v, "m-rb", "ro"]);
    assert_eq!(sha256(&mp_a.join("data1")), sum1);
    let a_addr = addr(&local_mapping(&a, v)["client_addr"]);

    w.bed.cut(1);
    let t = Instant::now();
    b.ok(&["remove", v, "--force"]);
    timing("s1-cut", "remove-on-b-with-fencing", t.elapsed());
    assert!(!w.image_exists(&id1));
    assert!(w.blocklisted(&a_addr));
    assert_eq!(w.fences_of(&id1).len(), 1);
    let id2 = b.ok(&["create", v, "size=64M"])["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mp_b = PathBuf::from(b.ok(&["attach", v, "m-w2", "rw"]).as_str().unwrap());
    let sum2 = write_synced(&mp_b.join("data2"), 1 << 20, 4);
    b.ok(&["detach", v, "m-w2"]);
    let mp_b = PathBuf::from(b.ok(&["attach", v, "m-rb2", "ro"]).as_str().unwrap());
    assert_eq!(sha256(&mp_b.join("data2")), sum2);
    assert!(mounted(&mp_a), "A cannot know yet");

    // The link heals: A's daemon (its control watch comes back) and A's mapper (it sees
    // its client on the blocklist) clean up on their own.
    w.bed.heal(1);
    let t = Instant::now();
    let clean = wait_until(Duration::from_secs(90), || {
        !mounted(&mp_a) && !a.state().volumes.contains_key(v)
    });
    timing("s1-cut", "heal-to-a-clean", t.elapsed());
    // A's daemon did it (its reconcile: the mapper's device is gone from the mapper list
    // once the fenced mapper exits, and is found through the state file), and says why.
    let said = |l: &str| {
        l.contains("recovered v: its mount or mapping is gone")
            || l.contains("cleaned stale userspace mapping")
    };
    assert!(
        wait_until(Duration::from_secs(10), || said(&da.log())),
        "A's daemon log does not show the cleanup:\n{}",
        da.log()
    );
    eprintln!("A's daemon:\n{}", da.log());
    assert!(
        clean,
        "A did not clean its stale device: state {:?}, mounted {}",
        a.state(),
        mounted(&mp_a)
    );
    assert!(
        wait_until(Duration::from_secs(30), || a
            .mapper_entries()
            .iter()
            .all(|e| e.record.image_id != id1)),
        "A's old mapping is still recorded"
    );
    let t = Instant::now();
    let mp_a = PathBuf::from(a.ok(&["attach", v, "m-ra2", "ro"]).as_str().unwrap());
    timing("s1-cut", "attach-new-v-on-a", t.elapsed());
    assert_eq!(sha256(&mp_a.join("data2")), sum2);
    let e = w.entry(&id2).unwrap();
    assert_eq!(e.holders.len(), 2, "{e:?}");
    a.ok(&["detach", v, "m-ra2"]);
    b.ok(&["detach", v, "m-rb2"]);
}

/// Scenario 2: A holds `v` read-write with fsynced data and is partitioned with
/// unsynced writes; B attaches it read-write after automatic fencing, sees exactly A's
/// fsynced data, and when A's link heals A's late writes are rejected (blocklisted), A
/// cleans itself up, and the volume is intact (fsck, checksums).
#[test]
fn crashed_node_is_fenced_and_its_late_writes_never_land() {
    let Some(w) = World::up() else { return };
    let (a, b) = (w.node(1), w.node(2));
    let _da = a.daemon();
    let _db = b.daemon();
    let v = "v";
    let id = a.ok(&["create", v, "size=64M"])["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mp_a = PathBuf::from(a.ok(&["attach", v, "m-a", "rw"]).as_str().unwrap());
    let sum1 = write_synced(&mp_a.join("synced"), 4 << 20, 5);
    let ma = local_mapping(&a, v);
    let a_addr = addr(&ma["client_addr"]);
    assert_eq!(w.entry(&id).unwrap().holders[0].client_addr, Some(a_addr));
    let bl_before = w.blocklist();
    // Written but not fsynced before the cut: nobody has claimed it durable.
    let pre_data = data(1 << 20, 8);
    let sum_pre = {
        let p = w.bed.dir().join("s2-unsynced.ref");
        std::fs::write(&p, &pre_data).unwrap();
        sha256(&p)
    };
    let pre = mp_a.join("unsynced");
    let mut pre_file = std::fs::File::create(&pre).unwrap();
    pre_file.write_all(&pre_data).unwrap();

    // A is partitioned; then it writes more (page cache only: it cannot reach the OSDs).
    w.bed.cut(1);
    let late = mp_a.join("late");
    let late2 = late.clone();
    let wrote = bounded(Duration::from_secs(20), move || {
        let mut f = std::fs::File::create(&late2)?;
        f.write_all(&data(1 << 20, 6))?;
        Ok::<std::fs::File, std::io::Error>(f)
    });
    let late_file = match wrote {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            eprintln!("the late write on A failed at once: {e}");
            None
        }
        None => {
            eprintln!("the late write on A blocked (its fs waits for the cluster)");
            None
        }
    };

    // B asks for v read-write: A is silent, so A's mapping is fenced and B gets it.
    let t = Instant::now();
    let r = b.ok(&["attach-report", v, "m-b", "rw"]);
    let took = t.elapsed();
    timing("s2", "b-attach-rw-with-fencing-process", took);
    timing(
        "s2",
        "b-claim-with-fencing",
        Duration::from_secs_f64(r["timings"]["claim_ms"].as_f64().unwrap() / 1000.0),
    );
    timing(
        "s2",
        "b-attach-total-in-driver",
        Duration::from_secs_f64(r["timings"]["total_ms"].as_f64().unwrap() / 1000.0),
    );
    // The requirement: B holds and mounts it within 5 s of asking, fencing included.
    let total_ms = r["timings"]["total_ms"].as_f64().unwrap();
    assert!(
        total_ms < 5000.0,
        "B's takeover took {total_ms} ms (claim {} ms), over the 5 s requirement",
        r["timings"]["claim_ms"]
    );
    let fenced = r["claim"]["fenced"].as_array().unwrap();
    assert_eq!(fenced.len(), 1, "{r}");
    let rec = &fenced[0]["record"];
    assert_eq!(rec["fenced_node"], "n1");
    assert!(
        rec["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| addr(x).same_instance(&a_addr)),
        "{rec}"
    );
    let mp_b = PathBuf::from(r["mountpoint"].as_str().unwrap());
    assert_eq!(
        sha256(&mp_b.join("synced")),
        sum1,
        "B must see A's fsynced data"
    );
    assert!(
        !mp_b.join("late").exists(),
        "A's unsynced write must not reach B"
    );
    // The cluster: A's exact mapping address blocklisted (nothing else new), the fence
    // logged, B the only holder, only B's mapper watching.
    let new: Vec<EntityAddr> = w
        .blocklist()
        .into_iter()
        .filter(|x| !bl_before.iter().any(|y| y.same_instance(x)))
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].same_instance(&a_addr));
    assert_eq!(w.fences_of(&id).len(), 1);
    let e = w.entry(&id).unwrap();
    assert_eq!(e.holders.len(), 1);
    assert_eq!(e.holders[0].node.as_str(), "n2");
    let b_addr = addr(&r["client_addr"]);
    assert_eq!(e.holders[0].client_addr, Some(b_addr));
    let watchers = w.watchers(&id);
    assert_eq!(watchers.len(), 1, "{watchers:?}");
    assert!(watchers[0].same_instance(&b_addr));
    let sum_b = write_synced(&mp_b.join("from-b"), 1 << 20, 7);

    // A's link heals: its late writes are rejected, and it cleans itself up.
    w.bed.heal(1);
    let t = Instant::now();
    if let Some(f) = late_file {
        let synced = bounded(Duration::from_secs(90), move || f.sync_all());
        match synced {
            Some(Err(e)) => eprintln!("A's late write was rejected: {e}"),
            Some(Ok(())) => panic!("A's late write was accepted after it was fenced"),
            None => panic!("fsync on A hung for 90 s after the heal"),
        }
    }
    // The write A never fsynced before the cut: fsyncing it now, on the fenced node,
    // must not claim it durable unless it really reached the image (checked below).
    let pre_claimed = match bounded(Duration::from_secs(90), move || pre_file.sync_all()) {
        Some(Err(e)) => {
            eprintln!("A's fsync of the write it had not synced before the cut failed: {e}");
            false
        }
        Some(Ok(())) => {
            eprintln!("A's fsync of the pre-cut write succeeded: it must be on the image");
            true
        }
        None => panic!("fsync on A hung for 90 s after the heal"),
    };
    let clean = wait_until(Duration::from_secs(90), || {
        !mounted(&mp_a) && !a.state().volumes.contains_key(v)
    });
    timing("s2", "heal-to-a-clean", t.elapsed());
    assert!(clean, "A did not clean up: {:?}", a.state());
    assert!(
        wait_until(Duration::from_secs(30), || a
            .mapper_entries()
            .iter()
            .all(|e| e.record.image_id != id)),
        "A's fenced mapping is still recorded"
    );
    let e = w.entry(&id).unwrap();
    assert_eq!(e.holders.len(), 1, "A must not register again: {e:?}");
    assert_eq!(e.holders[0].node.as_str(), "n2");

    // The volume is intact: B detaches; the image's filesystem is clean and holds exactly
    // A's fsynced file and B's file.
    assert_eq!(sha256(&mp_b.join("synced")), sum1);
    b.ok(&["detach", v, "m-b"]);
    let img = export(&w, &b, v);
    let scratch = w.bed.dir().join("s2-files");
    std::fs::create_dir_all(&scratch).unwrap();
    let files = files_in_image(&img, &scratch);
    assert_eq!(files.get("synced"), Some(&sum1), "{files:?}");
    assert_eq!(files.get("from-b"), Some(&sum_b), "{files:?}");
    assert!(
        !files.contains_key("late"),
        "A's late write landed: {files:?}"
    );
    // Data A reported durable is there; data it never reported durable is not counted
    // on (it may be missing, or a prefix of what was written).
    if pre_claimed {
        assert_eq!(
            files.get("unsynced"),
            Some(&sum_pre),
            "A's fsync succeeded but the data is not on the image: {files:?}"
        );
    } else {
        eprintln!(
            "the pre-cut unsynced write on the image: {:?} (written {sum_pre})",
            files.get("unsynced")
        );
    }
}

/// Scenario 3: A and B attach `v` read-write at the same moment, several rounds:
/// exactly one wins each time, the other gets a clear error naming the winner, and
/// nothing of the loser's attempt is left.
#[test]
fn race_for_read_write_has_exactly_one_winner() {
    let Some(w) = World::up() else { return };
    let (a, b) = (w.node(1), w.node(2));
    let _da = a.daemon();
    let _db = b.daemon();
    let v = "v";
    let id = a.ok(&["create", v, "size=64M"])["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Formatted once, so the winner's attach is as short as the loser's.
    a.ok(&["attach", v, "fmt", "rw"]);
    a.ok(&["detach", v, "fmt"]);
    let bl_before = w.blocklist().len();
    let mut wins = BTreeMap::new();
    for round in 0..4 {
        let start_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            + 2500;
        let extra = vec!["--start-at-ms".to_string(), start_at.to_string()];
        let mid = format!("race-{round}");
        let spawn = |n: &N<'_>| {
            let argv = n.argv(&extra, &["attach", v, &format!("{mid}-{}", n.id), "rw"]);
            n.node
                .command("timeout")
                .arg("120")
                .args(&argv)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (pa, pb) = (spawn(&a), spawn(&b));
        let (oa, ob) = (
            pa.wait_with_output().unwrap(),
            pb.wait_with_output().unwrap(),
        );
        let ra = parse("n1", &["attach"], &oa.stdout, &oa.stderr);
        let rb = parse("n2", &["attach"], &ob.stdout, &ob.stderr);
        assert!(
            ra.0 ^ rb.0,
            "round {round}: exactly one must win: n1 {ra:?}, n2 {rb:?}"
        );
        let (winner, loser, err) = if ra.0 { (&a, &b, rb.1) } else { (&b, &a, ra.1) };
        let err = err.as_str().unwrap().to_owned();
        eprintln!("round {round}: {} won; {} got: {err}", winner.id, loser.id);
        assert!(
            err.contains(&format!("node {}", winner.id)),
            "the loser's error must name the winner {}: {err}",
            winner.id
        );
        assert!(err.contains("in use"), "{err}");
        *wins.entry(winner.id.clone()).or_insert(0) += 1;
        // The cluster: the winner alone holds it rw, with its mapping's address; one
        // watcher; nothing of the loser's.
        let e = w.entry(&id).unwrap();
        assert_eq!(e.mode.as_str(), "rw");
        assert_eq!(e.holders.len(), 1, "{e:?}");
        assert_eq!(e.holders[0].node.as_str(), winner.id);
        let wm = local_mapping(winner, v);
        assert_eq!(e.holders[0].client_addr, Some(addr(&wm["client_addr"])));
        assert_eq!(w.watchers(&id).len(), 1);
        assert!(!loser.state().volumes.contains_key(v));
        assert!(!mounted(&loser.mountpoint(v)));
        assert!(
            loser
                .mapper_entries()
                .iter()
                .all(|e| e.record.image_id != id)
        );
        winner.ok(&["detach", v, &format!("{mid}-{}", winner.id)]);
        assert!(w.entry(&id).is_none());
    }
    eprintln!("wins: {wins:?}");
    assert_eq!(w.blocklist().len(), bl_before, "a race must never fence");
    assert!(w.fences_of(&id).is_empty());
}

/// Scenario 4: `v` in use on A; B asks for it: a clear refusal naming A and its mount
/// IDs, nothing changed. After A detaches, B gets it with no fencing (blocklist and fence
/// log unchanged), and sees A's data.
#[test]
fn graceful_move_refuses_while_in_use_then_moves_without_fencing() {
    let Some(w) = World::up() else { return };
    let (a, b) = (w.node(1), w.node(2));
    let _da = a.daemon();
    let _db = b.daemon();
    let v = "v";
    let id = a.ok(&["create", v, "size=64M"])["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mp_a = PathBuf::from(a.ok(&["attach", v, "ctr-1", "rw"]).as_str().unwrap());
    a.ok(&["attach", v, "ctr-2", "ro"]);
    let sum = write_synced(&mp_a.join("data"), 2 << 20, 8);
    let bl_before = w.blocklist();
    let a_addr = addr(&local_mapping(&a, v)["client_addr"]);

    for args in [
        vec!["attach", v, "ctr-b", "rw"],
        vec!["attach", v, "ctr-b", "ro"],
        vec!["remove", v],
    ] {
        let t = Instant::now();
        let err = b.fails(&args);
        timing("s4", &format!("refusal-{}", args.join("-")), t.elapsed());
        eprintln!("B {args:?}: {err}");
        for want in ["node n1", "ctr-1", "ctr-2", "refused"] {
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }
    // Nothing changed: A still holds it and uses it; B has nothing.
    assert!(mounted(&mp_a));
    assert_eq!(sha256(&mp_a.join("data")), sum);
    let e = w.entry(&id).unwrap();
    assert_eq!(e.holders.len(), 1);
    assert_eq!(e.holders[0].node.as_str(), "n1");
    let ids: Vec<&String> = e.holders[0].mount_ids.iter().collect();
    assert_eq!(ids, vec!["ctr-1", "ctr-2"]);
    assert!(!b.state().volumes.contains_key(v));
    assert!(w.image_exists(&id));
    assert!(!w.blocklisted(&a_addr));

    // A detaches; B gets it without fencing anyone.
    a.ok(&["detach", v, "ctr-1"]);
    a.ok(&["detach", v, "ctr-2"]);
    let t = Instant::now();
    let r = b.ok(&["attach-report", v, "ctr-b", "rw"]);
    timing("s4", "b-attach-after-a-detached", t.elapsed());
    assert!(r["claim"]["fenced"].as_array().unwrap().is_empty(), "{r}");
    let mp_b = PathBuf::from(r["mountpoint"].as_str().unwrap());
    assert_eq!(sha256(&mp_b.join("data")), sum);
    assert_eq!(w.blocklist(), bl_before, "the move fenced something");
    assert!(w.fences_of(&id).is_empty());
    let e = w.entry(&id).unwrap();
    assert_eq!(e.holders.len(), 1);
    assert_eq!(e.holders[0].node.as_str(), "n2");
    b.ok(&["detach", v, "ctr-b"]);
    b.ok(&["remove", v]);
    assert!(!w.image_exists(&id));
}
