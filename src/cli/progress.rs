//! Progress of the long-running subcommands (`score`, `produce --file`, `replay`): rows, rate
//! and ETA on a terminal, nothing otherwise.
//!
//! The bar is drawn on stderr only when stderr is a terminal and `--quiet` is not given, so
//! pipes, logs and CI output never carry carriage returns or half-drawn bars; off a terminal
//! every call is a no-op (indicatif's hidden target).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Redraws per second: enough to look live, cheap at millions of rows per second.
const REFRESH_HZ: u8 = 4;

/// A progress display that may be hidden.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar over `total` units (bytes of the input, readings, partitions), or a spinner when
    /// the total is unknown. `unit` names what `inc` counts in the message (`rows`).
    pub fn new(total: Option<u64>, unit: &'static str, quiet: bool) -> Self {
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), Self::target(quiet)),
            None => ProgressBar::with_draw_target(None, Self::target(quiet)),
        };
        let template = if total.is_some() {
            format!("{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{percent}}% {{msg}} {unit}, ETA {{eta}}")
        } else {
            format!("{{spinner}} [{{elapsed_precise}}] {{msg}} {unit}")
        };
        // The templates are constants of this file: a bad one is a bug caught by any run on a
        // terminal, so fall back to the default style rather than fail the command.
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(1000 / u64::from(REFRESH_HZ)));
        Self { bar }
    }

    /// Where to draw: stderr at a few Hz on a terminal, nowhere otherwise.
    fn target(quiet: bool) -> ProgressDrawTarget {
        if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr_with_hz(REFRESH_HZ)
        }
    }

    /// Whether anything is drawn (callers skip building messages when not).
    pub fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }

    /// Advance by `n` units.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Report `count` things done at `per_sec` (rows and their rate).
    pub fn set_count(&self, count: u64, per_sec: f64) {
        if !self.is_hidden() {
            self.bar.set_message(format!("{count} ({per_sec:.0}/s)"));
        }
    }

    /// Remove the bar, so that the summary printed after it stands alone.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
