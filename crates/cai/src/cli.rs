//! Command-line definitions (clap derive). Each flag is defined once here; help comes from
//! the doc comments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// CAI-rs: photometric redshifts with AstroMAE over large sets of 5-band galaxy images,
/// data-parallel on this machine (more engines to come: Slurm, AWS Step Functions + Lambda).
///
/// The workflow is the original CAI's: partition the data, plan (Initialize), run one task
/// per rank (distributed inference), summarize. Every location is a path or URL.
#[derive(Debug, Parser)]
#[command(name = "cai", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Print only results and errors (no progress, no log lines).
    #[arg(long, short, global = true, env = "CAI_QUIET")]
    pub quiet: bool,
    /// More log output (-v info, -vv debug).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Synthesize a labelled dataset of plausible SDSS-like galaxies (images, magnitudes, z).
    Synth(SynthArgs),
    /// Cut a dataset in index order into partitions of a given size, with a manifest.
    Partition(PartitionArgs),
    /// Plan and run inference over partitions, then summarize (the whole workflow).
    Run(RunArgs),
    /// Gather the rank results of a run into combined_data.json, predictions.parquet and
    /// summary.json.
    Summarize(SummarizeArgs),
    /// Predict redshifts for one partition file and write them as CSV.
    Predict(PredictArgs),
    /// Model files: make seeded weights, fit the last layer.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Synthesize, partition, fit a demo model, run and summarize, all on this machine.
    Demo(DemoArgs),
}

/// `cai synth`
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Number of galaxies.
    #[arg(long, short = 'n')]
    pub galaxies: u64,
    /// Output dataset file (native safetensors format).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Random seed: the same seed gives the same galaxies.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Partition file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PartitionFormat {
    /// Native: one safetensors file per partition (`00001.safetensors`).
    Native,
}

/// `cai partition`
#[derive(Debug, Args)]
pub struct PartitionArgs {
    /// Dataset file to cut (as written by `cai synth`).
    #[arg(long, short)]
    pub input: PathBuf,
    /// Partition size: `25MB`, `100MB`, `1.5GB` … (1 MB = 2^20 bytes, as the original's
    /// 25MB ≈ 1,280 galaxies).
    #[arg(long, short, default_value = "25MB")]
    pub size: String,
    /// Where the partitions and manifest.json go (path or URL).
    #[arg(long, short)]
    pub out: String,
    /// File format of the partitions.
    #[arg(long, value_enum, default_value_t = PartitionFormat::Native)]
    pub format: PartitionFormat,
}

/// Engines that run ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// This machine's cores.
    Local,
}

/// `cai run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Location of the partitions (default: s3://data_bucket/data_prefix from --payload).
    #[arg(long, env = "CAI_DATA")]
    pub data: Option<String>,
    /// Location of the results (default: s3://bucket/result_path from --payload).
    #[arg(long, env = "CAI_RESULTS")]
    pub results: Option<String>,
    /// Model file (safetensors state_dict with the original's key names).
    #[arg(long, env = "CAI_MODEL")]
    pub model: Option<String>,
    /// The original's input payload JSON (bucket, file_limit, batch_size, result_path,
    /// data_bucket, data_prefix, …), accepted as it is. Flags override its values.
    #[arg(long)]
    pub payload: Option<PathBuf>,
    /// Use only the first N partitions.
    #[arg(long)]
    pub file_limit: Option<usize>,
    /// Number of ranks (default: one per partition).
    #[arg(long)]
    pub world_size: Option<usize>,
    /// Galaxies per inference batch (default: the payload's, else 512).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Where ranks run.
    #[arg(long, value_enum, default_value_t = EngineKind::Local, env = "CAI_ENGINE")]
    pub engine: EngineKind,
    /// Ranks run at once (default: fits the cores).
    #[arg(long, env = "CAI_WORKERS")]
    pub workers: Option<usize>,
    /// Inference threads per worker (default: cores / workers).
    #[arg(long, env = "CAI_THREADS")]
    pub threads: Option<usize>,
    /// Run only the ranks of the existing plan that have no result yet.
    #[arg(long)]
    pub resume: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `cai summarize`
#[derive(Debug, Args)]
pub struct SummarizeArgs {
    /// Results location of a run.
    #[arg(long, env = "CAI_RESULTS")]
    pub results: String,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `cai predict`
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Model file.
    #[arg(long, env = "CAI_MODEL")]
    pub model: String,
    /// One partition file (native safetensors).
    #[arg(long, short)]
    pub input: String,
    /// CSV to write: `index,z_pred` plus `z_true` when the partition is labelled.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Galaxies per batch.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Inference threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `cai model …`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Write deterministic AstroMAE weights with PyTorch's default init scales (untrained:
    /// for tests and demos).
    Init(ModelInitArgs),
    /// Fit only the last Linear layer (concat_block.2) by ridge regression on the
    /// penultimate features of labelled galaxies; everything else stays as it is.
    Fit(ModelFitArgs),
}

/// `cai model init`
#[derive(Debug, Args)]
pub struct ModelInitArgs {
    /// Seed for the weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output safetensors file.
    #[arg(long, short)]
    pub out: PathBuf,
}

/// `cai model fit`
#[derive(Debug, Args)]
pub struct ModelFitArgs {
    /// Model to start from.
    #[arg(long)]
    pub model: String,
    /// Labelled training data (a dataset or partition file).
    #[arg(long)]
    pub train: PathBuf,
    /// Output safetensors file.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Ridge penalty, relative to the mean feature variance.
    #[arg(long, default_value_t = 1e-3)]
    pub ridge: f64,
    /// Inference threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `cai demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Galaxies to run inference on.
    #[arg(long, default_value_t = 20_000)]
    pub galaxies: u64,
    /// Labelled galaxies (a different seed) to fit the demo model's last layer on.
    #[arg(long, default_value_t = 2_000)]
    pub train_galaxies: u64,
    /// Working directory for every output.
    #[arg(long, default_value = "demo-out")]
    pub dir: PathBuf,
    /// Partition size.
    #[arg(long, default_value = "25MB")]
    pub size: String,
    /// Galaxies per inference batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
}
