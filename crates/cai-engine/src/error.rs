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
    /// A predictions file could not be written or read.
    #[error("predictions {file}: {reason}")]
    Parquet {
        /// File name.
        file: String,
        /// Why.
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
    /// An engine's backend failed (Slurm refused a job, an AWS call failed…); the error is
    /// the backend's own, naming the command or call.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// A background task died.
    #[error("worker task failed: {0}")]
    Task(String),
}

/// Result with cai-engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
