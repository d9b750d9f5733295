//! `cai aws …` and `cai run --engine aws`: the AWS workflow generated (`state-machine`,
//! `template`: no AWS calls), packaged (`package`), deployed (`deploy`, `destroy`), started
//! and followed (`run --engine aws`, `watch`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cai_core::cost::Arch;
use cai_core::payload::Payload;
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use cai_engine::aws::{state_machine, template, AwsConfig, FunctionArns, S3Prefix};
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};

use super::cost::ArchArg;
use crate::Outcome;

/// `cai aws …`
#[derive(Debug, Subcommand)]
pub enum AwsCommand {
    /// Write the Step Functions state machine (ASL JSON): Initialize → Distributed Map of
    /// Infer over the plan's items in S3 → Summarize.
    StateMachine(StateMachineArgs),
    /// Write the CloudFormation template: the three Lambda functions (provided.al2023),
    /// their least-privilege roles and log groups, and the state machine.
    Template(TemplateArgs),
    /// Build the Lambda deployment zip (`bootstrap` = a cai binary) for x86_64 or arm64,
    /// after checking the binary runs on provided.al2023 (CPU, glibc ≤ 2.34 or static).
    Package(PackageArgs),
    /// Package, upload the zip (and a local model) to S3, and create or update the
    /// CloudFormation stack; print the state machine's ARN.
    Deploy(DeployArgs),
    /// Follow a running execution to its end: ranks done and failed, then the summary.
    Watch(WatchArgs),
    /// Delete the stack (functions, roles, log groups, state machine). Data, results and
    /// the uploaded artifacts stay.
    Destroy(DestroyArgs),
}

/// What the stack reads and writes, and how it runs.
#[derive(Debug, Args)]
pub struct StackArgs {
    /// Partitions, read only (s3://bucket/prefix).
    #[arg(long, env = "CAI_DATA")]
    pub data: String,
    /// Results location (s3://bucket/prefix); the functions may write only here.
    #[arg(long, env = "CAI_RESULTS")]
    pub results: String,
    /// Model file, read only (s3://bucket/key.safetensors; `deploy` also takes a local file
    /// and uploads it beside the zip).
    #[arg(long, env = "CAI_MODEL")]
    pub model: String,
    /// How the stack runs.
    #[command(flatten)]
    pub options: StackOptions,
    /// Arithmetic of the model's trunk weights in the Infer function (see `cai run
    /// --help`).
    #[arg(long, default_value = "f32", env = "CAI_PRECISION")]
    pub precision: cai_model::kernels::Precision,
}

/// How the stack runs (shared by `cai aws …` and `cai run --engine aws`).
#[derive(Debug, Default, Args)]
pub struct StackOptions {
    /// Stack name (functions are `<stack>-initialize`, `<stack>-infer`, `<stack>-summarize`).
    #[arg(long, default_value = "cai", env = "CAI_STACK")]
    pub stack: String,
    /// Memory of the Infer function in MB (1,769 MB = 1 vCPU; 10,240 MB = 6 vCPUs).
    #[arg(long, default_value_t = 10_240)]
    pub memory_mb: u32,
    /// CPU architecture of the functions.
    #[arg(long, value_enum, default_value_t = ArchArg::X86_64)]
    pub arch: ArchArg,
    /// Ranks running at once (0: as many as Step Functions allows).
    #[arg(long, default_value_t = 1000)]
    pub max_concurrency: u32,
    /// Percentage of ranks that may fail before the map stops (0–100).
    #[arg(long, default_value_t = 0.0)]
    pub tolerated_failure_percentage: f64,
    /// Infer timeout in seconds (at most 900).
    #[arg(long, default_value_t = 900)]
    pub timeout_s: u32,
    /// Days the log groups keep logs.
    #[arg(long, default_value_t = 14)]
    pub log_retention_days: u32,
}

/// Which AWS account and region (default: the usual AWS_* variables and ~/.aws files).
#[derive(Debug, Default, Args)]
pub struct AccountArgs {
    /// Named profile from ~/.aws/config and ~/.aws/credentials.
    #[arg(long, env = "AWS_PROFILE")]
    pub profile: Option<String>,
    /// Region (default: the profile's or AWS_REGION).
    #[arg(long)]
    pub region: Option<String>,
}

