//! Command-line definitions (clap derive). Each flag is defined once here, shared flags in
//! the flag groups (`ModelArg`, `BindArg`, `ResultsArg`, `ComputeArgs`, `BatchArg`, `PollArg`,
//! `JsonArg`, `SlurmArgs`; the Lambda group is `commands::aws::StackOptions`); help comes
//! from the doc comments. Engine options carry their engine's prefix (`--slurm-time`,
//! `--lambda-memory-mb`); their old names stay as hidden aliases. `crate::settings` turns
//! the parsed flags into settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// CAI-rs: photometric redshifts with AstroMAE over large sets of 5-band galaxy images,
/// data-parallel on this machine or a Slurm cluster, with data and results on disk or S3.
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
    Run(Box<RunArgs>),
    /// Gather the rank results of a run into combined_data.json, predictions.parquet and
    /// summary.json.
    Summarize(SummarizeArgs),
    /// Predict redshifts for one partition file and write them as CSV.
    Predict(PredictArgs),
    /// Measure model-only speed: galaxies/s over threads and batch sizes, beside this
    /// machine's measured f32 FMA peak; and the ViT blocks alone on one thread, timed in
    /// rounds alternating with the FMA probe, as a share of it.
    Bench(BenchArgs),
    /// Model files: make seeded weights, fit the last layer.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Synthesize, partition, fit a demo model, run and summarize, all on this machine.
    Demo(DemoArgs),
    /// The original's stats tables (per-run means with an IQR outlier filter, means over
    /// repeated runs, measured workflow durations) from one or more results locations.
    Stats(StatsArgs),
    /// One self-contained HTML report (summary, accuracy plots, per-rank timeline, sweeps,
    /// tables) from one or more results locations.
    Report(ReportArgs),
    /// The original's experiments: every partition size × batch size (× data size), repeated,
    /// one run per sub-folder of --results (`p25MB-b128-r1/`), for `cai stats` and
    /// `cai report`.
    ///
    /// --data is a dataset file (re-cut at each size), a folder of partitions (re-cut at
    /// each size), or a folder with one sub-folder of partitions per size, named as given
    /// (`25MB/`, `50MB/`…: the original's layout; used as they are). Re-cut partitions go
    /// under --work (default: <results>/partitions). --resume skips every experiment that
    /// has a summary.json and reruns the others from scratch (a timing run is not stitched
    /// together from two attempts).
    Sweep(Box<SweepArgs>),
    /// Run one rank of a plan (what each Slurm array task runs; rank from
    /// $SLURM_ARRAY_TASK_ID).
    Worker(WorkerArgs),
    /// Show how far a run is: ranks done, failed, missing; with Slurm jobs, reattach and
    /// follow them to the summary.
    Status(StatusArgs),
    /// AWS Step Functions + Lambda: generate the state machine and the CloudFormation
    /// template, package the Lambda zip, deploy or delete the stack, follow an execution.
    #[cfg(feature = "aws")]
    #[command(subcommand)]
    Aws(crate::commands::aws::AwsCommand),
    /// What a run cost (or will cost) on AWS Lambda + Step Functions, at dated list prices.
    Cost(crate::commands::cost::CostArgs),
}

// Flag groups: each shared flag is defined once here and flattened into the commands that
// take it (`#[command(flatten)]`); `crate::settings` resolves them. A new shared flag goes
// into its group (or a new group) here, never into a command's own struct.

/// `--model`: the model file a command loads.
#[derive(Debug, Default, Clone, Args)]
pub struct ModelArg {
    /// Model file (path or URL): safetensors, or the original's PyTorch `.pt` (whole module,
    /// bare or in DataParallel, or a state_dict), auto-detected; or any ONNX model (`.onnx`).
    #[arg(long, env = "CAI_MODEL")]
    pub model: Option<String>,
}

/// `--bind INPUT=TENSOR`: which data tensor feeds each input of an ONNX model.
#[derive(Debug, Default, Clone, Args)]
pub struct BindArg {
    /// Feed the ONNX model's input INPUT from the data tensor TENSOR (`images`,
    /// `magnitudes`, `redshift`); repeatable. Inputs not named take the tensor of their name.
    #[arg(long = "bind", value_name = "INPUT=TENSOR", value_parser = parse_bind)]
    pub binds: Vec<(String, String)>,
    /// The data tensor holding each galaxy's label (default `redshift`): judged against the
    /// model's `z` output as redshift (MAE, NMAD, η…), or, for a model without one, against
    /// its first vector output as class scores (accuracy, per-class precision/recall,
    /// confusion matrix, ROC AUC) in summary.json.
    #[arg(long, value_name = "TENSOR")]
    pub label: Option<String>,
}

