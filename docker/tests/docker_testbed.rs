//! Two Docker nodes on the multi-node test bed (`testkit::testbed`: a real Ceph cluster in
//! one network namespace, each node in its own): every node runs its own dockerd
//! (`scripts/dev-docker.sh`, started inside the node's namespace with `nsenter --net`) and
//! its own plugin process, which is also the node's node daemon. Nothing is shared between
//! the nodes but the cluster (and the host's filesystem, as on any test bed).
//!
//! Seed 003: a database-like writer (fsynced records with sequence numbers) runs on node A;
//! while it runs, node B asks for the volume (`docker volume rm`, `docker run -v`) and is
//! refused with an error naming node A and the container's mount ID, and nothing is fenced
//! (no blocklist entry, no fence record; the writer keeps writing). Then A's container is
//! stopped and destroyed, and a new container on B reads exactly the data A wrote (checksum,
//! last sequence number, no gap), without any fencing.
//!
//! Needs `CEPH_CONF` and `DOCKER_HOST` (the gates of every Docker test), root, `ip` and
//! `nsenter`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use rbd_core::{ConnectOptions, EntityAddr, Rados, Timeouts};
use rbd_driver::cluster::{ControlClient, NAMESPACE, NodeId, PingResult, Registry, RegistryEntry};
use serde_json::json;
use testkit::cmd::wait_every;
use testkit::testbed::{Daemon, Testbed};

const POOL: &str = "rbd";

/// One Docker node of the bed. Dropped in field order: dockerd (and its containers), the
/// spec file, the plugin.
struct DockerNode {
    dockerd: Dockerd,
    spec_file: SpecFile,
    plugin: Daemon,
    id: String,
    socket: PathBuf,
    mount_root: PathBuf,
}

impl DockerNode {
    /// Starts node `node`'s plugin (node id `id`) and dockerd, inside its namespace.
    fn start(bed: &Testbed, i: usize, id: &str, run_dir: &Path, sock_dir: &Path) -> DockerNode {
        let node = bed.node(i);
        let socket = sock_dir.join("rbd.sock");
        let config = sock_dir.join("plugin.toml");
        std::fs::write(&config, "").expect("write the plugin config");
        let var = |k: &str, v: &Path| format!("{k}={}", v.display());
        let args = vec![
            "env".to_string(),
            "-i".into(),
            format!("PATH={}", std::env::var("PATH").unwrap_or_default()),
            var("CEPH_CONF", bed.ceph_conf()),
            "CEPH_ID=admin".into(),
            var("RBD_PLUGIN_CONFIG", &config),
            var("RBD_PLUGIN_SOCKET", &socket),
            format!("RBD_NODE_ID={id}"),
            var("RBD_STATE_DIR", &node.state_dir()),
            var("RBD_MOUNT_ROOT", &node.mount_root()),
            var("RBD_RUN_DIR", run_dir),
            "RBD_BACKEND=userspace".into(),
            var("RBD_UMAP_BIN", &sibling_bin("rbd-umap")),
            "RBD_RECONCILE_INTERVAL=2".into(),
            "RBD_LOG=debug".into(),
            env!("CARGO_BIN_EXE_docker-volume-rbd").into(),
        ];
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut plugin = node.spawn("plugin", &refs);
        wait_ready(&mut plugin, &socket, Duration::from_secs(90));
        let spec_file = SpecFile::new(&testkit::unique("rbd"), &socket);
        let dockerd = Dockerd::start_in(Some(&node.netns()));
        DockerNode {
            dockerd,
            spec_file,
            plugin,
            id: id.to_string(),
            socket,
            mount_root: node.mount_root(),
        }
    }

    fn driver(&self) -> &str {
        &self.spec_file.name
    }

    fn log(&self) -> String {
        self.plugin.log()
    }

    /// `docker ARGS` on this node, which must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.dockerd.docker(args);
        assert!(
            out.status.success(),
            "node {}: docker {} failed: {}\nplugin log:\n{}",
            self.id,
            args.join(" "),
            text(&out.stderr),
            self.log()
        );
        text(&out.stdout)
    }

    /// `docker ARGS` on this node, which must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        self.dockerd.fails(args)
    }

    fn path(&self, vol: &str) -> String {
        let r = call(&self.socket, "VolumeDriver.Path", json!({"Name": vol}));
        assert_eq!(r.err(), "", "Path on {}: {}", self.id, r.err());
        r.json()["Mountpoint"].as_str().unwrap_or("").to_string()
    }

    /// Mounts under this node's mount root.
    fn mounts(&self) -> Vec<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
            .filter(|m| Path::new(m).starts_with(&self.mount_root))
            .collect()
    }
}

