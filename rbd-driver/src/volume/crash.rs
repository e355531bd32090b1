//! Crash injection for tests (cargo feature `crash-points`).
//!
//! With the feature on, every step boundary of create, attach, detach and remove calls
//! [`crash_point`] with a name from [`CRASH_POINTS`]. When the environment variable
//! [`CRASH_ENV`] (`RBD_VOLUMES_CRASH_AT`) equals that name, the process sends itself
//! `SIGKILL` right there, exactly like `kill -9`: no destructor, no cleanup, no flush.
//! The crash tests run an operation in a child process with the variable set, then start
//! a new [`crate::volume::Driver`] and check that recovery leaves no orphan.
//!
//! Without the feature (release builds, the plugin, rbdctl) [`crash_point`] is an empty
//! inline function and the variable is never read.

/// The environment variable naming the crash point.
pub const CRASH_ENV: &str = "RBD_VOLUMES_CRASH_AT";

/// Every crash point, `operation:step`. The step is the one about to run (its phase is
/// already recorded), or, for names in the past tense, the one that just finished (its
/// result not yet recorded).
pub const CRASH_POINTS: &[&str] = &[
    "create:claiming",
    "create:claimed",
    "create:image-created",
    "create:metadata-set",
    "create:format-mapped",
    "create:formatted",
    "create:published",
    "attach:mapping",
    "attach:mapped",
    "attach:formatting",
    "attach:mounting",
    "attach:mounted",
    // Only on some paths: a second mount ID joining a healthy mount (the reference is
    // about to be / was just recorded), the fsck before mounting (`fsck_on_attach`), the
    // ext4 offline grow before mounting and the xfs/btrfs online grow after it (when the
    // image grew while detached).
    "attach:sharing",
    "attach:shared",
    "attach:checking",
    "attach:checked",
    "attach:growing",
    "attach:grown",
    "attach:growing-online",
    "attach:grown-online",
    "detach:unmounting",
    "detach:unmounted",
    "detach:unmapping",
    "detach:unmapped",
    // A detach that is not the last reference: it is about to be / was just dropped.
    "detach:releasing",
    "detach:released",
    "remove:marking",
    "remove:marked",
    "remove:image-removed",
    "remove:index-removed",
];

/// Kills the process with `SIGKILL` if [`CRASH_ENV`] names `point`.
#[cfg(feature = "crash-points")]
pub fn crash_point(point: &str) {
    debug_assert!(CRASH_POINTS.contains(&point), "unknown crash point {point}");
    if std::env::var(CRASH_ENV).as_deref() == Ok(point) {
        eprintln!("rbd-driver: crash point {point} reached: killing this process (SIGKILL)");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}

/// Does nothing: the `crash-points` feature is off.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn crash_point(_point: &str) {}
