//! Checking filesystems: `e2fsck -p`, `xfs_repair -n`, `btrfs check --readonly`.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cmd::{CommandOutput, run};
use crate::mkfs::ensure_not_in_use;
use crate::{Error, FsType};

/// Options for [`fsck`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsckOptions {
    /// ext4 only: check even when the filesystem is marked clean (`e2fsck -f`). Without it
    /// `e2fsck -p` skips clean filesystems, as at boot.
    pub force_full_check: bool,
    /// Kill the checker if it runs longer than this.
    pub timeout: Duration,
}

impl Default for FsckOptions {
    /// No forced full check, one hour timeout.
    fn default() -> Self {
        FsckOptions {
            force_full_check: false,
            timeout: Duration::from_secs(3600),
        }
    }
}

/// What a filesystem check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsckOutcome {
    /// No errors.
    Clean,
    /// Errors were found and repaired (ext4 only: `e2fsck -p` exit 1 or 2).
    ErrorsCorrected,
    /// Errors were found and are still there: `e2fsck -p` exit 4 (needs a manual fsck),
    /// `xfs_repair -n` exit 1 (corruption) or 2 (dirty log: mount to replay it first),
    /// `btrfs check --readonly` reporting errors.
    ErrorsLeft,
    /// The checker could not do its job (operational or usage error, cancelled, killed).
    Failed,
}

/// The result of [`fsck`]: the outcome and the checker's captured output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsckReport {
    /// What the check concluded.
    pub outcome: FsckOutcome,
    /// The checker's run (command line, exit status, stdout, stderr).
    pub output: CommandOutput,
}

/// The checker command line for `fs` (program first).
pub fn fsck_argv(device: impl AsRef<Path>, fs: FsType, options: &FsckOptions) -> Vec<OsString> {
    let mut argv: Vec<OsString> = match fs {
        FsType::Ext4 => {
            let mut v = vec!["e2fsck".into(), "-p".into()];
            if options.force_full_check {
                v.push("-f".into());
            }
            v
        }
        FsType::Xfs => vec!["xfs_repair".into(), "-n".into()],
        FsType::Btrfs => vec!["btrfs".into(), "check".into(), "--readonly".into()],
    };
    argv.push(device.as_ref().as_os_str().to_owned());
    argv
}

/// Check the (unmounted) filesystem on `device`.
///
/// ext4 runs `e2fsck -p`, which repairs what is safe to repair without questions; xfs runs
/// `xfs_repair -n` and btrfs `btrfs check --readonly`, which only report. A mounted or
/// otherwise busy device is refused ([`Error::DeviceMounted`], [`Error::DeviceBusy`])
/// before anything runs. The checker's exit status is mapped with [`classify_fsck`];
/// `Err` is returned only when the checker could not be run or timed out.
pub fn fsck(
    device: impl AsRef<Path>,
    fs: FsType,
    options: &FsckOptions,
) -> Result<FsckReport, Error> {
    let device = device.as_ref();
    ensure_not_in_use(device)?;
    let argv = fsck_argv(device, fs, options);
    let program = argv[0].to_string_lossy().into_owned();
    let output = run(&program, &argv[1..], options.timeout)?;
    let outcome = classify_fsck(fs, output.code(), &output.stdout, &output.stderr);
    Ok(FsckReport { outcome, output })
}

