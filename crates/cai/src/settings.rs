//! Every setting resolved in one place, in one order: the flag, else its `CAI_*` (or
//! `SLURM_*`) environment variable, else the payload (`--payload`, resolved by the engine's
//! planner in `cai_engine`), else the default named here. Flags and their variables come
//! from the flag groups in `crate::cli` (clap's `env = …`); the defaults and the variables
//! that are not a flag's (`CAI_SLURM_POLL`, `SLURM_CPUS_PER_TASK`…) are read only here.

use std::time::Duration;

use anyhow::{bail, Result};
use cai_model::kernels::Precision;
use cai_model::mixed::PrecisionMode;

use crate::cli::{BatchArg, ComputeArgs, ModelArg, PollArg, ResultsArg, ThreadsArg};

/// `cai predict --batch-size` default.
pub const PREDICT_BATCH: usize = 256;
/// `cai demo --batch-size` default.
pub const DEMO_BATCH: usize = 128;
/// `--poll` default for Slurm (seconds): `squeue` is cheap.
pub const SLURM_POLL_S: f64 = 2.0;
/// `--poll` default for AWS (seconds): each look is a few API calls.
pub const AWS_POLL_S: f64 = 5.0;
/// The older name of `CAI_POLL` for Slurm runs, still honoured after it.
pub const SLURM_POLL_ENV: &str = "CAI_SLURM_POLL";

/// A required flag's value, or an error naming the flag and its variable.
fn required<'a>(value: &'a Option<String>, flag: &str, env: &str) -> Result<&'a str> {
    match value.as_deref() {
        Some(v) => Ok(v),
        None => bail!("give {flag} (or set {env})"),
    }
}

impl ModelArg {
    /// `--model`, for commands that need one.
    pub fn required(&self) -> Result<&str> {
        required(&self.model, "--model", "CAI_MODEL")
    }
}

impl ResultsArg {
    /// `--results`, for commands that need one.
    pub fn required(&self) -> Result<&str> {
        required(&self.results, "--results", "CAI_RESULTS")
    }
}

impl ThreadsArg {
    /// `--threads` for a `cai worker`: the flag, else what Slurm gave the task
    /// (`SLURM_CPUS_PER_TASK`, else `SLURM_CPUS_ON_NODE` inside a job), else every core.
    pub fn for_worker(&self) -> usize {
        self.threads
            .or_else(|| env_usize("SLURM_CPUS_PER_TASK"))
            .or_else(|| {
                std::env::var_os("SLURM_JOB_ID").and_then(|_| env_usize("SLURM_CPUS_ON_NODE"))
            })
            .unwrap_or_else(cai_engine::local::available_cores)
            .max(1)
    }
}

impl ComputeArgs {
    /// `--threads` as given (the engine or command picks its default).
    pub fn threads(&self) -> Option<usize> {
        self.threads.threads
    }

    /// `--precision` as given (`auto` included).
    pub fn mode(&self) -> PrecisionMode {
        self.precision.precision
    }

    /// `--precision` for a command that runs one fixed precision (`auto` is `cai
    /// predict`'s only).
    pub fn fixed(&self, command: &str) -> Result<Precision> {
        fixed(self.mode(), command)
    }
}

/// `mode` as a fixed precision, or an error saying `command` does not take `auto`.
pub fn fixed(mode: PrecisionMode, command: &str) -> Result<Precision> {
    match mode {
        PrecisionMode::Fixed(p) => Ok(p),
        PrecisionMode::Auto => bail!(
            "{command} does not take --precision auto (only `cai predict` and `cai bench` do); \
             give f32, bf16, int8 or int16"
        ),
    }
}

impl BatchArg {
    /// `--batch-size`, else `default`; at least 1.
    pub fn or(&self, default: usize) -> usize {
        self.batch_size.unwrap_or(default).max(1)
    }
}

/// Which engine a poll interval is for (each has its own default and floor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollFor {
    /// Slurm's queue: default [`SLURM_POLL_S`], also read from [`SLURM_POLL_ENV`].
    #[cfg_attr(not(feature = "slurm"), allow(dead_code))]
    Slurm,
    /// An AWS execution: default [`AWS_POLL_S`].
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    Aws,
}

impl PollArg {
    /// The poll interval for `engine`: `--poll`/`CAI_POLL`, else (Slurm) `CAI_SLURM_POLL`,
    /// else the engine's default; clamped to the engine's floor .. 1 h.
    #[cfg_attr(not(any(feature = "slurm", feature = "aws")), allow(dead_code))]
    pub fn interval(&self, engine: PollFor) -> Duration {
        let (floor, default) = match engine {
            PollFor::Slurm => (0.1, SLURM_POLL_S),
            PollFor::Aws => (0.05, AWS_POLL_S),
        };
        let secs = self
            .poll
            .or_else(|| match engine {
                PollFor::Slurm => std::env::var(SLURM_POLL_ENV).ok()?.trim().parse().ok(),
                PollFor::Aws => None,
            })
            .filter(|s: &f64| s.is_finite())
            .unwrap_or(default);
        Duration::from_secs_f64(secs.clamp(floor, 3600.0))
    }
}

/// A positive whole number from the environment variable `name`.
fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_names_flag_and_variable() {
        let m = ModelArg { model: None };
        let err = m.required().unwrap_err().to_string();
        assert!(
            err.contains("--model") && err.contains("CAI_MODEL"),
            "{err}"
        );
        let r = ResultsArg {
            results: Some("x".into()),
        };
        assert_eq!(r.required().unwrap(), "x");
    }

    #[test]
    fn poll_defaults_floor_and_cap_per_engine() {
        let none = PollArg { poll: None };
        assert_eq!(none.interval(PollFor::Aws), Duration::from_secs(5));
        let tiny = PollArg { poll: Some(0.0) };
        assert_eq!(tiny.interval(PollFor::Slurm), Duration::from_millis(100));
        assert_eq!(tiny.interval(PollFor::Aws), Duration::from_millis(50));
        let huge = PollArg { poll: Some(1e9) };
        assert_eq!(huge.interval(PollFor::Aws), Duration::from_secs(3600));
        let nan = PollArg {
            poll: Some(f64::NAN),
        };
        assert_eq!(nan.interval(PollFor::Aws), Duration::from_secs(5));
    }

    #[test]
    fn auto_is_refused_where_one_precision_runs() {
        assert_eq!(
            fixed(PrecisionMode::Fixed(Precision::Int8), "cai run").unwrap(),
            Precision::Int8
        );
        let err = fixed(PrecisionMode::Auto, "cai run")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cai run") && err.contains("auto"), "{err}");
    }

    #[test]
    fn batch_default_and_floor() {
        assert_eq!(BatchArg { batch_size: None }.or(PREDICT_BATCH), 256);
        assert_eq!(
            BatchArg {
                batch_size: Some(0)
            }
            .or(PREDICT_BATCH),
            1
        );
        assert_eq!(
            BatchArg {
                batch_size: Some(7)
            }
            .or(PREDICT_BATCH),
            7
        );
    }
}
