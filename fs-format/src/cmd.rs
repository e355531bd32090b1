//! Running external tools with a timeout and captured output.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::Error;

/// At most this much of each of stdout and stderr is kept; the rest is read and dropped.
const MAX_CAPTURE: usize = 4 << 20;
/// After the child exits, how long to wait for its pipes to reach EOF (a grandchild that
/// left the process group could hold them open).
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// The record of one finished external command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The command line, quoted for reading (it was run as an argv, never through a shell).
    pub command: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output (lossy UTF-8, capped at 4 MiB).
    pub stdout: String,
    /// Its standard error (lossy UTF-8, capped at 4 MiB).
    pub stderr: String,
    /// How long it ran.
    pub duration: Duration,
}

impl CommandOutput {
    /// The exit code, or `None` when the command was killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Quote a command line for display: arguments with characters outside a safe set are
/// single-quoted.
pub(crate) fn display_command(program: &str, args: &[OsString]) -> String {
    let mut s = quote(OsStr::new(program));
    for a in args {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

fn quote(arg: &OsStr) -> String {
    let a = arg.to_string_lossy();
    let safe = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@+%^".contains(c));
    if safe {
        a.into_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// Run `program args...` with stdin from `/dev/null`, `LC_ALL=C`, and stdout/stderr
/// captured. The child gets its own process group; if it runs past `timeout` the whole
/// group is sent `SIGKILL` and [`Error::Timeout`] is returned.
///
/// A non-zero exit is *not* an error here: see [`run_checked`].
pub(crate) fn run(
    program: &str,
    args: &[OsString],
    timeout: Duration,
) -> Result<CommandOutput, Error> {
    let command = display_command(program, args);
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;

    let (out_buf, out_reader) = capture(child.stdout.take());
    let (err_buf, err_reader) = capture(child.stderr.take());

    let deadline = start + timeout;
    let mut pause = Duration::from_millis(1);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                kill_group(&mut child);
                return Err(Error::Spawn { command, source });
            }
        }
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            kill_group(&mut child);
            match child.wait() {
                Ok(status) => break status,
                Err(source) => return Err(Error::Spawn { command, source }),
            }
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let duration = start.elapsed();

    // Pipes normally reach EOF as soon as the child is gone; don't hang if they don't.
    let grace = Instant::now() + PIPE_GRACE;
    for reader in [&out_reader, &err_reader].into_iter().flatten() {
        while !reader.is_finished() && Instant::now() < grace {
            thread::sleep(Duration::from_millis(5));
        }
    }
    let stdout = take(&out_buf);
    let stderr = take(&err_buf);

    if timed_out {
        return Err(Error::Timeout {
            command,
            timeout,
            stdout,
            stderr,
        });
    }
    Ok(CommandOutput {
        command,
        status,
        stdout,
        stderr,
        duration,
    })
}

/// Like [`run`], but a non-zero exit becomes [`Error::CommandFailed`].
pub(crate) fn run_checked(
    program: &str,
    args: &[OsString],
    timeout: Duration,
) -> Result<CommandOutput, Error> {
    let out = run(program, args, timeout)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(failed(out))
    }
}

/// Turn a finished command into [`Error::CommandFailed`].
pub(crate) fn failed(out: CommandOutput) -> Error {
    Error::CommandFailed {
        command: out.command,
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // The child is not reaped yet, so its pid (= its process group id) is still ours.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
}

type Captured = (Arc<Mutex<Vec<u8>>>, Option<thread::JoinHandle<()>>);

fn capture<R: Read + Send + 'static>(pipe: Option<R>) -> Captured {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let Some(mut pipe) = pipe else {
        return (buf, None);
    };
    let sink = Arc::clone(&buf);
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let mut b = sink.lock().unwrap_or_else(|p| p.into_inner());
                    let room = MAX_CAPTURE.saturating_sub(b.len());
                    b.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    (buf, Some(handle))
}

fn take(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    let b = buf.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn captures_output_and_status() {
        let out = run(
            "sh",
            &args(&["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.code(), Some(3));
        assert!(!out.success());
    }

    #[test]
    fn run_checked_reports_command_status_and_stderr() {
        let err = run_checked(
            "sh",
            &args(&["-c", "echo boom >&2; exit 2"]),
            Duration::from_secs(10),
        )
        .unwrap_err();
        match &err {
            Error::CommandFailed {
                command,
                status,
                stderr,
                ..
            } => {
                assert_eq!(command, "sh -c 'echo boom >&2; exit 2'");
                assert_eq!(status.code(), Some(2));
                assert_eq!(stderr, "boom\n");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("boom"));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let start = Instant::now();
        // The grandchild `sleep` inherits the pipes; killing only `sh` would leave them open.
        let err = run(
            "sh",
            &args(&["-c", "echo started; sleep 30 & sleep 30; wait"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        match err {
            Error::Timeout { stdout, .. } => assert_eq!(stdout, "started\n"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run("/nonexistent/fs-format-tool", &[], Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
    }

    #[test]
    fn quoting() {
        assert_eq!(
            display_command(
                "mkfs.ext4",
                &args(&["-L", "a b", "-E", "x=1,y", "", "it's"])
            ),
            r"mkfs.ext4 -L 'a b' -E x=1,y '' 'it'\''s'"
        );
    }
}