/// Map a checker's exit code (`None` if it was killed by a signal) to an outcome, using
/// the documented exit codes:
///
/// - `e2fsck` (a bit mask): 0 clean; 1 errors corrected; 2 corrected, reboot; 4 errors
///   left uncorrected; 8 operational error; 16 usage error; 32 cancelled; 128 library
///   error. Bits 8 and up mean [`FsckOutcome::Failed`], then 4 means errors left.
/// - `xfs_repair -n`: 0 clean; 1 corruption found; 2 dirty log (the log must be replayed
///   by mounting); anything else failed.
/// - `btrfs check`: 0 clean; non-zero is "errors found" when its output says so
///   (`error(s) found`, `errors found`), otherwise a failure to check (for instance the
///   device could not be opened).
pub fn classify_fsck(fs: FsType, code: Option<i32>, stdout: &str, stderr: &str) -> FsckOutcome {
    let Some(code) = code else {
        return FsckOutcome::Failed;
    };
    match fs {
        FsType::Ext4 => match code {
            0 => FsckOutcome::Clean,
            c if c < 0 || c & !0x7 != 0 => FsckOutcome::Failed,
            c if c & 4 != 0 => FsckOutcome::ErrorsLeft,
            _ => FsckOutcome::ErrorsCorrected,
        },
        FsType::Xfs => match code {
            0 => FsckOutcome::Clean,
            1 | 2 => FsckOutcome::ErrorsLeft,
            _ => FsckOutcome::Failed,
        },
        FsType::Btrfs => {
            if code == 0 {
                return FsckOutcome::Clean;
            }
            let found = |s: &str| {
                let s = s.to_ascii_lowercase();
                s.contains("error(s) found") || s.contains("errors found")
            };
            if found(stdout) || found(stderr) {
                FsckOutcome::ErrorsLeft
            } else {
                FsckOutcome::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv() {
        let o = FsckOptions::default();
        let s = |v: Vec<OsString>| {
            v.into_iter()
                .map(|s| s.into_string().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            s(fsck_argv("/dev/x", FsType::Ext4, &o)),
            ["e2fsck", "-p", "/dev/x"]
        );
        let f = FsckOptions {
            force_full_check: true,
            ..o.clone()
        };
        assert_eq!(
            s(fsck_argv("/dev/x", FsType::Ext4, &f)),
            ["e2fsck", "-p", "-f", "/dev/x"]
        );
        assert_eq!(
            s(fsck_argv("/dev/x", FsType::Xfs, &f)),
            ["xfs_repair", "-n", "/dev/x"]
        );
        assert_eq!(
            s(fsck_argv("/dev/x", FsType::Btrfs, &o)),
            ["btrfs", "check", "--readonly", "/dev/x"]
        );
    }

    #[test]
    fn e2fsck_codes() {
        use FsckOutcome::*;
        let c = |code| classify_fsck(FsType::Ext4, code, "", "");
        assert_eq!(c(Some(0)), Clean);
        assert_eq!(c(Some(1)), ErrorsCorrected);
        assert_eq!(c(Some(2)), ErrorsCorrected);
        assert_eq!(c(Some(3)), ErrorsCorrected);
        assert_eq!(c(Some(4)), ErrorsLeft);
        assert_eq!(c(Some(5)), ErrorsLeft);
        assert_eq!(c(Some(8)), Failed);
        assert_eq!(c(Some(12)), Failed);
        assert_eq!(c(Some(16)), Failed);
        assert_eq!(c(Some(32)), Failed);
        assert_eq!(c(Some(128)), Failed);
        assert_eq!(c(None), Failed);
    }

    #[test]
    fn xfs_repair_codes() {
        use FsckOutcome::*;
        let c = |code| classify_fsck(FsType::Xfs, code, "", "");
        assert_eq!(c(Some(0)), Clean);
        assert_eq!(c(Some(1)), ErrorsLeft);
        assert_eq!(c(Some(2)), ErrorsLeft);
        assert_eq!(c(Some(4)), Failed);
        assert_eq!(c(None), Failed);
    }

    #[test]
    fn btrfs_check_codes() {
        use FsckOutcome::*;
        assert_eq!(classify_fsck(FsType::Btrfs, Some(0), "", ""), Clean);
        assert_eq!(
            classify_fsck(
                FsType::Btrfs,
                Some(1),
                "found 1 bytes used, error(s) found\n",
                ""
            ),
            ErrorsLeft
        );
        assert_eq!(
            classify_fsck(
                FsType::Btrfs,
                Some(1),
                "",
                "ERROR: errors found in fs roots\n"
            ),
            ErrorsLeft
        );
        assert_eq!(
            classify_fsck(
                FsType::Btrfs,
                Some(1),
                "",
                "ERROR: cannot open file system\n"
            ),
            Failed
        );
    }
}
