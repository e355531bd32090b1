//! Measures the Docker volume plugin on the dev cluster and prints markdown for
//! `BENCHMARKS.md`:
//!
//! - `list`: `VolumeDriver.List` latency over N volumes (default 1000; target <= 200 ms),
//!   and the plugin's idle RSS (target <= 30 MiB) before and after (after: once its volume
//!   worker has exited; the RSS of both right after the burst is printed too).
//! - `lifecycle`: `docker volume create`, first `docker run -v`, `docker rm`,
//!   `docker volume rm` through the plugin, against the same sequence done by hand with the
//!   Ceph CLI (`rbd create`, rbd-fuse, losetup, mkfs.ext4, mount, `docker run` with a bind
//!   mount, then cleanup), as a ratio. Needs a private dockerd (started here through
//!   scripts/dev-docker.sh) and the userspace mapper.
//!
//! ```sh
//! eval "$(scripts/dev-cluster.sh up)"
//! cargo build --release -p docker-volume-rbd -p rbd-driver --bins
//! cargo run --release -p benches --bin compare_docker_plugin -- list [N]
//! cargo run --release -p benches --bin compare_docker_plugin -- lifecycle [ROUNDS]
//! ```
//!
//! Everything it starts (plugin, dockerd, rbd-fuse, loop devices, mounts, volumes) is
//! stopped or removed before it exits, also on failure.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

type Res<T> = Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("list");
    let n: Option<usize> = args.get(1).and_then(|s| s.parse().ok());
    let r = match what {
        "list" => bench_list(n.unwrap_or(1000)),
        "lifecycle" => bench_lifecycle(n.unwrap_or(5)),
        other => Err(format!("unknown benchmark {other:?} (list | lifecycle)")),
    };
    if let Err(e) = r {
        eprintln!("compare_docker_plugin: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------

fn ceph_conf() -> Res<PathBuf> {
    let c = std::env::var_os("CEPH_CONF")
        .map(PathBuf::from)
        .ok_or("CEPH_CONF is not set (eval \"$(scripts/dev-cluster.sh up)\")")?;
    if !c.is_file() {
        return Err(format!("CEPH_CONF={} does not exist", c.display()));
    }
    Ok(c)
}

fn release_bin(name: &str) -> Res<PathBuf> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = me.parent().ok_or("no exe dir")?.join(name);
    if !p.is_file() {
        return Err(format!(
            "{} missing: cargo build --release -p docker-volume-rbd -p rbd-driver --bins",
            p.display()
        ));
    }
    Ok(p)
}

/// Runs a command with a deadline.
fn run(cmd: &mut Command, limit: Duration) -> Res<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_t = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        b
    });
    let err_t = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish within {limit:?}"));
        }
        thread::sleep(Duration::from_millis(2));
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

fn ok(cmd: &mut Command) -> Res<String> {
    let what = format!("{cmd:?}");
    let o = run(cmd, Duration::from_secs(300))?;
    if !o.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// One plugin call over the socket (HTTP/1.1, connection closed after the answer).
fn call(sock: &Path, method: &str, body: &str) -> Res<serde_json::Value> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    write!(
        s,
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&resp);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or("no HTTP body")?;
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("{method}: {e}: {body}"))?;
    if let Some(e) = v.get("Err").and_then(|e| e.as_str())
        && !e.is_empty()
    {
        return Err(format!("{method}: {e}"));
    }
    Ok(v)
}

fn rss_kib(pid: u32) -> Res<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmRSS".to_string())
}

/// The plugin's running volume workers: its children started with `--volume-worker`.
fn workers(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in list
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let cmd = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            if cmd.split(|b| *b == 0).any(|a| a == b"--volume-worker") && rss_kib(c).is_ok() {
                out.push(c);
            }
        }
    }
    out
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}{:x}", std::process::id(), n & 0xff_ffff)
}