/// `--results`: a run's results location.
#[derive(Debug, Default, Clone, Args)]
pub struct ResultsArg {
    /// Results location of a run (path or URL).
    #[arg(long, env = "CAI_RESULTS")]
    pub results: Option<String>,
}

/// `--threads`: inference threads.
#[derive(Debug, Default, Clone, Args)]
pub struct ThreadsArg {
    /// Inference threads (default: the cores this process may use; for `cai run`, cores /
    /// workers; for `cai worker`, $SLURM_CPUS_PER_TASK or the CPUs of this Slurm job).
    #[arg(long, env = "CAI_THREADS")]
    pub threads: Option<usize>,
}

/// `--precision`: the arithmetic of the model's trunk weights.
#[derive(Debug, Default, Clone, Args)]
pub struct PrecisionArg {
    /// Arithmetic of the model's trunk weights: f32 (default, the reference), bf16 (bf16
    /// weights and activations, f32 sums: z within about 3e-3 of f32; fast only on AVX-512
    /// BF16), int8 (8-bit weights: faster, z within about 1e-2 of f32), int16 (13-bit
    /// weights and 13-16-bit activations as i16: int8's speed, z within about 2e-4), or
    /// auto (`cai predict` only): the fastest per-layer mix whose max |Δz| against f32 on
    /// the first galaxies of the input stays within --max-dz, measured on this CPU and
    /// stored beside a local model as `<model>.precision.json`; see `cai bench --precision
    /// all`.
    #[arg(long, default_value = "f32", env = "CAI_PRECISION")]
    pub precision: cai_model::mixed::PrecisionMode,
}

/// Threads and precision: how a command computes.
#[derive(Debug, Default, Clone, Args)]
pub struct ComputeArgs {
    /// Inference threads.
    #[command(flatten)]
    pub threads: ThreadsArg,
    /// Arithmetic of the trunk weights.
    #[command(flatten)]
    pub precision: PrecisionArg,
}

/// `--batch-size`: galaxies per inference batch.
#[derive(Debug, Default, Clone, Args)]
pub struct BatchArg {
    /// Galaxies per inference batch (default: `cai run` the payload's, else 512; `cai
    /// predict` 256; `cai demo` 128).
    #[arg(long, env = "CAI_BATCH_SIZE")]
    pub batch_size: Option<usize>,
}

/// `--poll`: how often a followed run is looked at.
#[derive(Debug, Default, Clone, Args)]
pub struct PollArg {
    /// Seconds between two looks at running jobs (default: Slurm 2, AWS 5; Slurm also
    /// reads CAI_SLURM_POLL).
    #[arg(long, env = "CAI_POLL")]
    pub poll: Option<f64>,
}

/// `--json`: results as JSON on stdout.
#[derive(Debug, Default, Clone, Args)]
pub struct JsonArg {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
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
    /// The original's: a PyTorch `TensorDataset` per partition, `1.pt`, `2.pt`, … (images,
    /// magnitudes, redshift), which the original's `torch.load` reads.
    Pt,
}

/// `cai partition`
#[derive(Debug, Args)]
pub struct PartitionArgs {
    /// File to cut, detected from its bytes: a native dataset (as written by `cai synth`;
    /// streamed), a safetensors file of any tensors, the original's whole-dataset
    /// `TensorDataset` `.pt`, a NumPy `.npy` (one tensor, named after the file) or `.npz`
    /// (one tensor per member, named after it). All but the native dataset are read whole
    /// (a `.pt`'s pickle is interpreted, never executed): memory is about the file's size.
    /// Every tensor's first dimension is the galaxy.
    #[arg(long, short)]
    pub input: PathBuf,
    /// Names for the input's tensors, in order: a `.pt`'s positional tensors (default:
    /// AstroMAE's images,magnitudes,redshift, or else 0,1,…), an `.npy`'s one tensor, an
    /// `.npz`'s members.
    #[arg(long, value_delimiter = ',', value_name = "NAME,…")]
    pub names: Option<Vec<String>>,
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
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// This machine's cores.
    #[default]
    Local,
    /// A Slurm cluster: one job array, a task per rank, then a summarize job.
    #[cfg(feature = "slurm")]
    Slurm,
    /// AWS: deploy (or update) the CloudFormation stack, start the Step Functions workflow
    /// (Initialize → a Lambda per rank → Summarize) and follow it.
    #[cfg(feature = "aws")]
    Aws,
}

