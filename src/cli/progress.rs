//! A progress bar on standard error for long replays, shown only when standard error is a terminal
//! (never in CI logs or pipes).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Inputs smaller than this finish before a bar would be useful.
const MIN_BYTES: u64 = 4 << 20;

/// Progress over the bytes of the inputs (a spinner when the size is unknown, as for stdin).
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// No bar.
    pub fn hidden() -> Self {
        Progress { bar: None }
    }

    /// A bar over `total` bytes, if wanted and standard error is a terminal. `rows_on_terminal`:
    /// results are being printed to the same terminal line by line, where a bar would only flicker
    /// between them.
    pub fn new(total: Option<u64>, wanted: bool, rows_on_terminal: bool) -> Self {
        let large = total.is_none_or(|t| t >= MIN_BYTES);
        if !wanted || rows_on_terminal || !large || !std::io::stderr().is_terminal() {
            return Self::hidden();
        }
        let bar = match total {
            Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr_with_hz(5)),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5)),
        };
        let template = match total {
            Some(_) => "{bar:40} {bytes}/{total_bytes} {msg} ({eta} left)",
            None => "{spinner} {bytes} {msg}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        Progress { bar: Some(bar) }
    }

    /// Notes `bytes` more read and the number of records so far.
    pub fn advance(&self, bytes: u64, records: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
            if records & 0xfff == 0 {
                bar.set_message(format!("{records} records"));
            }
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