/// Waits until the plugin answers List without `Err` (connected, daemon started).
fn wait_ready(plugin: &mut Daemon, socket: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        assert!(
            plugin.is_running(),
            "the plugin exited early:\n{}",
            plugin.log()
        );
        if let Ok(r) = try_http(
            socket,
            "POST",
            "/VolumeDriver.List",
            "{}",
            Duration::from_secs(15),
        ) && r.status == 200
            && r.err().is_empty()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the plugin was not ready within {limit:?}:\n{}",
            plugin.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A connection from the cluster's own namespace, to look at the cluster's state.
struct Observer {
    rados: Rados,
}

impl Observer {
    fn new(bed: &Testbed) -> Observer {
        let conf = bed.ceph_conf().to_owned();
        let rados = bed.ceph().enter(|| {
            Rados::connect(
                &ConnectOptions::new()
                    .conf_file(&conf)
                    .timeouts(Timeouts::uniform(Duration::from_secs(20))),
            )
            .expect("observer connection")
        });
        Observer { rados }
    }

    fn ping(&self, node: &str) -> PingResult {
        ControlClient::new(
            &self.rados,
            POOL,
            NAMESPACE,
            NodeId::new("observer").unwrap(),
        )
        .unwrap()
        .ping(&NodeId::new(node).unwrap(), Duration::from_secs(2))
        .unwrap()
    }

    fn image_id(&self, name: &str) -> Option<String> {
        let io = self.rados.ioctx(POOL).unwrap();
        rbd_core::rbd::list(&io)
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.id)
    }

    fn registry(&self) -> Registry {
        Registry::open(&self.rados, POOL, NAMESPACE).unwrap()
    }

    fn entry(&self, image_id: &str) -> Option<RegistryEntry> {
        self.registry()
            .list()
            .unwrap()
            .entries
            .into_values()
            .find(|e| e.image_id == image_id)
    }

    fn blocklist(&self) -> Vec<EntityAddr> {
        self.rados
            .blocklist_ls()
            .unwrap()
            .into_iter()
            .map(|b| b.addr)
            .collect()
    }

    fn fences(&self, image_id: &str) -> usize {
        self.registry()
            .fences(true)
            .unwrap()
            .into_iter()
            .filter(|f| f.image.image_id == image_id)
            .count()
    }
}

/// Appends fsynced records `seq=NNNNNNNN ...` until `/data/stop` exists, then prints the
/// last sequence number and the log's checksum.
const WRITER: &str = "i=0; \
    while [ ! -e /data/stop ]; do \
      i=$((i+1)); \
      printf 'seq=%08d t=%s payload=0123456789abcdef0123456789abcdef\\n' $i $(date +%s) \
        | dd of=/data/db.log oflag=append conv=notrunc,fsync 2>/dev/null \
        || { echo \"write $i failed\"; exit 1; }; \
      usleep 20000; \
    done; \
    sync; echo last=$i; sha256sum /data/db.log";

/// Checks that the records are numbered 1..N without a gap, then prints what the writer
/// printed: the last sequence number and the checksum.
const READER: &str = "awk '{ if ($1 != sprintf(\"seq=%08d\", NR)) { print \"bad record \" NR \": \" $0; exit 1 } } \
    END { print \"last=\" NR }' /data/db.log && sha256sum /data/db.log";

