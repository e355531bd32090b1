//! The multi-node test bed for tests: [`Testbed::up`] runs `scripts/testbed.sh up N` in a
//! directory of its own (so tests can run beds in parallel), and `Drop` tears everything
//! down (daemons, namespaces, links, mounts), also when the test panics.
//!
//! Each bed has one network namespace running a real Ceph cluster and N node namespaces
//! joined by a bridge in a namespace of its own; nothing touches the host's network.
//! Programs run in a node with [`Node::command`] / [`Node::exec`] / [`Node::spawn`]
//! (`nsenter --net`, so mounts stay visible to the test), and in-process code runs there
//! with [`Node::enter`] (a thread that joined the node's network namespace: a Ceph client
//! connected from it keeps the node's address and is cut with the node).
//!
//! ```no_run
//! use std::time::Duration;
//! let Some(bed) = testkit::testbed::Testbed::up(2) else { return };
//! let out = bed.node(1).exec(&["rbd", "ls"], Duration::from_secs(30));
//! assert!(out.status.success());
//! bed.cut(1);
//! bed.heal(1);
//! // dropped: everything is torn down
//! ```

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long `up` may take before it counts as failed.
const UP_TIMEOUT_SECS: u64 = 180;

/// A running test bed; torn down on drop.
#[derive(Debug)]
pub struct Testbed {
    dir: PathBuf,
    script: PathBuf,
    prefix: String,
    nodes: usize,
    ceph_ip: String,
    ceph_conf: PathBuf,
    torn_down: bool,
}

fn tool_missing(tool: &str) -> bool {
    !std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn env_value(out: &str, key: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("export {key}=")))
        .map(str::to_owned)
}

impl Testbed {
    /// Brings up a fresh bed with `n` nodes (`n1`..`nN`) under
    /// `<repo>/.testbed/<unique>`. Returns `None` (the test is skipped, with a printed
    /// reason) when not root or when `ip`, `nsenter` or `ceph-mon` are missing; under
    /// `CI=true` that is a failure instead. A bed that does not come up is a failure.
    pub fn up(n: usize) -> Option<Testbed> {
        if !crate::require_root() {
            return None;
        }
        for tool in ["ip", "nsenter", "ceph-mon"] {
            if tool_missing(tool) {
                return crate::missing(
                    &format!("the `{tool}` tool"),
                    "run scripts/install-deps.sh",
                );
            }
        }
        let root = crate::workspace_root();
        let dir = root.join(".testbed").join(crate::unique("bed"));
        let script = root.join("scripts/testbed.sh");
        let mut bed = Testbed {
            dir: dir.clone(),
            script,
            prefix: String::new(),
            nodes: n,
            ceph_ip: String::new(),
            ceph_conf: PathBuf::new(),
            torn_down: false,
        };
        let t0 = Instant::now();
        let out = bed.run_script(&["up", &n.to_string()], UP_TIMEOUT_SECS);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            drop(bed); // tears down what was created
            panic!("testbed up {n} failed ({}):\n{err}\n{stdout}", out.status);
        }
        let get = |k: &str| {
            env_value(&stdout, k).unwrap_or_else(|| panic!("testbed up printed no {k}:\n{stdout}"))
        };
        bed.prefix = get("TESTBED_PREFIX");
        bed.ceph_ip = get("TESTBED_CEPH_IP");
        bed.ceph_conf = PathBuf::from(get("TESTBED_CEPH_CONF"));
        eprintln!(
            "testbed: {n} nodes up in {:?} at {} (prefix {})",
            t0.elapsed(),
            dir.display(),
            bed.prefix
        );
        Some(bed)
    }

    fn run_script(&self, args: &[&str], timeout_secs: u64) -> Output {
        Command::new("timeout")
            .arg(timeout_secs.to_string())
            .arg(&self.script)
            .args(args)
            .env("TESTBED_DIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/testbed.sh")
    }

    /// The bed's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster's ceph.conf (its mon address is inside the bed: use it from nodes).
    pub fn ceph_conf(&self) -> &Path {
        &self.ceph_conf
    }

    /// The cluster's address.
    pub fn ceph_ip(&self) -> &str {
        &self.ceph_ip
    }

    /// The namespace name prefix (`tbXXXXXXXX`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Node `i` (1-based: `node(1)` is `n1`).
    ///
    /// # Panics
    /// If `i` is 0 or more than [`Testbed::nodes`].
    pub fn node(&self, i: usize) -> Node<'_> {
        assert!(
            (1..=self.nodes).contains(&i),
            "no node {i}: the bed has nodes 1..={}",
            self.nodes
        );
        Node {
            bed: self,
            name: format!("n{i}"),
        }
    }

    /// The cluster's own namespace (for observers that must not be cut with a node).
    pub fn ceph(&self) -> Node<'_> {
        Node {
            bed: self,
            name: "ceph".into(),
        }
    }

    /// Partitions node `i` (its link goes down): nothing reaches it or leaves it.
    pub fn cut(&self, i: usize) {
        let n = self.node(i).name;
        let out = self.run_script(&["cut", &n], 30);
        assert!(
            out.status.success(),
            "cut {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Restores node `i`'s link.
    pub fn heal(&self, i: usize) {
        let n = self.node(i).name;
        let out = self.run_script(&["heal", &n], 30);
        assert!(
            out.status.success(),
            "heal {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `testbed.sh status` output.
    pub fn status(&self) -> String {
        let out = self.run_script(&["status"], 60);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The network namespaces of this bed that exist now.
    pub fn namespaces(&self) -> Vec<String> {
        namespaces_with_prefix(&self.prefix)
    }

    /// Tears the bed down now, reporting failure (Drop does the same, ignoring errors).
    pub fn down(mut self) -> Result<(), String> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), String> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let out = self.run_script(&["down"], 120);
        let _ = std::fs::remove_dir_all(&self.dir);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "testbed down failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("{e}");
        }
    }
}

/// The names in `/run/netns` starting with `prefix-`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !prefix.is_empty() && n.starts_with(&format!("{prefix}-")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One namespace of a bed: a node (`n1`...) or the cluster (`ceph`).
#[derive(Debug, Clone)]
pub struct Node<'a> {
    bed: &'a Testbed,
    name: String,
}

