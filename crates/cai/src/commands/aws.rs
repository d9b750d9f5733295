//! `cai aws …` and the flags of `cai run --engine aws`: the AWS workflow generated
//! (`state-machine`, `template`: no AWS calls), packaged (`package`), deployed (`deploy`,
//! `destroy`) and followed (`watch`). The work is `cai_aws`'s (`AwsEngine`, `deploy_run`);
//! this module parses flags and prints.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use cai_aws::{Artifacts, AwsEngine, StackSettings};
use cai_core::cost::Arch;
use cai_engine::aws::{state_machine, template, AwsConfig, FunctionArns};
use cai_engine::engine::{Engine, RunEvent, RunEvents};
use clap::{Args, Subcommand};

use super::cost::ArchArg;
use super::engines::Printer;
use crate::cli::{JsonArg, ModelArg, PollArg, PrecisionArg, ResultsArg};
use crate::settings::PollFor;
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
    /// Results location (s3://bucket/prefix; required); the functions may write only here.
    #[command(flatten)]
    pub results: ResultsArg,
    /// Model file, read only (s3://bucket/key.safetensors; required; `deploy` also takes a
    /// local file and uploads it beside the zip).
    #[command(flatten)]
    pub model: ModelArg,
    /// How the stack runs.
    #[command(flatten)]
    pub options: StackOptions,
    /// Arithmetic of the model's trunk weights in the Infer function.
    #[command(flatten)]
    pub precision: PrecisionArg,
}

/// How the stack runs (shared by `cai aws …` and `cai run --engine aws`).
#[derive(Debug, Default, Args)]
pub struct StackOptions {
    /// Stack name (functions are `<stack>-initialize`, `<stack>-infer`, `<stack>-summarize`).
    #[arg(
        long = "aws-stack",
        alias = "stack",
        default_value = "cai",
        env = "CAI_STACK"
    )]
    pub stack: String,
    /// Memory of the Infer function in MB (1,769 MB = 1 vCPU; 10,240 MB = 6 vCPUs).
    #[arg(
        long = "lambda-memory-mb",
        alias = "memory-mb",
        default_value_t = 10_240
    )]
    pub memory_mb: u32,
    /// CPU architecture of the functions.
    #[arg(long = "lambda-arch", alias = "arch", value_enum, default_value_t = ArchArg::X86_64)]
    pub arch: ArchArg,
    /// Ranks running at once (0: as many as Step Functions allows).
    #[arg(
        long = "lambda-max-concurrency",
        alias = "max-concurrency",
        default_value_t = 1000
    )]
    pub max_concurrency: u32,
    /// Percentage of ranks that may fail before the map stops (0–100).
    #[arg(
        long = "lambda-tolerated-failure-percentage",
        alias = "tolerated-failure-percentage",
        default_value_t = 0.0
    )]
    pub tolerated_failure_percentage: f64,
    /// Infer timeout in seconds (at most 900).
    #[arg(long = "lambda-timeout-s", alias = "timeout-s", default_value_t = 900)]
    pub timeout_s: u32,
    /// Days the log groups keep logs.
    #[arg(
        long = "lambda-log-retention-days",
        alias = "log-retention-days",
        default_value_t = 14
    )]
    pub log_retention_days: u32,
}

/// Which AWS account and region (default: the usual AWS_* variables and ~/.aws files).
#[derive(Debug, Default, Args)]
pub struct AccountArgs {
    /// Named profile from ~/.aws/config and ~/.aws/credentials.
    #[arg(long = "aws-profile", alias = "profile", env = "AWS_PROFILE")]
    pub profile: Option<String>,
    /// Region (default: the profile's or AWS_REGION).
    #[arg(long = "aws-region", alias = "region")]
    pub region: Option<String>,
}

/// Where the deployment zip comes from and goes.
#[derive(Debug, Default, Args)]
pub struct ArtifactArgs {
    /// Where the zip (and a local --model) are uploaded
    /// (default: s3://<results bucket>/cai-artifacts/<stack>).
    #[arg(long = "aws-artifacts", alias = "artifacts", value_name = "S3_URL")]
    pub artifacts: Option<String>,
    /// The cai binary to deploy (default: this one; for arm64 build one with
    /// scripts/aws/build.sh arm64).
    #[arg(long = "lambda-binary", alias = "binary", value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

/// `cai run --engine aws` options.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "AWS (--engine aws)")]
pub struct AwsRunArgs {
    /// Start this existing state machine (ARN) instead of deploying the stack: for a stack
    /// deployed by `cai aws deploy` or by other tooling.
    #[arg(
        long = "aws-state-machine",
        alias = "state-machine",
        value_name = "ARN"
    )]
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
    /// The execution's ARN (printed by `cai run --engine aws`; default: the one recorded at
    /// the results location).
    #[arg(long)]
    pub execution: Option<String>,
    /// The run's results location (s3://bucket/prefix; required).
    #[command(flatten)]
    pub results: ResultsArg,
    /// Seconds between two looks.
    #[command(flatten)]
    pub poll: PollArg,
    /// Which account.
    #[command(flatten)]
    pub account: AccountArgs,
    /// The summary as JSON.
    #[command(flatten)]
    pub json: JsonArg,
}

