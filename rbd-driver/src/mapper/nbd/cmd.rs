//! Running external commands with a deadline and captured output.
//!
//! Output goes to unlinked temp files rather than pipes: `rbd-nbd map` forks a daemon that
//! may inherit the child's stdout/stderr, and a pipe would then stay open (and a reader
//! blocked) for the daemon's whole life. We wait for the direct child only.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{DriverError, Result};

/// A finished command.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// A command line to run with a timeout. Arguments must never contain secrets: the
/// command line appears in errors.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    program: PathBuf,
    args: Vec<OsString>,
    timeout: Duration,
}

impl Cmd {
    pub(crate) fn new(program: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            timeout,
        }
    }

    pub(crate) fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The command line, for messages.
    pub(crate) fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"') {
                s.push_str(&format!("{a:?}"));
            } else {
                s.push_str(&a);
            }
        }
        s
    }

    /// Runs it to completion or the deadline (then it is killed and this is a
    /// [`DriverError::Timeout`]). A command that cannot start is a
    /// [`DriverError::Command`]; a non-zero exit is returned as is.
    pub(crate) fn run(&self) -> Result<Output> {
        let (out_w, mut out_r) = capture_file()?;
        let (err_w, mut err_r) = capture_file()?;
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            .spawn()
            .map_err(|e| DriverError::Command {
                command: self.display(),
                status: "could not start".into(),
                stderr: e.to_string(),
            })?;
        let start = Instant::now();
        let mut nap = Duration::from_millis(2);
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => {
                    return Err(DriverError::io(
                        format!("waiting for {}", self.display()),
                        e,
                    ));
                }
            }
            if start.elapsed() >= self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(DriverError::Timeout {
                    what: format!(
                        "command {:?} (stderr so far: {:?})",
                        self.display(),
                        read_all(&mut err_r).trim()
                    ),
                    secs: self.timeout.as_secs().max(1),
                });
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(50));
        };
        Ok(Output {
            status,
            stdout: read_all(&mut out_r),
            stderr: read_all(&mut err_r),
        })
    }

    /// Like [`Self::run`], but a non-zero exit is a [`DriverError::Command`] with stderr.
    pub(crate) fn run_ok(&self) -> Result<Output> {
        let out = self.run()?;
        if !out.status.success() {
            return Err(self.failed(&out));
        }
        Ok(out)
    }

    /// The error for a failed run.
    pub(crate) fn failed(&self, out: &Output) -> DriverError {
        let mut stderr = out.stderr.trim().to_owned();
        if stderr.is_empty() {
            stderr = out.stdout.trim().to_owned();
        }
        DriverError::Command {
            command: self.display(),
            status: out.status.to_string(),
            stderr,
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A temp file opened twice (writer for the child, reader for us), already unlinked.
fn capture_file() -> Result<(File, File)> {
    let dir = std::env::temp_dir();
    for _ in 0..16 {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            ".rbd-driver-cmd-{}-{}-{n}",
            std::process::id(),
            nanos()
        ));
        let w = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(DriverError::io(
                    format!("creating a capture file in {}", dir.display()),
                    e,
                ));
            }
        };
        let r = File::open(&path);
        let _ = std::fs::remove_file(&path);
        let r = r.map_err(|e| DriverError::io(format!("opening {}", path.display()), e))?;
        return Ok((w, r));
    }
    Err(DriverError::io(
        format!("creating a capture file in {}", dir.display()),
        std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    ))
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Reads the whole capture file (from the start), lossily as UTF-8, at most 1 MiB.
fn read_all(f: &mut File) -> String {
    let mut buf = Vec::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.take(1 << 20).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Finds a program: a path with a `/` as is, else the first match on `$PATH`.
pub(crate) fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return is_executable(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let out = Cmd::new("sh", Duration::from_secs(10))
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .run()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        let e = Cmd::new("sh", Duration::from_secs(10))
            .args(["-c", "echo 'bad thing' >&2; exit 1"])
            .run_ok()
            .unwrap_err();
        match e {
            DriverError::Command {
                command,
                status,
                stderr,
            } => {
                assert_eq!(command, "sh -c \"echo 'bad thing' >&2; exit 1\"");
                assert!(status.contains('1'), "{status}");
                assert_eq!(stderr, "bad thing");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn times_out_and_kills() {
        let t = Instant::now();
        let e = Cmd::new("sleep", Duration::from_millis(300))
            .arg("30")
            .run()
            .unwrap_err();
        assert!(matches!(e, DriverError::Timeout { .. }), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn does_not_wait_for_daemonized_grandchildren() {
        // The child exits at once but leaves a grandchild holding stdout/stderr open.
        let t = Instant::now();
        let out = Cmd::new("sh", Duration::from_secs(10))
            .args(["-c", "sleep 3 & echo /dev/nbd7"])
            .run_ok()
            .unwrap();
        assert_eq!(out.stdout.trim(), "/dev/nbd7");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn missing_program() {
        let e = Cmd::new("/nonexistent/rbd-nbd", Duration::from_secs(1))
            .run()
            .unwrap_err();
        assert!(e.to_string().contains("could not start"), "{e}");
        assert!(which(Path::new("sh")).is_some());
        assert!(which(Path::new("/nonexistent/x")).is_none());
        assert!(which(Path::new("definitely-not-a-program-here")).is_none());
    }
}
