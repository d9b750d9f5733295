//! Progress on long work: a bar with rate and ETA on a terminal, plain log lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Seconds between plain log lines when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Counts work done out of a known total.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    unit: &'static str,
    total: u64,
    done: AtomicU64,
    start: Instant,
    last_log: Mutex<Instant>,
    quiet: bool,
}

impl Progress {
    /// A counter of `total` `unit`s (e.g. galaxies).
    pub fn new(label: &str, total: u64, unit: &'static str, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(&format!(
                "{{prefix:>10}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} · {{per_sec}} · ETA {{eta}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label.to_string());
            bar
        });
        Self {
            bar,
            label: label.to_string(),
            unit,
            total,
            done: AtomicU64::new(0),
            start: Instant::now(),
            last_log: Mutex::new(Instant::now()),
            quiet,
        }
    }

    /// Add `n` units done.
    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        if self.quiet {
            return;
        }
        if let Ok(mut last) = self.last_log.lock() {
            if last.elapsed() >= LOG_EVERY {
                *last = Instant::now();
                self.log_line(done);
            }
        }
    }

    /// Print a message above the bar (or as a plain line).
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None if !self.quiet => eprintln!("{msg}"),
            None => {}
        }
    }

    fn log_line(&self, done: u64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(done)) as f64 / rate
        } else {
            f64::NAN
        };
        eprintln!(
            "{}: {done}/{} {} ({rate:.1}/s, ETA {eta:.0} s)",
            self.label, self.total, self.unit
        );
    }

    /// Done: clear the bar (or print the last line).
    pub fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None if !self.quiet => self.log_line(self.done.load(Ordering::Relaxed)),
            None => {}
        }
    }
}