impl Node<'_> {
    /// `n1`, `n2`, ... or `ceph`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address on the bed's network.
    pub fn addr(&self) -> String {
        let subnet = self
            .bed
            .ceph_ip
            .rsplit_once('.')
            .map_or("10.77.0", |(s, _)| s)
            .to_owned();
        match self.name.strip_prefix('n') {
            Some(i) => format!("{subnet}.{}", 10 + i.parse::<u32>().unwrap_or(0)),
            None => self.bed.ceph_ip.clone(),
        }
    }

    /// Its network namespace file.
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}-{}", self.bed.prefix, self.name))
    }

    /// Its directory (`DIR/nodes/nI`), with `state/`, `mounts/` and `run/`.
    pub fn dir(&self) -> PathBuf {
        self.bed.dir.join("nodes").join(&self.name)
    }

    /// Its state dir.
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// Its mount root.
    pub fn mount_root(&self) -> PathBuf {
        self.dir().join("mounts")
    }

    /// Its run dir (pid files of its daemons: `down` stops them).
    pub fn run_dir(&self) -> PathBuf {
        self.dir().join("run")
    }

    /// A command that runs `program` inside this namespace (`nsenter --net=...`), with
    /// `CEPH_CONF` set to the bed's cluster and `TESTBED_NODE`/`TESTBED_NODE_DIR` set.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns().display()))
            .arg("--")
            .arg("env")
            .arg(format!("CEPH_CONF={}", self.bed.ceph_conf.display()))
            .arg(format!("TESTBED_NODE={}", self.name))
            .arg(format!("TESTBED_NODE_DIR={}", self.dir().display()))
            .arg(program);
        c
    }

    /// Runs `args` inside this namespace with a timeout and returns its output.
    pub fn exec(&self, args: &[&str], timeout: Duration) -> Output {
        let mut c = self.command("timeout");
        c.arg(timeout.as_secs().max(1).to_string())
            .args(args)
            .stdin(Stdio::null());
        c.output().expect("run a command in a test bed namespace")
    }

    /// Starts a long-running program inside this namespace. Its stdout and stderr go to
    /// `run/NAME.log`, its pid to `run/NAME.pid` (so `testbed.sh down` stops it too); the
    /// returned guard stops it on drop.
    pub fn spawn(&self, name: &str, args: &[&str]) -> Daemon {
        let run = self.run_dir();
        std::fs::create_dir_all(&run).expect("create the node's run dir");
        let log = run.join(format!("{name}.log"));
        let out = File::create(&log).expect("create the daemon log");
        let err = out.try_clone().expect("dup the daemon log");
        let (prog, rest) = args.split_first().expect("a program to spawn");
        let child = self
            .command(prog)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn a daemon in a test bed namespace");
        let pidfile = run.join(format!("{name}.pid"));
        std::fs::write(&pidfile, child.id().to_string()).expect("write the pid file");
        Daemon {
            child: Some(child),
            pidfile,
            log,
            name: format!("{}:{name}", self.name),
        }
    }

    /// Runs `f` on a thread that joined this namespace's network namespace (`setns`), and
    /// returns its result. Sockets created there (a Ceph client connected in `f`, and the
    /// messenger threads it starts) belong to the node: same address, cut with the node.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.netns();
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns =
                    File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

/// A program running in a bed namespace; stopped (TERM, then KILL) on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    pidfile: PathBuf,
    log: PathBuf,
    name: String,
}

impl Daemon {
    /// Its pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its output contains `needle` (true) or `timeout` passed or it exited
    /// (false).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline || !self.is_running() {
                return self.log().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while it runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills it with SIGKILL (a crash), and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.pidfile);
    }

    /// Stops it (SIGTERM, then SIGKILL after 5 s) and returns its output.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.log()
    }

    fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(c.try_wait(), Ok(None)) {
            eprintln!("{}: did not stop on SIGTERM; killing", self.name);
            let _ = c.kill();
        }
        let _ = c.wait();
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}