/// `cai run` (`Default` is for code that builds one: a local run with every option unset).
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// Location of the partitions (default: s3://data_bucket/data_prefix from --payload).
    #[arg(long, env = "CAI_DATA")]
    pub data: Option<String>,
    /// Location of the results (default: s3://bucket/result_path from --payload).
    #[command(flatten)]
    pub results: ResultsArg,
    /// The model.
    #[command(flatten)]
    pub model: ModelArg,
    /// ONNX input bindings.
    #[command(flatten)]
    pub bind: BindArg,
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
    /// Galaxies per inference batch.
    #[command(flatten)]
    pub batch: BatchArg,
    /// Where ranks run.
    #[arg(long, value_enum, default_value_t = EngineKind::Local, env = "CAI_ENGINE")]
    pub engine: EngineKind,
    /// Ranks run at once (default: fits the cores).
    #[arg(long, env = "CAI_WORKERS")]
    pub workers: Option<usize>,
    /// Threads per worker and precision.
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Once more than half the ranks have ended, a rank still running past this many times
    /// the median rank time gets a second copy (on Slurm, another task; on AWS, the follower
    /// invokes the Infer function for it); the first copy to finish counts (0: never).
    #[arg(long, default_value_t = cai_engine::local::DEFAULT_SPECULATE, env = "CAI_SPECULATE")]
    pub speculate: f64,
    /// Run only the ranks of the existing plan that have no result yet.
    #[arg(long)]
    pub resume: bool,
    /// The summary as JSON.
    #[command(flatten)]
    pub json: JsonArg,
    /// Polling of Slurm's queue, or of the AWS execution and the results location.
    #[command(flatten)]
    pub poll: PollArg,
    /// Submit (Slurm) or start (AWS) and return without following the run; `cai status`
    /// follows it later.
    #[arg(long)]
    pub detach: bool,
    /// Slurm options (with --engine slurm).
    #[cfg(feature = "slurm")]
    #[command(flatten)]
    pub slurm: SlurmArgs,
    /// AWS options (with --engine aws).
    #[cfg(feature = "aws")]
    #[command(flatten)]
    pub aws: crate::commands::aws::AwsRunArgs,
}

/// `cai summarize`
#[derive(Debug, Args)]
pub struct SummarizeArgs {
    /// The run (required).
    #[command(flatten)]
    pub results: ResultsArg,
    /// The summary as JSON.
    #[command(flatten)]
    pub json: JsonArg,
}

/// `cai predict`
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The model (required).
    #[command(flatten)]
    pub model: ModelArg,
    /// ONNX input bindings.
    #[command(flatten)]
    pub bind: BindArg,
    /// One partition file: native safetensors (any tensors), the original's `TensorDataset`
    /// `.pt`, or a NumPy `.npy` / `.npz` (tensors named as `cai partition` names them).
    #[arg(long, short)]
    pub input: String,
    /// CSV to write: `index,z_pred` plus `z_true` when the partition is labelled; then one
    /// column per other model output (`name`, or `name_0`, `name_1`, … for a vector).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Galaxies per batch.
    #[command(flatten)]
    pub batch: BatchArg,
    /// Threads and precision (auto: reused from `<model>.precision.json` while the
    /// model's hash, the kernel tier and the bound match).
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Bound on max |Δz| against f32 for `--precision auto`.
    #[arg(long, default_value_t = cai_model::mixed::DEFAULT_MAX_DZ)]
    pub max_dz: f64,
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
    /// Describe a model file of any form (safetensors or the original's .pt): form,
    /// hyperparameters, parameter count, FLOPs per galaxy. Never executes pickled code.
    Inspect(ModelInspectArgs),
    /// Convert a model file of any form to the native safetensors form.
    Convert(ModelConvertArgs),
}

/// `cai model inspect`
#[derive(Debug, Args)]
pub struct ModelInspectArgs {
    /// Model file (path or URL).
    pub file: String,
    /// The description as JSON.
    #[command(flatten)]
    pub json: JsonArg,
}

/// `cai model convert`
#[derive(Debug, Args)]
pub struct ModelConvertArgs {
    /// Model file (path or URL) in any form.
    pub file: String,
    /// Output safetensors file.
    #[arg(long, short)]
    pub out: PathBuf,
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
    /// The model to start from (required).
    #[command(flatten)]
    pub model: ModelArg,
    /// Labelled training data (a dataset or partition file).
    #[arg(long)]
    pub train: PathBuf,
    /// Output safetensors file.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Ridge penalty, relative to the mean feature variance.
    #[arg(long, default_value_t = 1e-3)]
    pub ridge: f64,
    /// Inference threads.
    #[command(flatten)]
    pub threads: ThreadsArg,
}

