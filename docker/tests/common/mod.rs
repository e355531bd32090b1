//! Shared helpers for the plugin's end-to-end tests: the plugin process, an HTTP client over
//! its socket, the Ceph CLI and plugin discovery files, with the private dockerd and the
//! containers of `testkit::docker`. Everything started here is stopped by its own pid in
//! `Drop`, pass or fail.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

// The shared test kit's parts these tests use (each test binary uses a different subset).
#[allow(unused_imports)]
pub use testkit::TempDir;
#[allow(unused_imports)]
pub use testkit::cmd::{check, run, text, wait_until};
#[allow(unused_imports)]
pub use testkit::docker::{Container, Dockerd, IMAGE, docker_ok};

// ---------------------------------------------------------------------------------------
// The Ceph CLI against the test cluster.

pub struct Ceph {
    pub conf: PathBuf,
}

impl Ceph {
    pub fn new(conf: &Path) -> Self {
        Ceph {
            conf: conf.to_path_buf(),
        }
    }
    pub fn rbd(&self, args: &[&str]) -> Output {
        run(
            Command::new("rbd")
                .arg("-c")
                .arg(&self.conf)
                .args(args)
                .env_remove("CEPH_ARGS"),
            Duration::from_secs(60),
        )
    }
    /// Image names in `pool` (default namespace).
    pub fn images(&self, pool: &str) -> Vec<String> {
        let out = self.rbd(&["ls", "-p", pool, "--format", "json"]);
        let s = check("rbd ls", &out);
        serde_json::from_str::<Vec<String>>(s.trim()).unwrap_or_default()
    }
    pub fn image_exists(&self, pool: &str, name: &str) -> bool {
        self.images(pool).iter().any(|n| n == name)
    }
    /// `rbd info --format json`.
    pub fn info(&self, spec: &str) -> Value {
        let out = self.rbd(&["info", spec, "--format", "json"]);
        serde_json::from_str(&check("rbd info", &out)).expect("rbd info json")
    }
    /// The `ceph` tool against the test cluster.
    pub fn ceph(&self, args: &[&str]) -> Output {
        run(
            Command::new("ceph")
                .arg("-c")
                .arg(&self.conf)
                .args(args)
                .env_remove("CEPH_ARGS"),
            Duration::from_secs(60),
        )
    }
}

/// The dev cluster's conf and a scratch dir, when the cluster and root are there (see
/// testkit: a failure under CI=true, a skip otherwise).
pub fn setup(prefix: &str) -> Option<(PathBuf, TempDir)> {
    let conf = testkit::ceph_conf()?;
    if !testkit::require_root() {
        return None;
    }
    Some((conf, TempDir::new(prefix)))
}

// ---------------------------------------------------------------------------------------
// Processes, from /proc.

/// The children of process `pid` (of all its threads, `/proc/PID/task/*/children`).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    out
}

/// Whether process `pid` is a zombie (exited, not reaped).
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

// ---------------------------------------------------------------------------------------
// HTTP over the plugin socket, with hyper's client.

/// One HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", text(&self.body)))
    }
    /// The `Err` field ("" when absent).
    pub fn err(&self) -> String {
        self.json()
            .get("Err")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    }
}

/// The content type of every answer of the plugin protocol.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// Sends `method path` with `body` over the unix socket at `sock` (deadline `limit`).
/// Every answer, whatever the endpoint or status, must carry the protocol's content type:
/// this checks it for every call of every test.
pub fn http(sock: &Path, method: &str, path: &str, body: &str, limit: Duration) -> Resp {
    let r = try_http(sock, method, path, body, limit).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.content_type,
        CONTENT_TYPE,
        "{method} {path} answered {} with content type {:?}: {}",
        r.status,
        r.content_type,
        text(&r.body)
    );
    r
}

/// [`http`], with failures returned instead of panicking.
pub fn try_http(
    sock: &Path,
    method: &str,
    path: &str,
    body: &str,
    limit: Duration,
) -> Result<Resp, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (sock, method, path, body) = (
        sock.to_path_buf(),
        method.to_string(),
        path.to_string(),
        body.to_string(),
    );
    rt.block_on(async move {
        let fut = async {
            let stream = tokio::net::UnixStream::connect(&sock)
                .await
                .map_err(|e| format!("connect {}: {e}", sock.display()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("http handshake: {e}"))?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method.as_str())
                .uri(format!("http://plugin{path}"))
                .header("Host", "plugin")
                .header("Accept", "application/vnd.docker.plugins.v1.2+json")
                .body(Full::new(Bytes::from(body)))
                .expect("request");
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("{method} {path}: {e}"))?;
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{method} {path}: reading the body: {e}"))?
                .to_bytes()
                .to_vec();
            Ok(Resp {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or_else(|_| Err(format!("{method} {path} got no answer within {limit:?}")))
    })
}

/// `POST /<method>` with a JSON body (100 s deadline: above the plugin's own).
pub fn call(sock: &Path, method: &str, body: Value) -> Resp {
    http(
        sock,
        "POST",
        &format!("/{method}"),
        &body.to_string(),
        Duration::from_secs(100),
    )
}

// ---------------------------------------------------------------------------------------
// The plugin process.

/// Path of a binary next to the plugin binary (same target dir), e.g. `rbd-umap`.
pub fn sibling_bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_docker-volume-rbd"))
        .parent()
        .expect("bin dir")
        .join(name)
}

