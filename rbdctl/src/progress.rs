//! Progress bars for long operations, drawn on stderr only when both stdout and stderr are
//! terminals and `--no-progress` is not given: a command whose output goes to a file or a
//! pipe (`rbdctl export IMG - | gzip`, scripts) shows none. Stdout carries only the
//! command's result.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Cli;

/// What the bar counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// librbd's `(done, total)` steps (objects, usually).
    Steps,
    /// Bytes, with a rate.
    Bytes,
}

/// One progress bar, or nothing when progress is off. Cleared on drop.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

/// Whether progress bars are drawn for this invocation.
pub fn enabled(cli: &Cli) -> bool {
    !cli.no_progress && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

impl Progress {
    /// A bar labelled `msg`, or a disabled one (see [`enabled`]).
    pub fn new(cli: &Cli, msg: &str, unit: Unit) -> Self {
        if !enabled(cli) {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let template = match unit {
            Unit::Steps => "{msg}: [{bar:40}] {percent:>3}% ({elapsed}, eta {eta})",
            Unit::Bytes => {
                "{msg}: [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} (eta {eta})"
            }
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(msg.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar: Some(bar) }
    }

    /// A `FnMut(done, total)` for rbd-core's `*_with_progress` calls.
    pub fn callback(&self) -> impl FnMut(u64, u64) + Send + 'static {
        let bar = self.bar.clone();
        move |done, total| {
            if let Some(b) = &bar {
                if b.length() != Some(total) {
                    b.set_length(total);
                }
                b.set_position(done);
            }
        }
    }

    /// Sets the total.
    pub fn set_length(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Advances by `n`.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Removes the bar from the terminal (before printing the result).
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
