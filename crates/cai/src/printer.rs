//! The one printer: results on stdout (or only JSON with `--json`), notes, progress and an
//! engine's events on stderr (nothing with `--quiet`). Every command prints through it.

use std::io::{IsTerminal, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cai_engine::engine::{RunEvent, RunEvents};

use crate::progress::Progress;

/// A followed run's status line as last printed.
struct StatusLine {
    /// The line without its time.
    last: String,
    /// When it was printed (off a terminal, an unchanged line is repeated every 30 s).
    at: Instant,
}

#[derive(Default)]
struct PrinterState {
    bar: Option<Progress>,
    status: Option<StatusLine>,
}

/// Shows a run's events on stderr (results on stdout): a progress bar with rate and ETA on a
/// terminal and plain lines otherwise; a status line rewritten in place on a terminal;
/// nothing but results with `--quiet`.
pub(crate) struct Printer {
    quiet: bool,
    json: bool,
    tty: bool,
    state: Mutex<PrinterState>,
}

impl Printer {
    /// A printer for this process's stdout and stderr (`--quiet`: results and errors only).
    pub(crate) fn new(quiet: bool) -> Self {
        Self {
            quiet,
            json: false,
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(PrinterState::default()),
        }
    }

    /// A printer like this one for a command whose `--json` is `json`: stdout then carries
    /// only the JSON document ([`Printer::json`]).
    pub(crate) fn with_json(&self, json: bool) -> Self {
        Self {
            json,
            ..Self::new(self.quiet)
        }
    }

    /// `--quiet` (for progress counters).
    pub(crate) fn quiet(&self) -> bool {
        self.quiet
    }

    /// A note on stderr (what was written, what was chosen); none with `--quiet`.
    pub(crate) fn note(&self, msg: impl AsRef<str>) {
        if let Ok(st) = self.state.lock() {
            self.line(&st, msg.as_ref());
        }
    }

    /// A result line on stdout; none with `--json` (the JSON document carries it).
    pub(crate) fn result(&self, line: impl std::fmt::Display) {
        if !self.json {
            println!("{line}");
        }
    }

    /// Context beside the results on stdout (machine, inputs); none with `--quiet` or
    /// `--json`.
    pub(crate) fn detail(&self, line: impl std::fmt::Display) {
        if !self.quiet && !self.json {
            println!("{line}");
        }
    }

    /// `value` as pretty JSON on stdout, when `--json` was given; returns whether it was.
    pub(crate) fn json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<bool> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        }
        Ok(self.json)
    }

    fn line(&self, st: &PrinterState, msg: &str) {
        if let Some(bar) = &st.bar {
            bar.println(msg);
            return;
        }
        if self.quiet {
            return;
        }
        if self.tty && st.status.is_some() {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{msg}");
    }

    /// The run is over: end a status line rewritten in place.
    pub(crate) fn finish(&self) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if let Some(bar) = st.bar.take() {
            bar.finish();
        }
        if st.status.take().is_some() && self.tty && !self.quiet {
            eprintln!();
        }
    }
}

impl RunEvents for Printer {
    fn event(&self, e: RunEvent) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match e {
            RunEvent::Warning(w) => self.line(&st, &format!("warning: {w}")),
            RunEvent::Message(m) => self.line(&st, &m),
            RunEvent::Output(o) => println!("{o}"),
            RunEvent::Progress { label, total, unit } => {
                st.bar = Some(Progress::new(&label, total, unit, self.quiet));
            }
            RunEvent::Advance(n) => {
                if let Some(bar) = &st.bar {
                    bar.inc(n);
                }
            }
            RunEvent::ProgressDone => {
                if let Some(bar) = st.bar.take() {
                    bar.finish();
                }
            }
            // A bar counts finished ranks already.
            RunEvent::RankDone {
                rank,
                galaxies,
                host,
            } if st.bar.is_none() => self.line(
                &st,
                &format!("rank {rank} done: {galaxies} galaxies on {host}"),
            ),
            RunEvent::RankDone { .. } => {}
            RunEvent::RankFailed {
                rank,
                task,
                reason,
                retried_as,
            } => {
                let task = task.map(|t| format!(" (task {t})")).unwrap_or_default();
                let retry = retried_as
                    .map(|j| format!("; resubmitted as job {j}"))
                    .unwrap_or_default();
                self.line(&st, &format!("rank {rank}{task} failed: {reason}{retry}"));
            }
            RunEvent::Status { line, elapsed_s } => {
                if self.quiet {
                    return;
                }
                let shown = format!("{line} · {elapsed_s:.0} s");
                if self.tty {
                    eprint!("\r\x1b[2K{shown}");
                    let _ = std::io::stderr().flush();
                    st.status = Some(StatusLine {
                        last: line,
                        at: Instant::now(),
                    });
                } else if st
                    .status
                    .as_ref()
                    .is_none_or(|s| s.last != line || s.at.elapsed() > Duration::from_secs(30))
                {
                    eprintln!("{shown}");
                    st.status = Some(StatusLine {
                        last: line,
                        at: Instant::now(),
                    });
                }
            }
        }
    }
}
