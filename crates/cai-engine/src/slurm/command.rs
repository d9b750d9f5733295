//! Talking to Slurm through its commands: `sbatch --parsable`, `scontrol show job -o`,
//! `scontrol update`, `scancel`. No `sacct`: it needs slurmdbd, which small clusters lack;
//! `scontrol` knows finished jobs for `MinJobAge` seconds, and after that the results
//! location says what happened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{Error, Result};
use super::script::parse_indices;

/// Where the Slurm commands are (default: on `PATH`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmCommands {
    /// Directory holding `sbatch`, `scontrol`, `scancel`; `None` searches `PATH`.
    pub bin_dir: Option<PathBuf>,
}

/// One record of `scontrol show job -o`: a job, one array task, or the array's pending rest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobRecord {
    /// `JobId`.
    pub job_id: String,
    /// `ArrayJobId`, for array tasks.
    pub array_job_id: Option<String>,
    /// The array indices this record stands for (one, or the pending rest).
    pub indices: Vec<usize>,
    /// `JobState` (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, …).
    pub state: String,
    /// `Reason`.
    pub reason: String,
    /// `ExitCode` as (code, signal).
    pub exit: (i32, i32),
    /// `NodeList`.
    pub node: String,
    /// `StdErr`.
    pub stderr: String,
    /// `StdOut`.
    pub stdout: String,
}

impl JobRecord {
    /// Still queued or running (not a final state).
    pub fn active(&self) -> bool {
        is_active_state(&self.state)
    }

    /// The task name for messages: `<array>_<index>` or the job id.
    pub fn task_name(&self) -> String {
        match (&self.array_job_id, self.indices.as_slice()) {
            (Some(a), [i]) => format!("{a}_{i}"),
            _ => self.job_id.clone(),
        }
    }
}

/// Slurm job states that are not final.
pub fn is_active_state(state: &str) -> bool {
    matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "REQUEUE_FED"
            | "REQUEUE_HOLD"
            | "RESIZING"
            | "SIGNALING"
            | "STAGE_OUT"
            | "RESV_DEL_HOLD"
    )
}

/// Split one `scontrol show job -o` line into its `Key=Value` fields (a value with spaces
/// keeps the words that follow it up to the next `Key=`).
pub fn parse_fields(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut last: Option<String> = None;
    for word in line.split_whitespace() {
        let key_like = word
            .split_once('=')
            .filter(|(k, _)| {
                !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/:_".contains(&b))
            })
            .map(|(k, v)| (k.to_string(), v.to_string()));
        match key_like {
            Some((k, v)) => {
                out.insert(k.clone(), v);
                last = Some(k);
            }
            None => {
                if let Some(v) = last.as_ref().and_then(|k| out.get_mut(k)) {
                    v.push(' ');
                    v.push_str(word);
                }
            }
        }
    }
    out
}

/// Parse the output of `scontrol show job -o` (one job per line).
pub fn parse_jobs(text: &str) -> Vec<JobRecord> {
    text.lines()
        .filter(|l| l.contains("JobId="))
        .map(|l| {
            let f = parse_fields(l);
            let get = |k: &str| f.get(k).cloned().unwrap_or_default();
            let array_job_id = f.get("ArrayJobId").cloned();
            let indices = f
                .get("ArrayTaskId")
                .and_then(|s| parse_indices(s))
                .unwrap_or_default();
            let exit = get("ExitCode")
                .split_once(':')
                .map(|(a, b)| (a.parse().unwrap_or(0), b.parse().unwrap_or(0)))
                .unwrap_or((0, 0));
            JobRecord {
                job_id: get("JobId"),
                array_job_id,
                indices,
                state: get("JobState"),
                reason: get("Reason"),
                exit,
                node: get("NodeList"),
                stderr: get("StdErr"),
                stdout: get("StdOut"),
            }
        })
        .collect()
}