/// Where the deployment zip comes from and goes.
#[derive(Debug, Default, Args)]
pub struct ArtifactArgs {
    /// Where the zip (and a local --model) are uploaded
    /// (default: s3://<results bucket>/cai-artifacts/<stack>).
    #[arg(long, value_name = "S3_URL")]
    pub artifacts: Option<String>,
    /// The cai binary to deploy (default: this one; for arm64 build one with
    /// scripts/aws/build.sh arm64).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

/// `cai run --engine aws` options.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "AWS (--engine aws)")]
pub struct AwsRunArgs {
    /// Start this existing state machine (ARN) instead of deploying the stack: for a stack
    /// deployed by `cai aws deploy` or by other tooling.
    #[arg(long, value_name = "ARN")]
    pub state_machine: Option<String>,
    /// How the stack runs.
    #[command(flatten)]
    pub options: StackOptions,
    /// Which account.
    #[command(flatten)]
    pub account: AccountArgs,
    /// The zip.
    #[command(flatten)]
    pub artifacts: ArtifactArgs,
}

/// `cai aws package`
#[derive(Debug, Args)]
pub struct PackageArgs {
    /// CPU architecture of the functions.
    #[arg(long, value_enum, default_value_t = ArchArg::X86_64)]
    pub arch: ArchArg,
    /// The cai binary to package (default: this one).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// The zip to write (default: cai-lambda-<arch>.zip).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

/// `cai aws deploy`
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Stack settings.
    #[command(flatten)]
    pub stack: StackArgs,
    /// Which account.
    #[command(flatten)]
    pub account: AccountArgs,
    /// The zip.
    #[command(flatten)]
    pub artifacts: ArtifactArgs,
}

/// `cai aws watch`
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The execution's ARN (printed by `cai run --engine aws`).
    #[arg(long)]
    pub execution: String,
    /// The run's results location (s3://bucket/prefix).
    #[arg(long, env = "CAI_RESULTS")]
    pub results: String,
    /// Seconds between two looks.
    #[arg(long, default_value_t = 5.0)]
    pub poll: f64,
    /// Which account.
    #[command(flatten)]
    pub account: AccountArgs,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `cai aws destroy`
#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Stack name.
    #[arg(long, default_value = "cai", env = "CAI_STACK")]
    pub stack: String,
    /// Which account.
    #[command(flatten)]
    pub account: AccountArgs,
}

/// `cai aws state-machine`
#[derive(Debug, Args)]
pub struct StateMachineArgs {
    /// Stack settings.
    #[command(flatten)]
    pub stack: StackArgs,
    /// Output file (default: stdout).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Fill in the functions' ARNs for this region (default: `${…FunctionArn}` placeholders,
    /// as CloudFormation's DefinitionSubstitutions expects).
    #[arg(long, requires = "account")]
    pub region: Option<String>,
    /// AWS account id for the ARNs (with --region).
    #[arg(long, requires = "region")]
    pub account: Option<String>,
}

/// `cai aws template`
#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// Stack settings.
    #[command(flatten)]
    pub stack: StackArgs,
    /// Output file (default: stdout).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

fn s3(what: &str, url: &str) -> Result<S3Prefix> {
    S3Prefix::parse(url)
        .with_context(|| format!("--{what} must be an s3://bucket/prefix URL, got {url:?}"))
}

fn config(a: &StackArgs) -> Result<AwsConfig> {
    let model = s3("model", &a.model)?;
    anyhow::ensure!(
        !model.prefix.is_empty(),
        "--model must name an object (s3://bucket/key), got {:?}",
        a.model
    );
    let mut cfg = config_of(
        &a.options,
        s3("data", &a.data)?,
        s3("results", &a.results)?,
        model,
    )?;
    cfg.precision = a.precision;
    Ok(cfg)
}