/// `cai aws destroy`
#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Stack name.
    #[arg(
        long = "aws-stack",
        alias = "stack",
        default_value = "cai",
        env = "CAI_STACK"
    )]
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

impl StackOptions {
    /// The library's settings for these flags.
    pub fn settings(&self) -> StackSettings {
        StackSettings {
            stack: self.stack.clone(),
            memory_mb: self.memory_mb,
            arch: self.arch.into(),
            max_concurrency: self.max_concurrency,
            tolerated_failure_percentage: self.tolerated_failure_percentage,
            timeout_s: self.timeout_s,
            log_retention_days: self.log_retention_days,
        }
    }
}

impl ArtifactArgs {
    /// The library's artifact settings for these flags.
    pub fn artifacts(&self) -> Artifacts {
        Artifacts {
            location: self.artifacts.clone(),
            binary: self.binary.clone(),
        }
    }
}

/// The stack's configuration for `a`'s locations (the model may be a local file only when
/// `local_model`: `deploy` uploads it).
fn config(a: &StackArgs, local_model: bool) -> Result<AwsConfig> {
    let model = if local_model {
        None
    } else {
        Some(a.model.required()?)
    };
    let mut cfg = a
        .options
        .settings()
        .config_at(&a.data, a.results.required()?, model)?;
    cfg.precision = crate::settings::fixed(a.precision.precision, "cai aws")?;
    Ok(cfg)
}

fn write(
    out: &Option<PathBuf>,
    doc: &serde_json::Value,
    what: &str,
    printer: &Printer,
) -> Result<()> {
    let mut text = serde_json::to_string_pretty(doc)?;
    text.push('\n');
    match out {
        Some(path) => {
            cai_core::storage::write_file_atomic(path, text.as_bytes())?;
            printer.note(format!("wrote the {what} to {}", path.display()));
        }
        None => print!("{text}"),
    }
    Ok(())
}

async fn sdk(a: &AccountArgs) -> cai_aws::SdkConfig {
    cai_aws::sdk_config(a.profile.as_deref(), a.region.as_deref()).await
}

/// `cai aws …`.
pub async fn aws(cmd: AwsCommand, printer: &Printer) -> Result<Outcome> {
    match cmd {
        AwsCommand::StateMachine(a) => {
            let cfg = config(&a.stack, false)?;
            let arns = match (&a.region, &a.account) {
                (Some(r), Some(acct)) => FunctionArns::of_stack(&cfg, r, acct),
                _ => FunctionArns::placeholders(),
            };
            write(
                &a.out,
                &state_machine(&cfg, &arns),
                "state machine",
                printer,
            )?;
        }
        AwsCommand::Template(a) => {
            let cfg = config(&a.stack, false)?;
            write(&a.out, &template(&cfg), "CloudFormation template", printer)?;
        }
        AwsCommand::Package(a) => {
            let arch: Arch = a.arch.into();
            let out = a
                .out
                .unwrap_or_else(|| PathBuf::from(format!("cai-lambda-{}.zip", arch.lambda_name())));
            let pkg = cai_aws::package_binary(a.binary.as_deref(), arch, &out)?;
            println!("{}", pkg.path.display());
            printer.note(format!(
                "zip {:.1} MB (sha256 {}), bootstrap: {}",
                pkg.zip_bytes as f64 / 1e6,
                &pkg.sha256[..16],
                pkg.binary.describe()
            ));
        }
        AwsCommand::Deploy(a) => {
            let sdk = sdk(&a.account).await;
            let mut cfg = config(&a.stack, true)?;
            let d = cai_aws::deploy_run(
                &sdk,
                &mut cfg,
                a.stack.model.required()?,
                &a.artifacts.artifacts(),
                printer,
            )
            .await?;
            println!("{}", d.state_machine_arn);
        }
        AwsCommand::Watch(a) => {
            let printer = &printer.with_json(a.json.json);
            let engine = AwsEngine {
                poll: a.poll.interval(PollFor::Aws),
                ..AwsEngine::new(sdk(&a.account).await)
            };
            let report = engine
                .attach(a.results.required()?, a.execution.as_deref(), printer)
                .await;
            printer.finish();
            return super::engines::finish(&report?, printer);
        }
        AwsCommand::Destroy(a) => {
            let sdk = sdk(&a.account).await;
            let gone = cai_aws::delete_stack(&sdk, &a.stack, Duration::from_secs(2), |e| {
                printer.event(RunEvent::Message(cai_aws::stack_event_line(e)))
            })
            .await
            .with_context(|| format!("cannot delete the stack {}", a.stack))?;
            printer.note(if gone {
                format!("deleted the stack {}", a.stack)
            } else {
                format!("no stack {}: nothing to delete", a.stack)
            });
        }
    }
    Ok(Outcome::Ok)
}