/// `cai bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The model (default: seeded weights of the full-size AstroMAE).
    #[command(flatten)]
    pub model: ModelArg,
    /// Seed of the seeded weights (without --model).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Thread counts to sweep, e.g. `1,2` (default: 1 to the number of cores).
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Batch sizes to sweep (default: 1,32,128,512).
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Least seconds of timed calls per case (after one warm-up call); also the CPU
    /// seconds (at most 3) of alternating rounds for the ViT blocks alone.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Least seconds per round of the FMA peak probe (best of three rounds).
    #[arg(long, default_value_t = 0.3)]
    pub peak_seconds: f64,
    /// Precisions to measure: `f32`, `bf16`, `int8`, `int16`, `auto` (the per-layer mix
    /// chosen within --max-dz on the original-structure model), a list (`f32,int16,auto`)
    /// or `all` (all of them). Each reduced one also reports its max and mean |Δz| against
    /// f32 on the benchmarked weights and on the full-size formula model of the committed
    /// parity fixture (and on --parity-dir's model).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    pub precision: Vec<String>,
    /// Bound on max |Δz| against f32 for `auto`.
    #[arg(long, default_value_t = cai_model::mixed::DEFAULT_MAX_DZ)]
    pub max_dz: f64,
    /// Galaxies of formula inputs on which each precision's |Δz| on the formula model is
    /// measured (besides the 32 `auto` calibrates on).
    #[arg(long, default_value_t = 64)]
    pub judge_galaxies: usize,
    /// PyTorch parity fixtures (`model.pt` and `1.pt` from scripts/parity/make_fixtures.py)
    /// on which the reduced precisions' |Δz| against f32 is also measured.
    #[arg(long, env = "CAI_PARITY_DIR")]
    pub parity_dir: Option<PathBuf>,
    /// The report as JSON.
    #[command(flatten)]
    pub json: JsonArg,
}

/// `cai stats`
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Results locations: runs, or folders of runs (a sweep; every folder below holding a
    /// plan.json, summary.json, combined_data.json or <rank>.json is one run).
    #[arg(required = true)]
    pub results: Vec<String>,
    /// Also write the per-run table as CSV here, the means and the workflow durations
    /// beside it as FILE-stem.means.csv and FILE-stem.workflow.csv.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

/// `cai report`
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Results locations: runs, or folders of runs (a sweep).
    #[arg(required = true)]
    pub results: Vec<String>,
    /// The HTML file to write.
    #[arg(long, short, default_value = cai_core::layout::REPORT_HTML)]
    pub out: PathBuf,
    /// Also write every figure as PNG into this folder.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Lambda memory (MB) for the cost estimate (default: each rank's peak memory).
    #[arg(long)]
    pub lambda_memory_mb: Option<f64>,
    /// Title of the report.
    #[arg(long)]
    pub title: Option<String>,
}

/// `cai sweep`
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Partition sizes, e.g. `25MB,50MB,100MB` (1 MB = 2^20 bytes); each names its run
    /// folders (`p25MB-…`) and its sub-folder of partitions.
    #[arg(long, value_delimiter = ',', required = true)]
    pub partition_sizes: Vec<String>,
    /// Galaxies per inference batch, e.g. `32,128,512`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub batch_sizes: Vec<usize>,
    /// Data sizes, e.g. `1GB,5GB`: each run reads the first partitions holding at most this
    /// much (the original's file_limit; at least one partition). Default: all the data.
    #[arg(long, value_delimiter = ',')]
    pub data_sizes: Vec<String>,
    /// Runs of each configuration (`-r1`, `-r2`, …; `cai stats` averages them).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Where partitions re-cut from --data go, one sub-folder per size (default:
    /// <results>/partitions).
    #[arg(long, value_name = "URL")]
    pub work: Option<String>,
    /// File format of re-cut partitions.
    #[arg(long, value_enum, default_value_t = PartitionFormat::Native)]
    pub partition_format: PartitionFormat,
    /// Run options, as `cai run` takes them (--data, --results, --model, --engine,
    /// --workers, --threads, engine options; --resume skips finished experiments).
    #[command(flatten)]
    pub run: RunArgs,
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
    #[command(flatten)]
    pub batch: BatchArg,
}

