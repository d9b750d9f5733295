//! Errors of cai-engine.

/// What went wrong while running or summarizing. Variants name the file or rank at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Storage, plan or report problem from cai-core.
    #[error(transparent)]
    Core(#[from] cai_core::Error),
    /// A partition could not be read.
    #[error(transparent)]
    Data(#[from] cai_data::Error),
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] cai_model::Error),
    /// A partition does not fit the model.
    #[error("{file}: {reason}")]
    Partition {
        /// URL of the partition.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A rank index outside the plan.
    #[error("rank {rank} is not in the plan (world size {world_size})")]
    NoSuchRank {
        /// Rank asked for.
        rank: usize,
        /// Ranks in the plan.
        world_size: usize,
    },
    /// The same galaxy was predicted twice across ranks.
    #[error("galaxy {row} of {partition} appears in the predictions of more than one rank")]
    Duplicate {
        /// Partition key.
        partition: String,
        /// Row in the partition.
        row: i32,
    },
    /// A background task (a rank, a partition download, inference, the model loader)
    /// panicked or was cancelled before it finished.
    #[error("{task} task failed: {source}")]
    Join {
        /// What the task was doing (`rank 3`, `download of …`, `model loader`…).
        task: String,
        /// The runtime's report of the panic or cancellation.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A rank task panicked while holding the lock on the run's outcome.
    #[error("the {what} lock was poisoned by a panicking task")]
    Poisoned {
        /// What the lock guards.
        what: &'static str,
    },
    /// A document we write could not be encoded as JSON.
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        /// What was being written (plan, rank report, summary…).
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The inference thread pool could not be started.
    #[error("cannot start {threads} inference threads: {source}")]
    ThreadPool {
        /// Threads asked for.
        threads: usize,
        /// Why rayon refused.
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
    /// The model returned fewer predictions than the batch had galaxies.
    #[error("{file}: the model returned {got} predictions for a batch of {expected}")]
    ShortBatch {
        /// URL of the partition being predicted.
        file: String,
        /// Galaxies in the batch.
        expected: usize,
        /// Predictions returned.
        got: usize,
    },
    /// A rank was stopped before its time limit (a Lambda invocation's) ran out.
    #[error(
        "rank {rank} stopped {margin_s} s before the invocation's time limit: the rank needs \
         more time than one invocation has; give it fewer partitions (a larger world_size) or \
         the function more memory (more vCPUs)"
    )]
    Deadline {
        /// The rank.
        rank: usize,
        /// Seconds before the limit at which it was stopped.
        margin_s: u64,
    },
    /// A run request that cannot start as given; `hint` says what to give.
    #[error("{what}: {hint}")]
    Request {
        /// What is missing or wrong.
        what: String,
        /// What to do about it.
        hint: String,
    },
    /// The model of a run could not be loaded.
    #[error("cannot load the model {model}")]
    LoadModel {
        /// The model's location.
        model: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// Another copy of a speculated rank committed its outputs first; this copy's are
    /// discarded (not a failure).
    #[error("rank {rank}: another copy finished first; this copy's outputs are discarded")]
    Superseded {
        /// The rank.
        rank: usize,
    },
    /// A `cai worker` task cannot see the results location its plan was written to (the
    /// Slurm probe is missing or stale): the location is not shared with this node.
    #[error("{message}")]
    NotShared {
        /// What was looked for, where, on which host.
        message: String,
    },
    /// A rank's process was stopped by SIGTERM (scancel, a time limit, preemption); the
    /// failure is recorded.
    #[error("{message}")]
    Terminated {
        /// The rank.
        rank: usize,
        /// What stopped it, where.
        message: String,
    },
    /// One run of a sweep failed (not a failed rank: the run itself could not go on).
    #[error("run {run} failed")]
    SweepRun {
        /// The run's folder (`p25MB-b128-r1`).
        run: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An engine's backend failed (Slurm refused a job, an AWS call failed…); the error is
    /// the backend's own, naming the command or call.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// Result with cai-engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the run was cancelled by its caller rather than failed (see
    /// [`cai_model::Error::Cancelled`]); cancelled ranks are not recorded as failed.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Model(cai_model::Error::Cancelled { .. }))
    }

    /// Whether this copy of a rank lost to another copy ([`Error::Superseded`]): not a
    /// failure, and not recorded as one.
    pub fn is_superseded(&self) -> bool {
        matches!(self, Error::Superseded { .. })
    }
}
