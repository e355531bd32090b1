//! Shared helpers for rbdctl's tests: run the built binary and Ceph's own CLI against the
//! dev cluster (every command under `timeout`), and clean up what a test created even when
//! it fails.
#![allow(dead_code)]

pub mod node;

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// Seconds any single command may take.
pub const TIMEOUT: &str = "120";

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    /// Stdout, raw.
    pub out: Vec<u8>,
    /// Stderr as text.
    pub err: String,
}

impl Run {
    /// The result of a command run by the test itself.
    pub fn from_output(o: Output) -> Run {
        Run::from(o)
    }

    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            out: o.stdout,
            err: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    /// Stdout as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
    /// Stdout parsed as JSON (panics with the text otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.out)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} / stderr {}", self.stdout(), self.err))
    }
    /// Asserts success and returns self.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code,
            0,
            "expected success; stdout {:?} stderr {:?}",
            self.stdout(),
            self.err
        );
        self
    }
    /// Asserts the exit code and returns self.
    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            code,
            "expected exit {code}; stdout {:?} stderr {:?}",
            self.stdout(),
            self.err
        );
        self
    }
}

/// The dev cluster, or `None` to skip (outside CI).
pub struct Env {
    /// Its ceph.conf.
    pub conf: PathBuf,
}

/// The cluster from `CEPH_CONF`; `None` (skip) outside CI when absent, panic under CI.
pub fn env() -> Option<Env> {
    Some(Env {
        conf: testkit::ceph_conf()?,
    })
}