/// `cai worker`
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// URL of the run's plan.json.
    #[arg(long)]
    pub plan: String,
    /// The rank to run.
    #[arg(long, env = "SLURM_ARRAY_TASK_ID")]
    pub rank: usize,
    /// Threads and precision (`cai run --engine slurm` passes its --precision to every
    /// task).
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Token that must be in the results location's slurm/probe (exit 3 if not: the
    /// results location is not shared with this node).
    #[arg(long)]
    pub probe: Option<String>,
}

/// `cai status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run (required).
    #[command(flatten)]
    pub results: ResultsArg,
    /// Print the state once and return instead of following the jobs.
    #[arg(long)]
    pub once: bool,
    /// Polling of the jobs followed.
    #[command(flatten)]
    pub poll: PollArg,
    /// The summary as JSON.
    #[command(flatten)]
    pub json: JsonArg,
}

/// Slurm options of `cai run --engine slurm` (ignored by other engines).
#[cfg(feature = "slurm")]
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Slurm (--engine slurm)")]
pub struct SlurmArgs {
    /// sbatch --partition.
    #[arg(
        long = "slurm-partition",
        alias = "partition",
        env = "CAI_SLURM_PARTITION"
    )]
    pub partition: Option<String>,
    /// sbatch --account.
    #[arg(long = "slurm-account", alias = "account", env = "CAI_SLURM_ACCOUNT")]
    pub account: Option<String>,
    /// sbatch --qos.
    #[arg(long = "slurm-qos", alias = "qos", env = "CAI_SLURM_QOS")]
    pub qos: Option<String>,
    /// sbatch --time, per task (e.g. 1:00:00).
    #[arg(long = "slurm-time", alias = "time", env = "CAI_SLURM_TIME")]
    pub time: Option<String>,
    /// sbatch --mem, per task (e.g. 8G).
    #[arg(long = "slurm-mem", alias = "mem", env = "CAI_SLURM_MEM")]
    pub mem: Option<String>,
    /// sbatch --cpus-per-task; each task's worker uses exactly these CPUs.
    #[arg(long = "slurm-cpus-per-task", alias = "cpus-per-task")]
    pub cpus_per_task: Option<u32>,
    /// sbatch --gres (e.g. gpu:1).
    #[arg(long = "slurm-gres", alias = "gres")]
    pub gres: Option<String>,
    /// sbatch --constraint.
    #[arg(long = "slurm-constraint", alias = "constraint")]
    pub constraint: Option<String>,
    /// File of extra `#SBATCH` lines (or bare `--option=value` lines) for both jobs.
    #[arg(long = "slurm-extra", alias = "sbatch-extra", value_name = "FILE")]
    pub sbatch_extra: Option<PathBuf>,
    /// Shell run at the start of every job, e.g. "module load gcc".
    #[arg(long = "slurm-setup", alias = "setup", value_name = "SNIPPET")]
    pub setup: Option<String>,
    /// Array tasks run at once (`--array=…%MAX`; default: as many as the cluster gives).
    #[arg(long = "slurm-max-running", alias = "max-running", value_name = "MAX")]
    pub max_running: Option<usize>,
    /// Resubmit a failed task up to N times (only the failed indices).
    #[arg(long = "slurm-retries", alias = "retries", default_value_t = 0)]
    pub retries: u32,
    /// Job name.
    #[arg(long = "slurm-job-name", alias = "job-name", default_value = "cai")]
    pub job_name: String,
    /// Where the batch scripts and logs go (default: <results>/slurm for a local results
    /// location, else ./cai-slurm).
    #[arg(long, value_name = "DIR")]
    pub slurm_dir: Option<PathBuf>,
    /// The cai binary the jobs run (default: this one; it must be on a shared file system).
    #[arg(
        long = "slurm-cai-bin",
        alias = "cai-bin",
        value_name = "PATH",
        env = "CAI_SLURM_BIN"
    )]
    pub cai_bin: Option<PathBuf>,
    /// Write the plan and batch scripts and print the sbatch commands; submit nothing.
    #[arg(long = "slurm-dry-run", alias = "dry-run")]
    pub dry_run: bool,
}

/// `--bind INPUT=TENSOR` as `(INPUT, TENSOR)`.
pub fn parse_bind(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((i, t)) if !i.trim().is_empty() && !t.trim().is_empty() => {
            Ok((i.trim().to_string(), t.trim().to_string()))
        }
        _ => Err(format!(
            "`{s}` is not INPUT=TENSOR (e.g. --bind input_1=images)"
        )),
    }
}
