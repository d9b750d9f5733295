//! Errors of the Slurm engine: each names the command, file or location at fault.

use std::path::PathBuf;

/// What went wrong talking to Slurm or preparing a submission.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Slurm command is not installed here.
    #[error(
        "`{program}` was not found on PATH: submit from a Slurm login node (or load the Slurm \
         module first, e.g. `module load slurm`)"
    )]
    Missing {
        /// The command (sbatch, scontrol, scancel).
        program: String,
    },
    /// A Slurm command could not be started.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// The command.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The cluster refused a request; `message` is what Slurm said.
    #[error("the cluster refused `{command}`: {message}")]
    Refused {
        /// The command line.
        command: String,
        /// Slurm's message (its stderr), as it is.
        message: String,
    },
    /// A Slurm command printed something this engine cannot read.
    #[error("`{command}` printed something unexpected: {output:?}")]
    Unexpected {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
    /// The compute nodes do not see the results location the submitting machine wrote to.
    #[error(
        "the results location {results} is not shared with the compute nodes: {detail}. Put \
         --results (and --data, --model) on a file system every node mounts, or use s3://"
    )]
    NotShared {
        /// The results location.
        results: String,
        /// What the task found (host, probe file, log).
        detail: String,
    },
    /// The `cai` binary could not be run on a compute node.
    #[error(
        "task {task} could not run {cai_bin} on node {node} (exit {code}): put cai on a file \
         system every node mounts, or give --cai-bin (see {log})"
    )]
    NoBinary {
        /// The array task (`<job>_<index>`).
        task: String,
        /// The binary the script runs.
        cai_bin: String,
        /// Node it ran on.
        node: String,
        /// Shell exit code (126 or 127).
        code: i32,
        /// Its log file.
        log: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An option or input file has a value that cannot be used.
    #[error("{what}: {reason}")]
    Invalid {
        /// The option or `file:line`.
        what: String,
        /// Why.
        reason: String,
    },
    /// No submission is recorded at a results location.
    #[error(
        "no Slurm jobs are recorded under {results} (no {key}): was the run submitted with \
         `cai run --engine slurm`?"
    )]
    NoJobs {
        /// Results location.
        results: String,
        /// The key looked for.
        key: String,
    },
    /// Jobs of an earlier submission to the same results location are still queued or running.
    #[error(
        "Slurm jobs {jobs} still run for {results}: wait (`cai status --results {results}`) or \
         cancel them (`scancel {jobs}`) first"
    )]
    StillRunning {
        /// Results location.
        results: String,
        /// Job ids, space separated.
        jobs: String,
    },
    /// Planning, storage or summarizing failed.
    #[error(transparent)]
    Engine(Box<crate::Error>),
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        Error::Engine(Box::new(e))
    }
}

impl From<cai_core::Error> for Error {
    fn from(e: cai_core::Error) -> Self {
        Error::from(crate::Error::Core(e))
    }
}

/// Result with the Slurm engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Engine(inner) => *inner,
            other => crate::Error::Backend(Box::new(other)),
        }
    }
}