fn config_of(
    o: &StackOptions,
    data: S3Prefix,
    results: S3Prefix,
    model: S3Prefix,
) -> Result<AwsConfig> {
    anyhow::ensure!(
        (1..=900).contains(&o.timeout_s),
        "--timeout-s must be 1..=900 (Lambda's limit), got {}",
        o.timeout_s
    );
    anyhow::ensure!(
        (128..=10_240).contains(&o.memory_mb),
        "--memory-mb must be 128..=10240 (Lambda's range), got {}",
        o.memory_mb
    );
    anyhow::ensure!(
        (0.0..=100.0).contains(&o.tolerated_failure_percentage),
        "--tolerated-failure-percentage must be 0..=100"
    );
    let mut cfg = AwsConfig::new(&o.stack, data, results, model);
    cfg.memory_mb = o.memory_mb;
    cfg.arch = o.arch.into();
    cfg.max_concurrency = o.max_concurrency;
    cfg.tolerated_failure_percentage = o.tolerated_failure_percentage;
    cfg.timeout_s = o.timeout_s;
    cfg.log_retention_days = o.log_retention_days;
    Ok(cfg)
}

fn write(out: &Option<PathBuf>, doc: &serde_json::Value, what: &str, quiet: bool) -> Result<()> {
    let mut text = serde_json::to_string_pretty(doc)?;
    text.push('\n');
    match out {
        Some(path) => {
            super::predict::write_atomic(path, text.as_bytes())?;
            if !quiet {
                eprintln!("wrote the {what} to {}", path.display());
            }
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `cai aws …`.
pub async fn aws(cmd: AwsCommand, quiet: bool) -> Result<Outcome> {
    match cmd {
        AwsCommand::StateMachine(a) => {
            let cfg = config(&a.stack)?;
            let arns = match (&a.region, &a.account) {
                (Some(r), Some(acct)) => FunctionArns::of_stack(&cfg, r, acct),
                _ => FunctionArns::placeholders(),
            };
            write(&a.out, &state_machine(&cfg, &arns), "state machine", quiet)?;
        }
        AwsCommand::Template(a) => {
            let cfg = config(&a.stack)?;
            write(&a.out, &template(&cfg), "CloudFormation template", quiet)?;
        }
        AwsCommand::Package(a) => {
            let arch: Arch = a.arch.into();
            let out = a
                .out
                .unwrap_or_else(|| PathBuf::from(format!("cai-lambda-{}.zip", arch.lambda_name())));
            let pkg = build_package(a.binary.as_deref(), arch, &out)?;
            println!("{}", pkg.path.display());
            if !quiet {
                eprintln!(
                    "zip {:.1} MB (sha256 {}), bootstrap: {}",
                    pkg.zip_bytes as f64 / 1e6,
                    &pkg.sha256[..16],
                    pkg.binary.describe()
                );
            }
        }
        AwsCommand::Deploy(a) => {
            let sdk =
                cai_aws::sdk_config(a.account.profile.as_deref(), a.account.region.as_deref())
                    .await;
            let mut cfg = config_of(
                &a.stack.options,
                s3("data", &a.stack.data)?,
                s3("results", &a.stack.results)?,
                S3Prefix::new("unset", "unset"),
            )?;
            cfg.precision = a.stack.precision;
            let d = deploy_stack(&sdk, &mut cfg, &a.stack.model, &a.artifacts, quiet).await?;
            println!("{}", d.state_machine_arn);
        }
        AwsCommand::Watch(a) => {
            let sdk =
                cai_aws::sdk_config(a.account.profile.as_deref(), a.account.region.as_deref())
                    .await;
            let results = StorageUrl::parse(&a.results)?;
            return follow(&sdk, &a.execution, &results, secs(a.poll), a.json, quiet).await;
        }
        AwsCommand::Destroy(a) => {
            let sdk =
                cai_aws::sdk_config(a.account.profile.as_deref(), a.account.region.as_deref())
                    .await;
            let gone = cai_aws::delete_stack(&sdk, &a.stack, Duration::from_secs(2), |e| {
                stack_event(e, quiet)
            })
            .await
            .with_context(|| format!("cannot delete the stack {}", a.stack))?;
            if !quiet {
                eprintln!(
                    "{}",
                    if gone {
                        format!("deleted the stack {}", a.stack)
                    } else {
                        format!("no stack {}: nothing to delete", a.stack)
                    }
                );
            }
        }
    }
    Ok(Outcome::Ok)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(if s.is_finite() {
        s.clamp(0.05, 3600.0)
    } else {
        5.0
    })
}

fn stack_event(e: &cai_aws::StackEvent, quiet: bool) {
    if !quiet {
        match &e.reason {
            Some(r) => eprintln!("  {:<24} {} ({r})", e.resource, e.status),
            None => eprintln!("  {:<24} {}", e.resource, e.status),
        }
    }
}

/// Check and zip a binary (default: this process's own executable).
fn build_package(binary: Option<&Path>, arch: Arch, out: &Path) -> Result<cai_aws::Package> {
    let binary = match binary {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe().context("cannot find this cai binary")?,
    };
    cai_aws::package(&binary, arch, out)
        .with_context(|| format!("cannot package {} for Lambda", binary.display()))
}

/// Package this binary, upload the zip (and `model` when it is a local file) to the
/// artifacts location, point `cfg.model` at the model in S3, and create or update the stack.
async fn deploy_stack(
    sdk: &cai_aws::SdkConfig,
    cfg: &mut AwsConfig,
    model: &str,
    art: &ArtifactArgs,
    quiet: bool,
) -> Result<cai_aws::Deployed> {
    let artifacts_url = art
        .artifacts
        .clone()
        .unwrap_or_else(|| format!("s3://{}/cai-artifacts/{}", cfg.results.bucket, cfg.stack));
    let artifacts = s3("artifacts", &artifacts_url)?;
    let store = StorageUrl::parse(&artifacts_url)?;

    let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
    let pkg = build_package(art.binary.as_deref(), cfg.arch, &dir.path().join("cai.zip"))?;
    let zip_key = pkg.key_name();
    if store.exists(&zip_key).await? {
        if !quiet {
            eprintln!("code: {} (already uploaded)", store.url_of(&zip_key));
        }
    } else {
        let bytes = std::fs::read(&pkg.path)
            .with_context(|| format!("cannot read {}", pkg.path.display()))?;
        if !quiet {
            eprintln!(
                "uploading the code ({:.1} MB zip; {}) to {}",
                pkg.zip_bytes as f64 / 1e6,
                pkg.binary.describe(),
                store.url_of(&zip_key)
            );
        }
        store.put(&zip_key, bytes).await?;
    }

    cfg.model = match S3Prefix::parse(model) {
        Some(m) if !m.prefix.is_empty() => m,
        Some(_) => bail!("--model must name an object (s3://bucket/key), got {model:?}"),
        None => {
            let bytes =
                std::fs::read(model).with_context(|| format!("cannot read the model {model}"))?;
            let ext = Path::new(model)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("safetensors");
            let key = format!("model-{}.{ext}", &hex::encode(Sha256::digest(&bytes))[..16]);
            if !store.exists(&key).await? {
                if !quiet {
                    eprintln!("uploading the model {model} to {}", store.url_of(&key));
                }
                store.put(&key, bytes).await?;
            }
            S3Prefix::new(&artifacts.bucket, &artifacts.key(&key))
        }
    };

    if !quiet {
        eprintln!("deploying the stack {}", cfg.stack);
    }
    let d = cai_aws::deploy(
        sdk,
        &cfg.stack,
        &template(cfg),
        &artifacts.bucket,
        &artifacts.key(&zip_key),
        Duration::from_secs(2),
        |e| stack_event(e, quiet),
    )
    .await
    .with_context(|| format!("cannot deploy the stack {}", cfg.stack))?;
    if !quiet {
        eprintln!("stack {} {}: {}", d.stack, d.action, d.state_machine_arn);
    }
    Ok(d)
}

/// `cai run --engine aws`: deploy (or update) the stack for the payload's locations, start
/// the workflow with the payload, and follow it.
pub async fn run(a: &crate::cli::RunArgs, quiet: bool) -> Result<Outcome> {
    if a.resume {
        bail!(
            "--resume is for the local and Slurm engines; on AWS run again: ranks are \
             idempotent, and Step Functions retries failed ranks itself"
        );
    }
    let mut payload = match &a.payload {
        Some(p) => super::run::read_payload(p)?,
        None => Payload::default(),
    };
    // Flags override the payload, as for the other engines.
    if let Some(d) = &a.data {
        let d = s3("data", d)?;
        payload.data_bucket = Some(d.bucket);
        payload.data_prefix = Some(d.prefix);
    }
    if let Some(r) = &a.results {
        let r = s3("results", r)?;
        payload.bucket = Some(r.bucket);
        payload.result_path = Some(r.prefix);
    }
    if let Some(b) = a.batch_size {
        payload.batch_size = Some(b as u64);
    }
    if let Some(f) = a.file_limit {
        payload.file_limit = Some(f as u64);
    }
    if let Some(w) = a.world_size {
        payload.world_size = Some(w as u64);
    }
    let data = payload.data_url().context(
        "no data location: give --data s3://… (or --payload with data_bucket and data_prefix)",
    )?;
    let results = payload.results_url().context(
        "no results location: give --results s3://… (or --payload with bucket and result_path)",
    )?;
    // With --state-machine, the model is the one the stack was deployed with.
    let model = a.model.clone();

    let sdk = cai_aws::sdk_config(
        a.aws.account.profile.as_deref(),
        a.aws.account.region.as_deref(),
    )
    .await;
    let state_machine = match &a.aws.state_machine {
        Some(arn) => {
            if a.precision != cai_model::kernels::Precision::F32 && !quiet {
                eprintln!(
                    "warning: --precision {} is ignored with --state-machine: the stack's \
                     Infer function uses the precision it was deployed with (cai aws deploy \
                     --precision)",
                    a.precision
                );
            }
            arn.clone()
        }
        None => {
            let model = model
                .context("no model: give --model (s3://bucket/key, or a local file to upload)")?;
            let mut cfg = config_of(
                &a.aws.options,
                s3("data", &data)?,
                s3("results", &results)?,
                S3Prefix::new("unset", "unset"),
            )?;
            cfg.precision = a.precision;
            deploy_stack(&sdk, &mut cfg, &model, &a.aws.artifacts, quiet)
                .await?
                .state_machine_arn
        }
    };
    let input = serde_json::to_value(&payload).context("cannot encode the payload")?;
    let execution = cai_aws::start_execution(&sdk, &state_machine, &input)
        .await
        .context("cannot start the workflow")?;
    let region = sdk
        .region()
        .map_or("us-east-1".to_string(), |r| r.to_string());
    println!("execution  {execution}");
    if !quiet {
        eprintln!(
            "console: https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{execution}"
        );
    }
    if a.detach {
        if !quiet {
            eprintln!("follow it with: cai aws watch --execution {execution} --results {results}");
        }
        return Ok(Outcome::Ok);
    }
    let results = StorageUrl::parse(&results)?;
    follow(&sdk, &execution, &results, secs(a.poll), a.json, quiet).await
}

/// Follow an execution to its end with a progress bar of ranks, then print the summary.
async fn follow(
    sdk: &cai_aws::SdkConfig,
    execution: &str,
    results: &StorageUrl,
    poll: Duration,
    json: bool,
    quiet: bool,
) -> Result<Outcome> {
    let mut bar: Option<crate::progress::Progress> = None;
    let mut shown = 0u64;
    let finished = cai_aws::watch(sdk, execution, results, poll, |p| {
        let Some(world) = p.world_size else {
            if !quiet {
                eprintln!("{}: initializing", p.status);
            }
            return;
        };
        let b = bar.get_or_insert_with(|| {
            crate::progress::Progress::new("ranks", world as u64, "ranks", quiet)
        });
        let now = (p.done + p.failed) as u64;
        if now > shown {
            b.inc(now - shown);
            shown = now;
        }
        if p.failed > 0 {
            b.println(&format!("{} rank(s) failed so far", p.failed));
        }
    })
    .await
    .context("lost track of the execution")?;
    if let Some(b) = &bar {
        b.finish();
    }
    let status = &finished.progress.status;
    if !quiet {
        eprintln!("execution {status}");
        if let (Some(e), c) = (&finished.error, &finished.cause) {
            eprintln!("  error {e}: {}", c.as_deref().unwrap_or(""));
        }
    }
    match results.get_opt(cai_core::layout::SUMMARY).await? {
        Some(b) => {
            let summary: Summary = serde_json::from_slice(&b).with_context(|| {
                format!("cannot read {}", results.url_of(cai_core::layout::SUMMARY))
            })?;
            super::run::print_summary(&summary, json)?;
            if finished.succeeded() && summary.complete() {
                return Ok(Outcome::Ok);
            }
        }
        None => {
            if !quiet {
                eprintln!("no summary.json under {}", results.url_of(""));
            }
        }
    }
    if finished.succeeded() {
        Ok(Outcome::SomeFailed)
    } else {
        bail!("the execution ended {status}: {execution}")
    }
}