impl Env {
    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.arg(TIMEOUT)
            .arg(tool)
            .arg("-c")
            .arg(&self.conf)
            .args(args);
        c
    }

    /// Runs rbdctl with `args` (stdin empty).
    pub fn rbdctl(&self, args: &[&str]) -> Run {
        let o = self
            .command(env!("CARGO_BIN_EXE_rbdctl"), args)
            .stdin(Stdio::null())
            .output()
            .expect("run rbdctl");
        Run::from(o)
    }

    /// Runs rbdctl with `input` on stdin.
    pub fn rbdctl_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self
            .command(env!("CARGO_BIN_EXE_rbdctl"), args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rbdctl");
        let mut stdin = child.stdin.take().expect("stdin");
        let data = input.to_vec();
        // Feed from a thread so a full stdout pipe cannot deadlock us.
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let o = child.wait_with_output().expect("wait rbdctl");
        feeder.join().expect("feeder");
        Run::from(o)
    }

    /// Runs one of Ceph's tools (`rbd`, `ceph`, `rados`).
    pub fn tool(&self, tool: &str, args: &[&str]) -> Run {
        let o = self
            .command(tool, args)
            .stdin(Stdio::null())
            .output()
            .expect("run ceph tool");
        Run::from(o)
    }

    /// Runs `rbd`, asserting success; returns stdout.
    #[track_caller]
    pub fn rbd(&self, args: &[&str]) -> String {
        let r = self.tool("rbd", args);
        assert_eq!(r.code, 0, "rbd {args:?} failed: {}", r.err);
        r.stdout()
    }

    /// Runs `rbd ... --format json`, parsed.
    #[track_caller]
    pub fn rbd_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let r = self.tool("rbd", &a);
        assert_eq!(r.code, 0, "rbd {a:?} failed: {}", r.err);
        r.json()
    }

    /// `rbd export IMAGE -`: the image's bytes as Ceph's CLI reads them.
    #[track_caller]
    pub fn rbd_export(&self, spec: &str) -> Vec<u8> {
        let r = self.tool("rbd", &["export", "--no-progress", spec, "-"]);
        assert_eq!(r.code, 0, "rbd export {spec}: {}", r.err);
        r.out
    }

    /// Image names in the pool, per `rbd ls`.
    pub fn rbd_ls(&self) -> Vec<String> {
        self.rbd_json(&["ls"])
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Starts `rbd ARGS` in the background (stdin kept open: `rbd watch` waits on it).
    pub fn spawn_rbd(&self, args: &[&str]) -> Background {
        let child = self
            .command("rbd", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rbd");
        Background(Some(child))
    }

    /// Random bytes from the kernel.
    pub fn random(len: usize) -> Vec<u8> {
        let mut f = std::fs::File::open("/dev/urandom").expect("urandom");
        let mut b = vec![0u8; len];
        std::io::Read::read_exact(&mut f, &mut b).expect("read urandom");
        b
    }
}

/// A background process we started, killed by its own pid on drop.
pub struct Background(Option<Child>);

impl Background {
    /// True while it runs.
    pub fn running(&mut self) -> bool {
        matches!(self.0.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
    /// Kills and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes, on drop, every image, trash entry, blocklist entry and file a test registered,
/// whatever state they are in (snapshots unprotected and purged, clones first).
pub struct Cleanup<'a> {
    env: &'a Env,
    images: RefCell<Vec<String>>,
    trash: RefCell<Vec<String>>,
    blocklist: RefCell<Vec<String>>,
    files: RefCell<Vec<PathBuf>>,
    namespaces: RefCell<Vec<String>>,
    pools: RefCell<Vec<String>>,
}

impl<'a> Cleanup<'a> {
    /// An empty guard.
    pub fn new(env: &'a Env) -> Self {
        Cleanup {
            env,
            images: RefCell::new(Vec::new()),
            trash: RefCell::new(Vec::new()),
            blocklist: RefCell::new(Vec::new()),
            files: RefCell::new(Vec::new()),
            namespaces: RefCell::new(Vec::new()),
            pools: RefCell::new(Vec::new()),
        }
    }

    /// Registers an image spec (`pool/[namespace/]image`) to remove on drop.
    pub fn spec(&self, spec: &str) -> String {
        self.images.borrow_mut().push(spec.to_owned());
        spec.to_owned()
    }

    /// Creates a unique RADOS namespace in pool `rbd` (removed on drop, after its images).
    pub fn namespace(&self) -> String {
        let ns = testkit::unique("rbdctl-ns");
        let r = self.env.tool(
            "rbd",
            &["namespace", "create", "--pool", "rbd", "--namespace", &ns],
        );
        assert_eq!(r.code, 0, "rbd namespace create: {}", r.err);
        self.namespaces.borrow_mut().push(ns.clone());
        ns
    }

    /// Creates a unique replicated pool initialised for RBD (deleted on drop, last).
    pub fn pool(&self) -> String {
        let p = testkit::unique("rbdctl-pool");
        let r = self.env.tool("ceph", &["osd", "pool", "create", &p, "8"]);
        assert_eq!(r.code, 0, "ceph osd pool create: {}", r.err);
        self.pools.borrow_mut().push(p.clone());
        let r = self.env.tool("rbd", &["pool", "init", &p]);
        assert_eq!(r.code, 0, "rbd pool init: {}", r.err);
        p
    }

    /// A unique image name, removed on drop (later names first: clones before parents).
    pub fn image(&self, prefix: &str) -> String {
        let n = testkit::unique(&format!("rbdctl-{prefix}"));
        self.images.borrow_mut().push(n.clone());
        n
    }

    /// Registers a trash entry (image id) to delete on drop.
    pub fn trash_id(&self, id: &str) {
        self.trash.borrow_mut().push(id.to_owned());
    }

    /// Registers a blocklist entry to remove on drop.
    pub fn blocklisted(&self, addr: &str) {
        self.blocklist.borrow_mut().push(addr.to_owned());
    }

    /// A unique temporary file path, removed on drop.
    pub fn file(&self, prefix: &str) -> PathBuf {
        let p = std::env::temp_dir().join(testkit::unique(&format!("rbdctl-{prefix}")));
        self.files.borrow_mut().push(p.clone());
        p
    }

    fn remove_image(&self, name: &str) {
        let e = self.env;
        let snaps = e.tool("rbd", &["snap", "ls", "--format", "json", name]);
        if snaps.code != 0 {
            // Gone already, or in the trash under its id.
            return;
        }
        if let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&snaps.out) {
            for s in list {
                if s["protected"] == "true" {
                    let spec = format!("{name}@{}", s["name"].as_str().unwrap_or_default());
                    e.tool("rbd", &["snap", "unprotect", &spec]);
                }
            }
        }
        e.tool("rbd", &["snap", "purge", "--no-progress", name]);
        // A client killed by the test leaves its watch behind until the OSD times it out
        // (30 s); librbd refuses rm meanwhile, so wait that out.
        for _ in 0..45 {
            let r = e.tool("rbd", &["rm", "--no-progress", name]);
            if r.code == 0 || !r.err.contains("busy") && !r.err.contains("watchers") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for name in self.images.borrow().iter().rev() {
            self.remove_image(name);
        }
        // Trash entries registered by id, and any of our names that ended up there.
        let names: Vec<String> = self.images.borrow().clone();
        let mut ids: Vec<String> = self.trash.borrow().clone();
        let r = self.env.tool("rbd", &["trash", "ls", "--format", "json"]);
        if let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&r.out) {
            for t in list {
                if names.iter().any(|n| t["name"] == n.as_str())
                    && let Some(id) = t["id"].as_str()
                {
                    ids.push(id.to_owned());
                }
            }
        }
        for id in ids {
            self.env
                .tool("rbd", &["trash", "rm", "--force", "--no-progress", &id]);
        }
        for a in self.blocklist.borrow().iter() {
            self.env.tool("ceph", &["osd", "blocklist", "rm", a]);
        }
        for f in self.files.borrow().iter() {
            let _ = std::fs::remove_file(f);
        }
        for ns in self.namespaces.borrow().iter() {
            self.env.tool(
                "rbd",
                &["namespace", "rm", "--pool", "rbd", "--namespace", ns],
            );
        }
        for p in self.pools.borrow().iter() {
            self.env.tool(
                "ceph",
                &["osd", "pool", "rm", p, p, "--yes-i-really-really-mean-it"],
            );
        }
    }
}

/// Writes `data` to a new file at `path`.
pub fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("write test file");
}
