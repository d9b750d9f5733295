//! `cai aws state-machine` and `cai aws template`: the AWS workflow, generated (no AWS
//! calls; the output is plain JSON to deploy with the AWS CLI or console).

use std::path::PathBuf;

use anyhow::{Context, Result};
use cai_engine::aws::{state_machine, template, AwsConfig, FunctionArns, S3Prefix};
use clap::{Args, Subcommand};

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
    /// Model file, read only (s3://bucket/key.safetensors).
    #[arg(long, env = "CAI_MODEL")]
    pub model: String,
    /// Stack name (functions are `<stack>-initialize`, `<stack>-infer`, `<stack>-summarize`).
    #[arg(long, default_value = "cai")]
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
    /// Output file (default: stdout).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

/// `cai aws state-machine`
#[derive(Debug, Args)]
pub struct StateMachineArgs {
    /// Stack settings.
    #[command(flatten)]
    pub stack: StackArgs,
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
    anyhow::ensure!(
        (1..=900).contains(&a.timeout_s),
        "--timeout-s must be 1..=900 (Lambda's limit), got {}",
        a.timeout_s
    );
    anyhow::ensure!(
        (128..=10_240).contains(&a.memory_mb),
        "--memory-mb must be 128..=10240 (Lambda's range), got {}",
        a.memory_mb
    );
    anyhow::ensure!(
        (0.0..=100.0).contains(&a.tolerated_failure_percentage),
        "--tolerated-failure-percentage must be 0..=100"
    );
    let mut cfg = AwsConfig::new(
        &a.stack,
        s3("data", &a.data)?,
        s3("results", &a.results)?,
        model,
    );
    cfg.memory_mb = a.memory_mb;
    cfg.arch = a.arch.into();
    cfg.max_concurrency = a.max_concurrency;
    cfg.tolerated_failure_percentage = a.tolerated_failure_percentage;
    cfg.timeout_s = a.timeout_s;
    cfg.log_retention_days = a.log_retention_days;
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
            write(
                &a.stack.out,
                &state_machine(&cfg, &arns),
                "state machine",
                quiet,
            )?;
        }
        AwsCommand::Template(a) => {
            let cfg = config(&a.stack)?;
            write(
                &a.stack.out,
                &template(&cfg),
                "CloudFormation template",
                quiet,
            )?;
        }
    }
    Ok(Outcome::Ok)
}
