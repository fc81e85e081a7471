//! Progress for long work: a bar on a terminal, a plain line every few seconds otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::util::{human_bytes, human_duration};

/// Reports bytes done out of a total, on stderr.
pub struct Progress {
    label: String,
    total: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    every: Duration,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        let now = Instant::now();
        Self { label: label.into(), total, bar, started: now, last_line: now, every: Duration::from_secs(10) }
    }

    pub fn set(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        if self.last_line.elapsed() >= self.every {
            self.last_line = Instant::now();
            eprintln!("{}", self.line(done));
        }
    }

    /// `sda: 1.2 GiB of 4.0 GiB (30%), 210.3 MiB/s, ETA 14s`
    pub fn line(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let pct = (done * 100).checked_div(self.total).unwrap_or(100);
        let eta = if rate > 0.0 { ((self.total - done.min(self.total)) as f64 / rate) as u64 } else { 0 };
        format!(
            "{}: {} of {} ({pct}%), {}/s, ETA {}",
            self.label,
            human_bytes(done),
            human_bytes(self.total),
            human_bytes(rate as u64),
            human_duration(eta)
        )
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
