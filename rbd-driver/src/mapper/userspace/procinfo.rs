//! Is a mapper process alive? From `/proc/PID/stat`, so that a zombie (exited, not yet
//! reaped) counts as dead and a reused pid is told apart by its start time.

use std::time::{Duration, Instant};

/// State letter and start time (field 22) of `pid`, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `/proc/PID/stat`: the command is in parentheses and may contain anything, so
/// fields are counted after the last `)`.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// The start time of `pid`, while it runs.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    match stat(pid)? {
        ('Z' | 'X' | 'x', _) => None,
        (_, t) => Some(t),
    }
}

/// True while the process `pid` that started at `start` runs (not a zombie).
pub(crate) fn alive(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// Waits until the process is gone (or a zombie), up to `timeout`. True when it is.
pub(crate) fn wait_gone(pid: u32, start: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(2);
    loop {
        if !alive(pid, start) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(5));
    }
}

/// Sends `sig` to `pid` if it is still the process that started at `start`.
pub(crate) fn signal(pid: u32, start: u64, sig: nix::sys::signal::Signal) -> bool {
    if !alive(pid, start) {
        return false;
    }
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (rbd-umap (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 \
                    9 0 987654 1000000 100 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_a_zombie_is_not() {
        let me = std::process::id();
        let t = start_time(me).expect("we run");
        assert!(alive(me, t));
        assert!(!alive(me, t + 1), "another start time is another process");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it exits.
        let deadline = Instant::now() + Duration::from_secs(5);
        while stat(pid).is_some_and(|(s, _)| s != 'Z') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(stat(pid).map(|s| s.0), Some('Z'));
        assert_eq!(start_time(pid), None);
        assert!(wait_gone(pid, 0, Duration::from_millis(10)));
        child.wait().unwrap();
    }
}