/// Settings of one plugin instance under test.
pub struct PluginSpec {
    pub ceph_conf: PathBuf,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub node_id: String,
    pub config: String,
    pub env: BTreeMap<String, String>,
}

impl PluginSpec {
    /// Everything under `dir`; the socket at `dir/rbd.sock`.
    pub fn new(ceph_conf: &Path, dir: &Path) -> Self {
        PluginSpec {
            ceph_conf: ceph_conf.to_path_buf(),
            dir: dir.to_path_buf(),
            socket: dir.join("rbd.sock"),
            node_id: testkit::unique("node"),
            config: String::new(),
            env: BTreeMap::new(),
        }
    }

    pub fn command(&self) -> Command {
        let cfg = self.dir.join("plugin.toml");
        std::fs::write(&cfg, &self.config).expect("write plugin config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_docker-volume-rbd"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CEPH_CONF", &self.ceph_conf)
            .env("CEPH_ID", "admin")
            .env("RBD_PLUGIN_CONFIG", &cfg)
            .env("RBD_PLUGIN_SOCKET", &self.socket)
            .env("RBD_NODE_ID", &self.node_id)
            .env("RBD_STATE_DIR", self.dir.join("state"))
            .env("RBD_MOUNT_ROOT", self.dir.join("mnt"))
            .env("RBD_RUN_DIR", self.dir.join("run"))
            .env("RBD_BACKEND", "userspace")
            .env("RBD_UMAP_BIN", sibling_bin("rbd-umap"))
            .env("RBD_LOG", "debug");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// A running plugin, stopped with SIGTERM (then SIGKILL) in `Drop`.
pub struct Plugin {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Plugin {
    /// Starts the plugin and waits until it answers `/Plugin.Activate` and is connected to
    /// the cluster (a List succeeds).
    pub fn start(spec: &PluginSpec) -> Plugin {
        let p = Self::spawn(spec);
        p.wait_ready(Duration::from_secs(60));
        p
    }

    /// Starts the plugin without waiting.
    pub fn spawn(spec: &PluginSpec) -> Plugin {
        let log = spec.dir.join("plugin.log");
        let f = std::fs::File::create(&log).expect("plugin log");
        let child = spec
            .command()
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup log"))
            .stderr(f)
            .spawn()
            .expect("start docker-volume-rbd");
        Plugin {
            child: Some(child),
            socket: spec.socket.clone(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the socket to answer and the driver to be connected.
    pub fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(c) = &self.child {
                // A plugin that exited will never answer.
                let pid = c.id();
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    panic!("plugin exited early:\n{}", self.log_text());
                }
            }
            if let Ok(r) = try_http(
                &self.socket,
                "POST",
                "/VolumeDriver.List",
                "{}",
                Duration::from_secs(15),
            ) && r.status == 200
                && r.err().is_empty()
            {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "plugin not ready within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and waits for the exit status (SIGKILL after `limit`).
    pub fn stop(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of our own child, which we have not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(20));
    }
}

/// Mode bits of a path (without the file type).
pub fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

/// A volume removed through the plugin (or, failing that, with `rbd rm`) in `Drop`.
pub struct VolumeGuard {
    pub socket: PathBuf,
    pub ceph: PathBuf,
    pub pool: String,
    pub name: String,
}

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        if self.socket.exists() {
            let _ = std::panic::catch_unwind(|| {
                call(
                    &self.socket,
                    "VolumeDriver.Remove",
                    serde_json::json!({"Name": self.name}),
                )
            });
        }
        let ceph = Ceph::new(&self.ceph);
        if ceph.image_exists(&self.pool, &self.name) {
            let _ = ceph.rbd(&["rm", &format!("{}/{}", self.pool, self.name)]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Docker (the daemon and containers: `testkit::docker`).

/// `/etc/docker/plugins/NAME.spec` pointing at a socket, removed in `Drop`. dockerd finds
/// legacy plugins there (and at /run/docker/plugins/NAME.sock) whatever its own directories.
pub struct SpecFile {
    pub name: String,
    pub path: PathBuf,
}

impl SpecFile {
    pub fn new(name: &str, socket: &Path) -> SpecFile {
        let dir = Path::new("/etc/docker/plugins");
        std::fs::create_dir_all(dir).expect("create /etc/docker/plugins");
        let path = dir.join(format!("{name}.spec"));
        std::fs::write(&path, format!("unix://{}\n", socket.display())).expect("write spec");
        SpecFile {
            name: name.to_string(),
            path,
        }
    }
}

impl Drop for SpecFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A plugin, a dockerd of its own that finds it under a unique name, and the cluster.
/// Dropped in field order: the spec file, dockerd, the plugin, the temp dir.
pub struct DockerEnv {
    pub spec_file: SpecFile,
    pub dockerd: Dockerd,
    pub plugin: Plugin,
    pub spec: PluginSpec,
    pub dir: TempDir,
    pub conf: PathBuf,
}

impl DockerEnv {
    /// Needs `CEPH_CONF`, `DOCKER_HOST` (the dev dockerd gates these tests) and root.
    pub fn setup(prefix: &str) -> Option<DockerEnv> {
        Self::setup_with(prefix, |_| {})
    }

    /// [`DockerEnv::setup`], with the plugin's settings changed by `f` before it starts.
    pub fn setup_with(prefix: &str, f: impl FnOnce(&mut PluginSpec)) -> Option<DockerEnv> {
        let conf = testkit::ceph_conf()?;
        testkit::docker_host()?;
        if !testkit::require_root() {
            return None;
        }
        let dir = TempDir::new(prefix);
        let mut spec = PluginSpec::new(&conf, dir.path());
        f(&mut spec);
        let plugin = Plugin::start(&spec);
        let spec_file = SpecFile::new(&testkit::unique("rbd"), &plugin.socket);
        let dockerd = Dockerd::start();
        Some(DockerEnv {
            spec_file,
            dockerd,
            plugin,
            spec,
            dir,
            conf,
        })
    }

    /// The driver name for `-d` / `--volume-driver`.
    pub fn driver(&self) -> &str {
        &self.spec_file.name
    }

    /// A guard removing volume `name` (through the plugin, else `rbd rm`) when dropped.
    pub fn guard(&self, name: &str) -> VolumeGuard {
        VolumeGuard {
            socket: self.plugin.socket.clone(),
            ceph: self.conf.clone(),
            pool: "rbd".into(),
            name: name.to_string(),
        }
    }

    /// Mount points under this test's directory (the plugin's mount root and FUSE dirs).
    pub fn mounts(&self) -> Vec<String> {
        let base = self.dir.path().display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
            .filter(|m| m.starts_with(&base))
            .collect()
    }

    /// Loop devices whose backing file is under this test's directory.
    pub fn loop_devices(&self) -> Vec<String> {
        let base = self.dir.path().display().to_string();
        let out = run(
            Command::new("losetup").args(["-l", "-n", "-O", "NAME,BACK-FILE"]),
            Duration::from_secs(30),
        );
        text(&out.stdout)
            .lines()
            .filter(|l| l.contains(&base))
            .map(String::from)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Leftovers of userspace mappers.

/// Mapper run directories whose leftovers are cleaned in `Drop`, pass or fail: mapper
/// processes still recorded there are killed (by the pid in their record), mounts under the
/// given roots are lazily unmounted (deepest first), loop devices backed by files under
/// the run directories are detached, and the run directories removed.
pub struct MapperLeftovers {
    pub run_dirs: Vec<PathBuf>,
    pub mount_roots: Vec<PathBuf>,
}

impl Drop for MapperLeftovers {
    fn drop(&mut self) {
        use rbd_driver::mapper::MapperConfig;
        use rbd_driver::mapper::loopdev;
        use rbd_driver::mapper::userspace::UserspaceMapper;
        for dir in &self.run_dirs {
            let m = UserspaceMapper::new(&MapperConfig {
                run_dir: dir.clone(),
                ..MapperConfig::default()
            });
            for e in m.entries().unwrap_or_default() {
                let pid = e.record.pid as i32;
                if pid > 0 && Path::new(&format!("/proc/{pid}")).exists() {
                    // SAFETY: kill(2) on the pid a mapper started by this test recorded.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let roots: Vec<&PathBuf> = self.run_dirs.iter().chain(&self.mount_roots).collect();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
            .filter(|m| roots.iter().any(|r| Path::new(m).starts_with(r)))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = run(
                Command::new("umount").args(["-l", &m]),
                Duration::from_secs(30),
            );
        }
        if let Ok(loops) = loopdev::list() {
            for l in loops
                .iter()
                .filter(|l| self.run_dirs.iter().any(|d| l.backing_file.starts_with(d)))
            {
                let _ = loopdev::detach(l.number);
            }
        }
        for dir in &self.run_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