fn last_seq(c: &Container) -> u64 {
    let line = c.exec("tail -n 1 /data/db.log");
    line.split_whitespace()
        .next()
        .and_then(|f| f.strip_prefix("seq="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// How often the waits poll (each check asks the cluster).
const POLL: Duration = Duration::from_millis(200);

#[test]
fn seed_003_writer_on_a_reader_on_b_and_b_is_refused_while_a_uses_it() {
    if testkit::ceph_conf().is_none() || testkit::docker_host().is_none() {
        return;
    }
    let Some(bed) = Testbed::up(2) else { return };
    // The mappers' run dirs stay short (their admin sockets live there); cleaned after the
    // plugins are gone, pass or fail.
    let run_dirs: Vec<PathBuf> = (1..=2)
        .map(|i| PathBuf::from(format!("/run/{}-dk-n{i}", bed.prefix())))
        .collect();
    let _leftovers = MapperLeftovers {
        run_dirs: run_dirs.clone(),
        mount_roots: (1..=2).map(|i| bed.node(i).mount_root()).collect(),
    };
    let socks = TempDir::new("bed-sock");
    let (sa, sb) = (socks.path().join("a"), socks.path().join("b"));
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::create_dir_all(&sb).unwrap();
    let a = DockerNode::start(&bed, 1, "bed-node-a", &run_dirs[0], &sa);
    let b = DockerNode::start(&bed, 2, "bed-node-b", &run_dirs[1], &sb);
    let obs = Observer::new(&bed);

    // Each plugin is its node's daemon: it answers pings for its node.
    for n in [&a, &b] {
        assert_eq!(obs.ping(&n.id), PingResult::Alive, "{}:\n{}", n.id, n.log());
    }

    let v = "db";
    a.ok(&["volume", "create", "-d", a.driver(), "-o", "size=256M", v]);
    let id = obs.image_id(v).expect("the volume's image");
    // Node B's plugin finds it through the cluster-wide index: its dockerd knows it now.
    b.ok(&["volume", "create", "-d", b.driver(), v]);
    let mnt = format!("{v}:/data");

    // The database-like writer on A.
    let w = Container::run(&a.dockerd, &["-v", &mnt], WRITER);
    assert!(
        wait_every(Duration::from_secs(60), POLL, || last_seq(&w) >= 20),
        "the writer on A does not write:\n{}",
        a.log()
    );
    let entry = obs.entry(&id).expect("A registered the volume");
    assert_eq!(entry.holders.len(), 1, "{entry:?}");
    assert_eq!(entry.holders[0].node.as_str(), a.id);
    let mount_ids: Vec<String> = entry.holders[0].mount_ids.iter().cloned().collect();
    assert!(!mount_ids.is_empty(), "{entry:?}");
    let blocklist = obs.blocklist();

    // B asks for it while A's container uses it: refused, naming A and the mount ID;
    // nothing is fenced.
    for args in [
        vec!["volume", "rm", v],
        vec![
            "run",
            "--rm",
            "--network",
            "none",
            "--pull",
            "never",
            "--volume-driver",
            b.driver(),
            "-v",
            &mnt,
            IMAGE,
            "true",
        ],
    ] {
        let seq = last_seq(&w);
        let t = Instant::now();
        let err = b.fails(&args);
        eprintln!(
            "node B: docker {} ({:?}): {}",
            args.join(" "),
            t.elapsed(),
            err.trim()
        );
        assert!(
            err.contains(&format!("node {}", a.id)),
            "docker {} on B: {err}",
            args.join(" ")
        );
        for m in &mount_ids {
            assert!(err.contains(m.as_str()), "{err} lacks mount ID {m}");
        }
        assert_eq!(obs.blocklist(), blocklist, "B's request fenced something");
        assert_eq!(obs.fences(&id), 0, "a fence was recorded");
        // A is untouched: it still holds the volume and its writer goes on.
        let e = obs.entry(&id).expect("A's registration");
        assert_eq!(e.holders.len(), 1);
        assert_eq!(e.holders[0].node.as_str(), a.id);
        assert!(
            wait_every(Duration::from_secs(30), POLL, || last_seq(&w) > seq),
            "A's writer stopped after B's request:\n{}",
            a.log()
        );
        assert_eq!(obs.image_id(v).as_deref(), Some(id.as_str()));
        assert_eq!(b.path(v), "", "B mounted it");
    }

    // A's container ends and is destroyed: A's plugin unmounts, unmaps and unregisters.
    w.exec("touch /data/stop");
    let code = a.ok(&["wait", &w.name]);
    let printed = a.ok(&["logs", &w.name]);
    assert_eq!(code.trim(), "0", "writer: {printed}");
    a.ok(&["rm", &w.name]);
    drop(w);
    let lines: Vec<&str> = printed.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("last=") && lines[1].len() > 64,
        "writer printed {printed:?}"
    );
    let last: u64 = lines[0]["last=".len()..].parse().unwrap();
    assert!(last >= 20, "{printed}");
    assert_eq!(a.path(v), "", "A still has it mounted");
    assert!(a.mounts().is_empty(), "A's mounts: {:?}", a.mounts());
    assert!(
        obs.entry(&id).is_none_or(|e| e.holders.is_empty()),
        "A is still registered: {:?}",
        obs.entry(&id)
    );

    // A new container on B reads exactly what A wrote, with no fencing.
    let t = Instant::now();
    let read = b.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--pull",
        "never",
        "--volume-driver",
        b.driver(),
        "-v",
        &mnt,
        IMAGE,
        "sh",
        "-c",
        READER,
    ]);
    eprintln!("node B read in {:?}: {}", t.elapsed(), read.trim());
    assert_eq!(read, printed, "B read other data than A wrote");
    assert_eq!(obs.blocklist(), blocklist, "the move fenced something");
    assert_eq!(obs.fences(&id), 0);
    assert_eq!(b.path(v), "");
    assert!(b.mounts().is_empty(), "B's mounts: {:?}", b.mounts());

    // B's view of the volume: the same image, created by node A.
    let r = call(&b.socket, "VolumeDriver.Get", json!({"Name": v}));
    assert_eq!(r.err(), "");
    assert_eq!(
        r.json()["Volume"]["Status"]["created_by"],
        json!(a.id),
        "{}",
        text(&r.body)
    );

    // Now nobody uses it: B removes it.
    b.ok(&["volume", "rm", v]);
    assert_eq!(obs.image_id(v), None, "the image is still there");
    assert_eq!(obs.blocklist(), blocklist);
}
