//! Reaping orphaned processes when the plugin is its PID namespace's init.
//!
//! A managed plugin runs in a PID namespace of its own (`"pidhost": false`), with the
//! plugin as PID 1. Processes whose parent exits are handed to PID 1: a userspace mapper
//! or rbd-nbd started by a volume worker that has since retired ([`crate::worker`]), or
//! rbd-nbd's daemon after its launcher exits. When such a process ends, only its new
//! parent can reap it; otherwise it stays a zombie (a pid and a process table entry) for
//! the life of the plugin. [`start_if_init`] reaps them.
//!
//! The plugin's own children are reaped by whoever started them (within milliseconds of
//! their exit: every child is waited for or polled), so a zombie is reaped here only once
//! it has been one for [`MIN_AGE`]: nobody else is waiting for it then.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a child must have been a zombie before it is reaped here.
pub const MIN_AGE: Duration = Duration::from_secs(5);

/// How often the children are looked at.
const PERIOD: Duration = Duration::from_secs(5);

/// Starts the reaper thread if this process is PID 1 (of its namespace). Returns whether
/// it did.
pub fn start_if_init() -> bool {
    if std::process::id() != 1 {
        return false;
    }
    let started = std::thread::Builder::new()
        .name("reaper".into())
        .stack_size(64 * 1024)
        .spawn(|| {
            let mut seen = HashMap::new();
            loop {
                std::thread::sleep(PERIOD);
                for pid in reap_old_zombies(&mut seen, MIN_AGE) {
                    tracing::debug!("reaped orphan process {pid}");
                }
            }
        });
    started.is_ok()
}

/// The children of this process that are zombies, with their start times (from
/// `/proc/self/task/*/children` and `/proc/PID/stat`).
fn zombie_children() -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for pid in list
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command (which may hold spaces and parentheses).
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            // f[0] is field 3 (state), f[19] field 22 (start time).
            if f.first() == Some(&"Z")
                && let Some(start) = f.get(19).and_then(|s| s.parse().ok())
            {
                out.push((pid, start));
            }
        }
    }
    out
}

/// Reaps the zombie children first seen (in `seen`, updated) at least `min_age` ago, and
/// returns their pids. Zombies seen for less are remembered for a later call.
pub fn reap_old_zombies(seen: &mut HashMap<(u32, u64), Instant>, min_age: Duration) -> Vec<u32> {
    let now = Instant::now();
    let zombies = zombie_children();
    seen.retain(|k, _| zombies.contains(k));
    let mut reaped = Vec::new();
    for z in zombies {
        let first = *seen.entry(z).or_insert(now);
        if now.duration_since(first) < min_age {
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid on one pid that is our child and a zombie (checked by its start
        // time just now; a zombie's pid cannot be reused until it is reaped), with
        // WNOHANG so it never blocks; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(z.0 as libc::pid_t, &mut status, libc::WNOHANG) };
        if r == z.0 as libc::pid_t {
            reaped.push(z.0);
        }
        seen.remove(&z);
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    // nextest runs each test in a process of its own, so making it a subreaper affects
    // nothing else.
    #[test]
    fn orphans_are_reaped_once_old_enough_and_only_then() {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only changes who adopts this process's
        // orphaned descendants.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0);
        // sh starts a background child and exits at once: the child is orphaned and
        // adopted by us; it exits after 0.2 s and nobody waits for it.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 0.2 & echo $!"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let orphan: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !zombie_children().iter().any(|z| z.0 == orphan) {
            assert!(
                Instant::now() < deadline,
                "pid {orphan} never became our zombie"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut seen = HashMap::new();
        let min_age = Duration::from_millis(300);
        assert_eq!(reap_old_zombies(&mut seen, min_age), Vec::<u32>::new());
        assert!(std::path::Path::new(&format!("/proc/{orphan}")).exists());
        std::thread::sleep(min_age);
        assert_eq!(reap_old_zombies(&mut seen, min_age), vec![orphan]);
        assert!(!std::path::Path::new(&format!("/proc/{orphan}")).exists());
        assert!(seen.is_empty());
    }
}
