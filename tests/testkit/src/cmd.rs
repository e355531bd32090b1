//! External commands with a hard time limit, for tests: every command a test runs must
//! end, even when the cluster or dockerd hangs.
//!
//! ```
//! use std::process::Command;
//! use std::time::Duration;
//! let out = testkit::cmd::run(Command::new("echo").arg("hi"), Duration::from_secs(10));
//! assert_eq!(testkit::cmd::check("echo", &out), "hi\n");
//! ```

use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

/// Like [`Command::output`](std::process::Command::output) (stdin null, stdout and stderr
/// captured), but bounded: when the child has not exited within `limit`, it gets `SIGTERM`
/// (so scripts can run their cleanup traps), `SIGKILL` ten seconds later, and the test
/// panics with what the child printed so far. No test waits on a child forever.
///
/// Also panics when the child exited but its output pipes stay open past the deadline (a
/// grandchild that kept them).
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};

    let deadline = Instant::now() + limit;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    // Readers append to shared buffers, so a timeout can still show the partial output.
    let reader = |mut r: Box<dyn Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = Arc::clone(&buf);
        let h = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match r.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
        });
        (buf, h)
    };
    let (out, out_h) = reader(Box::new(child.stdout.take().unwrap()));
    let (err, err_h) = reader(Box::new(child.stderr.take().unwrap()));
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();

    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let grace = Instant::now() + Duration::from_secs(10);
                while Instant::now() < grace && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{cmd:?} (pid {pid}) did not finish within {limit:?}: terminated\n\
                     ---- stdout ----\n{}\n---- stderr ----\n{}",
                    text(&out),
                    text(&err)
                );
            }
            Err(e) => panic!("waiting for {cmd:?} (pid {pid}): {e}"),
        }
    };
    while !(out_h.is_finished() && err_h.is_finished()) {
        if Instant::now() >= deadline {
            panic!(
                "{cmd:?} (pid {pid}) exited ({status}) but its output stayed open past \
                 {limit:?} (a process it started holds it)\n---- stdout ----\n{}\n\
                 ---- stderr ----\n{}",
                text(&out),
                text(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = out_h.join();
    let _ = err_h.join();
    Output {
        status,
        stdout: std::mem::take(&mut out.lock().unwrap()),
        stderr: std::mem::take(&mut err.lock().unwrap()),
    }
}

/// Bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The stdout of a command that must have succeeded; panics with its status and output
/// otherwise.
pub fn check(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `f` on a helper thread and returns its result with how long it took, or `None`
/// when it did not finish within `limit` (the thread is abandoned, so a test can fail
/// instead of hanging on I/O that blocks).
pub fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<(T, Duration)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok().map(|v| (v, start.elapsed()))
}

/// Polls `f` every 20 ms until it is true (then true) or `limit` has passed (then false).
pub fn wait_until(limit: Duration, f: impl FnMut() -> bool) -> bool {
    wait_every(limit, Duration::from_millis(20), f)
}

/// Polls `f` every `every` (for checks that ask the cluster or dockerd) until it is true
/// (then true) or `limit` has passed (then false).
pub fn wait_every(limit: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}