/// The plugin, stopped with SIGTERM in `Drop`.
struct Plugin {
    child: Child,
    sock: PathBuf,
    dir: PathBuf,
}

impl Plugin {
    fn start(conf: &Path, dir: &Path) -> Res<Plugin> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let sock = dir.join("rbd.sock");
        let log = std::fs::File::create(dir.join("plugin.log")).map_err(|e| e.to_string())?;
        let child = Command::new(release_bin("docker-volume-rbd")?)
            .env("CEPH_CONF", conf)
            .env("RBD_PLUGIN_CONFIG", "")
            .env("RBD_PLUGIN_SOCKET", &sock)
            .env("RBD_STATE_DIR", dir.join("state"))
            .env("RBD_MOUNT_ROOT", dir.join("mnt"))
            .env("RBD_RUN_DIR", dir.join("run"))
            .env("RBD_BACKEND", "userspace")
            .env("RBD_UMAP_BIN", release_bin("rbd-umap").unwrap_or_default())
            .env("RBD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        let p = Plugin {
            child,
            sock,
            dir: dir.to_path_buf(),
        };
        let t0 = Instant::now();
        loop {
            if call(&p.sock, "VolumeDriver.List", "{}").is_ok() {
                return Ok(p);
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return Err("plugin did not become ready".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

// ---------------------------------------------------------------------------------------

fn bench_list(n: usize) -> Res<()> {
    let conf = ceph_conf()?;
    let dir = PathBuf::from("/tmp").join(unique("bench-list"));
    let plugin = Plugin::start(&conf, &dir)?;
    let pid = plugin.child.id();
    thread::sleep(Duration::from_secs(3));
    let rss_start = rss_kib(pid)?;

    let prefix = unique("bl");
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:05}")).collect();
    eprintln!("creating {n} volumes ...");
    let t0 = Instant::now();
    let created = create_all(&plugin.sock, &names, 4);
    let create_s = t0.elapsed().as_secs_f64();
    let mut extra: Vec<String> = Vec::new();
    let result = (|| -> Res<()> {
        created?;
        // Warm up, then measure.
        for _ in 0..3 {
            call(&plugin.sock, "VolumeDriver.List", "{}")?;
        }
        let mut ms = Vec::new();
        let mut count = 0;
        for _ in 0..30 {
            let t = Instant::now();
            let v = call(&plugin.sock, "VolumeDriver.List", "{}")?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            count = v["Volumes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|v| v["Name"].as_str().is_some_and(|s| s.starts_with(&prefix)))
                        .count()
                })
                .unwrap_or(0);
        }
        if count != n {
            return Err(format!("List returned {count} of our {n} volumes"));
        }
        // Right after the burst: the plugin, and the volume worker that ran the Creates.
        let rss_burst = rss_kib(pid)?;
        let worker_burst: u64 = workers(pid).iter().filter_map(|w| rss_kib(*w).ok()).sum();
        // Idle: the worker exits after worker-idle (20 s), the plugin's blocking threads
        // after 10 s.
        let t_idle = Instant::now();
        while !workers(pid).is_empty() {
            if t_idle.elapsed() > Duration::from_secs(90) {
                return Err(format!("the volume worker still runs: {:?}", workers(pid)));
            }
            thread::sleep(Duration::from_millis(200));
        }
        let worker_gone = t_idle.elapsed().as_secs_f64();
        thread::sleep(Duration::from_secs(12).saturating_sub(t_idle.elapsed()));
        thread::sleep(Duration::from_secs(2));
        let rss_end = rss_kib(pid)?;
        // A Create with no worker running (it starts one), then one with it running.
        let mut one = |suffix: &str| -> Res<f64> {
            let name = format!("{prefix}-{suffix}");
            let t = Instant::now();
            let r = call(
                &plugin.sock,
                "VolumeDriver.Create",
                &format!(r#"{{"Name":"{name}","Opts":{{"size":"16M"}}}}"#),
            );
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            extra.push(name);
            r.map(|_| ms)
        };
        let cold = one("cold")?;
        let warm = one("warm")?;
        let med = median(&mut ms);
        let p95 = pct(&mut ms, 0.95);
        println!("| measurement | value | target |");
        println!("|---|---|---|");
        println!("| `VolumeDriver.List`, {n} volumes, median of 30 | {med:.1} ms | <= 200 ms |");
        println!("| `VolumeDriver.List`, {n} volumes, p95 | {p95:.1} ms | |");
        println!(
            "| plugin idle RSS, connected, no volumes touched | {:.1} MiB | <= 30 MiB |",
            rss_start as f64 / 1024.0
        );
        println!(
            "| right after creating {n} volumes and 33 Lists: plugin / its volume worker | {:.1} MiB / {:.1} MiB | |",
            rss_burst as f64 / 1024.0,
            worker_burst as f64 / 1024.0
        );
        println!(
            "| plugin idle RSS after creating {n} volumes and 33 Lists (worker exited {worker_gone:.0} s later) | {:.1} MiB | <= 30 MiB |",
            rss_end as f64 / 1024.0
        );
        println!(
            "| `VolumeDriver.Create` x {n} (4 in parallel) | {create_s:.1} s ({:.1} ms each) | |",
            create_s * 1000.0 / n as f64 * 4.0
        );
        println!(
            "| one `VolumeDriver.Create` with no volume worker running (starts one) / with one running | {cold:.0} ms / {warm:.0} ms | |"
        );
        Ok(())
    })();
    eprintln!("removing the volumes ...");
    let mut names = names;
    names.extend(extra);
    let removed = remove_all(&plugin.sock, &names, 4);
    drop(plugin);
    result?;
    removed
}

fn create_all(sock: &Path, names: &[String], par: usize) -> Res<()> {
    for_all(names, par, |n| {
        call(
            sock,
            "VolumeDriver.Create",
            &format!(r#"{{"Name":"{n}","Opts":{{"size":"16M"}}}}"#),
        )
        .map(|_| ())
    })
}

fn remove_all(sock: &Path, names: &[String], par: usize) -> Res<()> {
    for_all(names, par, |n| {
        match call(sock, "VolumeDriver.Remove", &format!(r#"{{"Name":"{n}"}}"#)) {
            Ok(_) => Ok(()),
            Err(e) if e.contains("does not exist") => Ok(()),
            Err(e) => Err(e),
        }
    })
}

fn for_all(names: &[String], par: usize, f: impl Fn(&str) -> Res<()> + Sync) -> Res<()> {
    let chunks: Vec<&[String]> = names.chunks(names.len().div_ceil(par).max(1)).collect();
    thread::scope(|s| {
        let hs: Vec<_> = chunks
            .iter()
            .map(|c| {
                let f = &f;
                s.spawn(move || {
                    let mut first_err = None;
                    for n in *c {
                        if let Err(e) = f(n) {
                            first_err.get_or_insert(e);
                        }
                    }
                    first_err.map_or(Ok(()), Err)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or(Err("worker panicked".into())))
            .collect::<Res<Vec<()>>>()
            .map(|_| ())
    })
}

// ---------------------------------------------------------------------------------------

const IMAGE: &str = "rbd-test/busybox:latest";

/// A private dockerd from scripts/dev-docker.sh, stopped in `Drop`.
struct Dockerd {
    dir: PathBuf,
    host: String,
}

impl Dockerd {
    fn start() -> Res<Dockerd> {
        let dir = PathBuf::from("/tmp").join(unique("bdk"));
        let script = repo_root().join("scripts/dev-docker.sh");
        let d = Dockerd {
            host: format!("unix://{}/docker.sock", dir.display()),
            dir,
        };
        ok(Command::new(script)
            .arg("up")
            .arg(&d.dir)
            .env("DEV_DOCKER_OWN", "1")
            .env_remove("DOCKER_HOST"))?;
        Ok(d)
    }
    fn docker(&self, args: &[&str]) -> Res<String> {
        ok(Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &self.host))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = ok(Command::new(repo_root().join("scripts/dev-docker.sh"))
            .arg("down")
            .arg(&self.dir));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A spec file that makes dockerd find the plugin under `name`.
struct Spec(PathBuf);

impl Spec {
    fn new(name: &str, sock: &Path) -> Res<Spec> {
        std::fs::create_dir_all("/etc/docker/plugins").map_err(|e| e.to_string())?;
        let p = PathBuf::from(format!("/etc/docker/plugins/{name}.spec"));
        std::fs::write(&p, format!("unix://{}\n", sock.display())).map_err(|e| e.to_string())?;
        Ok(Spec(p))
    }
}

impl Drop for Spec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Times `f`, in seconds.
fn time<T>(f: impl FnOnce() -> Res<T>) -> Res<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

const STEPS: [&str; 4] = [
    "volume create",
    "first docker run -v (write)",
    "docker rm",
    "volume rm",
];

fn plugin_round(d: &Dockerd, driver: &str, vol: &str) -> Res<[f64; 4]> {
    let (_, create) = time(|| d.docker(&["volume", "create", "-d", driver, "-o", "size=1G", vol]))?;
    let c = format!("{vol}-c");
    let v = format!("{vol}:/data");
    let (_, run) = time(|| {
        d.docker(&[
            "run",
            "--name",
            &c,
            "--network",
            "none",
            "--pull",
            "never",
            "-v",
            &v,
            IMAGE,
            "sh",
            "-c",
            "echo hello > /data/f && sync",
        ])
    })?;
    let (_, rm) = time(|| d.docker(&["rm", &c]))?;
    let (_, vrm) = time(|| d.docker(&["volume", "rm", vol]))?;
    Ok([create, run, rm, vrm])
}

/// Undoes the by-hand steps in reverse, whatever got done.
struct Manual {
    image: Option<String>,
    fuse: Option<(Child, PathBuf)>,
    loopdev: Option<String>,
    mount: Option<PathBuf>,
    container: Option<String>,
    conf: PathBuf,
    host: String,
}

impl Manual {
    fn cleanup(&mut self) -> Res<()> {
        if let Some(c) = self.container.take() {
            ok(Command::new("docker")
                .args(["rm", "-f", &c])
                .env("DOCKER_HOST", &self.host))?;
        }
        if let Some(m) = self.mount.take() {
            ok(Command::new("umount").arg(&m))?;
            let _ = std::fs::remove_dir(&m);
        }
        if let Some(l) = self.loopdev.take() {
            ok(Command::new("losetup").args(["-d", &l]))?;
        }
        if let Some((mut child, dir)) = self.fuse.take() {
            ok(Command::new("fusermount3").arg("-u").arg(&dir))?;
            let t0 = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if t0.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            let _ = std::fs::remove_dir(&dir);
        }
        if let Some(i) = self.image.take() {
            ok(Command::new("rbd").arg("-c").arg(&self.conf).args([
                "rm",
                "--no-progress",
                &format!("rbd/{i}"),
            ]))?;
        }
        Ok(())
    }
}

impl Drop for Manual {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("cleanup of the by-hand steps: {e}");
        }
    }
}

fn manual_round(d: &Dockerd, conf: &Path, img: &str) -> Res<[f64; 4]> {
    let mut m = Manual {
        image: None,
        fuse: None,
        loopdev: None,
        mount: None,
        container: None,
        conf: conf.to_path_buf(),
        host: d.host.clone(),
    };
    let rbd = |args: &[&str]| ok(Command::new("rbd").arg("-c").arg(conf).args(args));
    let fuse_dir = PathBuf::from("/tmp").join(format!("{img}-fuse"));
    let mnt = PathBuf::from("/tmp").join(format!("{img}-mnt"));
    // "volume create": the image, mapped, formatted: what a volume is before first use.
    let (_, create) = time(|| {
        rbd(&["create", "--size", "1G", &format!("rbd/{img}")])?;
        m.image = Some(img.to_string());
        Ok(())
    })?;
    // "first run": map (rbd-fuse + loop), mkfs, mount, run the container on a bind mount.
    let c = format!("{img}-c");
    let (_, run) = time(|| {
        std::fs::create_dir_all(&fuse_dir).map_err(|e| e.to_string())?;
        let child = Command::new("rbd-fuse")
            .arg("-c")
            .arg(conf)
            .args(["-p", "rbd", "-r", img, "-f"])
            .arg(&fuse_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("rbd-fuse: {e}"))?;
        m.fuse = Some((child, fuse_dir.clone()));
        let file = fuse_dir.join(img);
        let t0 = Instant::now();
        while !file.exists() {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err("rbd-fuse did not show the image".into());
            }
            thread::sleep(Duration::from_millis(2));
        }
        let dev = ok(Command::new("losetup")
            .args(["--direct-io=on", "-f", "--show"])
            .arg(&file))?
        .trim()
        .to_string();
        m.loopdev = Some(dev.clone());
        ok(Command::new("mkfs.ext4").args(["-q", &dev]))?;
        std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        ok(Command::new("mount").arg(&dev).arg(&mnt))?;
        m.mount = Some(mnt.clone());
        let v = format!("{}:/data", mnt.display());
        m.container = Some(c.clone());
        d.docker(&[
            "run",
            "--name",
            &c,
            "--network",
            "none",
            "--pull",
            "never",
            "-v",
            &v,
            IMAGE,
            "sh",
            "-c",
            "echo hello > /data/f && sync",
        ])
    })?;
    // "docker rm" and the unmount/unmap Docker does at container stop.
    let (_, rm) = time(|| {
        d.docker(&["rm", &c])?;
        m.container = None;
        // Unmount and unmap, keeping the image.
        let image = m.image.take();
        let r = m.cleanup();
        m.image = image;
        r
    })?;
    let (_, vrm) = time(|| m.cleanup())?;
    Ok([create, run, rm, vrm])
}

fn bench_lifecycle(rounds: usize) -> Res<()> {
    let conf = ceph_conf()?;
    release_bin("rbd-umap")?;
    let dir = PathBuf::from("/tmp").join(unique("bench-life"));
    let plugin = Plugin::start(&conf, &dir)?;
    let driver = unique("rbdb");
    let _spec = Spec::new(&driver, &plugin.sock)?;
    let d = Dockerd::start()?;
    let mut ours = Vec::new();
    let mut hand = Vec::new();
    // One untimed round of each first (image cache, dockerd warm-up).
    for r in 0..=rounds {
        let p = plugin_round(&d, &driver, &unique("blv"))?;
        let h = manual_round(&d, &conf, &unique("blh"))?;
        if r > 0 {
            ours.push(p);
            hand.push(h);
        }
    }
    println!("| step | plugin (median of {rounds}) | by hand (median) | ratio |");
    println!("|---|---|---|---|");
    let mut tot_p = 0.0;
    let mut tot_h = 0.0;
    for (i, step) in STEPS.iter().enumerate() {
        let mut p: Vec<f64> = ours.iter().map(|r| r[i]).collect();
        let mut h: Vec<f64> = hand.iter().map(|r| r[i]).collect();
        let (mp, mh) = (median(&mut p), median(&mut h));
        tot_p += mp;
        tot_h += mh;
        println!(
            "| {step} | {:.0} ms | {:.0} ms | {:.2} |",
            mp * 1000.0,
            mh * 1000.0,
            mp / mh
        );
    }
    println!(
        "| **whole sequence** | {:.0} ms | {:.0} ms | **{:.2}** |",
        tot_p * 1000.0,
        tot_h * 1000.0,
        tot_p / tot_h
    );
    drop(d);
    drop(plugin);
    Ok(())
}