/// A value of `scontrol show config` output (`Key = value` lines).
pub fn parse_config_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// The job id from `sbatch --parsable` output (`12` or `12;cluster`).
pub fn parse_job_id(output: &str) -> Option<String> {
    let id = output.trim().lines().last()?.split(';').next()?.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

impl SlurmCommands {
    fn program(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// Run a Slurm command; stdout on success, [`Error::Refused`] with its stderr otherwise.
    pub fn run(&self, name: &str, args: &[String]) -> Result<String> {
        let command = format!("{name} {}", args.join(" "));
        let out = Command::new(self.program(name))
            .args(args)
            .output()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => Error::Missing {
                    program: name.to_string(),
                },
                _ => Error::Spawn {
                    program: name.to_string(),
                    source,
                },
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(Error::Refused {
                command,
                message: if stderr.is_empty() {
                    format!("exit status {} and no message", out.status)
                } else {
                    stderr
                },
            });
        }
        Ok(stdout)
    }

    /// Whether `sbatch` can be run here.
    pub fn check(&self) -> Result<()> {
        self.run("sbatch", &["--version".to_string()]).map(|_| ())
    }

    /// Submit a script with extra command-line options; returns the job id.
    pub fn sbatch(&self, options: &[String], script: &Path) -> Result<String> {
        let mut args = vec!["--parsable".to_string()];
        args.extend(options.iter().cloned());
        args.push(script.display().to_string());
        let out = self.run("sbatch", &args)?;
        parse_job_id(&out).ok_or_else(|| Error::Unexpected {
            command: format!("sbatch {}", args.join(" ")),
            output: out,
        })
    }

    /// The records of a job (all tasks of an array); empty when Slurm no longer knows it.
    pub fn show_job(&self, job_id: &str) -> Result<Vec<JobRecord>> {
        let args = vec![
            "show".to_string(),
            "job".to_string(),
            "-o".to_string(),
            job_id.to_string(),
        ];
        match self.run("scontrol", &args) {
            Ok(out) => Ok(parse_jobs(&out)),
            Err(Error::Refused { message, .. }) if message.contains("Invalid job id") => {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// The cluster's `MaxArraySize` (`scontrol show config`), if it says.
    pub fn max_array_size(&self) -> Result<Option<usize>> {
        let out = self.run("scontrol", &["show".to_string(), "config".to_string()])?;
        Ok(parse_config_value(&out, "MaxArraySize").and_then(|v| v.parse().ok()))
    }

    /// Change a pending job's dependency.
    pub fn set_dependency(&self, job_id: &str, dependency: &str) -> Result<()> {
        self.run(
            "scontrol",
            &[
                "update".to_string(),
                format!("JobId={job_id}"),
                format!("Dependency={dependency}"),
            ],
        )
        .map(|_| ())
    }

    /// Cancel jobs (or tasks, `<array>_<index>`).
    pub fn scancel(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.run("scancel", ids).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "JobId=2 ArrayJobId=1 ArrayTaskId=0 JobName=cai UserId=root(0) JobState=COMPLETED Reason=None Dependency=(null) ExitCode=0:0 NodeList=vm WorkDir=/tmp/a b StdErr=/l/cai-1_0.err StdIn=/dev/null StdOut=/l/cai-1_0.out Power=\n\
JobId=3 ArrayJobId=1 ArrayTaskId=1 JobName=cai JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0 NodeList=vm StdErr=/l/cai-1_1.err\n\
JobId=1 ArrayJobId=1 ArrayTaskId=2-4%2 JobName=cai JobState=PENDING Reason=JobArrayTaskLimit ExitCode=0:0 NodeList=(null)\n";

    #[test]
    fn reads_scontrol_records() {
        let r = parse_jobs(SHOW);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].indices, vec![0]);
        assert_eq!(r[0].state, "COMPLETED");
        assert_eq!(r[0].stderr, "/l/cai-1_0.err");
        assert_eq!(r[0].task_name(), "1_0");
        assert_eq!(r[1].exit, (1, 0));
        assert!(!r[1].active());
        assert_eq!(r[2].indices, vec![2, 3, 4]);
        assert!(r[2].active());
        assert_eq!(
            parse_fields(SHOW.lines().next().unwrap())["WorkDir"],
            "/tmp/a b"
        );
    }

    #[test]
    fn config_values() {
        let text = "Configuration data as of 2026-12-06T07:00:00\nMailProg                = /bin/mail\nMaxArraySize            = 5\nMaxJobCount             = 10000\n";
        assert_eq!(
            parse_config_value(text, "MaxArraySize").as_deref(),
            Some("5")
        );
        assert_eq!(
            parse_config_value(text, "MaxJobCount").as_deref(),
            Some("10000")
        );
        assert_eq!(parse_config_value(text, "Nope"), None);
    }

    #[test]
    fn job_ids() {
        assert_eq!(parse_job_id("12\n").as_deref(), Some("12"));
        assert_eq!(parse_job_id("12;cluster").as_deref(), Some("12"));
        assert_eq!(parse_job_id("Submitted batch job 12"), None);
    }

    #[test]
    fn a_missing_command_is_named() {
        let c = SlurmCommands {
            bin_dir: Some("/nonexistent-slurm".into()),
        };
        let e = c.check().unwrap_err();
        assert!(matches!(e, Error::Missing { .. }), "{e}");
        assert!(e.to_string().contains("`sbatch` was not found"), "{e}");
    }
}
