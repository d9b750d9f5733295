//! `cai cost`: what a run cost on AWS Lambda + Step Functions (from its `<rank>.json`
//! files), or would cost (from its plan, or a galaxy count, and a throughput).

use anyhow::{bail, Context, Result};
use cai_core::cost::{estimate, measured, Arch, PRICES};
use cai_core::results::{load_plan, rank_reports};
use cai_core::StorageUrl;
use clap::{Args, ValueEnum};

use crate::printer::Printer;
use crate::Outcome;

/// Lambda architectures on the command line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchArg {
    /// Intel/AMD.
    #[default]
    #[value(name = "x86_64")]
    X86_64,
    /// Graviton (20 % cheaper per GB-second).
    #[value(name = "arm64")]
    Arm64,
}

impl From<ArchArg> for Arch {
    fn from(a: ArchArg) -> Self {
        match a {
            ArchArg::X86_64 => Arch::X86_64,
            ArchArg::Arm64 => Arch::Arm64,
        }
    }
}

/// `cai cost`
#[derive(Debug, Args)]
pub struct CostArgs {
    /// Results location of a run: prices its `<rank>.json` durations, or with --throughput
    /// its plan.json.
    #[command(flatten)]
    pub results: crate::cli::ResultsArg,
    /// Lambda memory of the Infer function in MB.
    #[arg(
        long = "lambda-memory-mb",
        alias = "memory-mb",
        default_value_t = 10_240
    )]
    pub memory_mb: u32,
    /// Lambda architecture.
    #[arg(long = "lambda-arch", alias = "arch", value_enum, default_value_t = ArchArg::X86_64)]
    pub arch: ArchArg,
    /// Seconds added to every invocation (cold start, model load), beyond the rank's clock.
    #[arg(long, default_value_t = 0.0)]
    pub overhead_s: f64,
    /// Estimate instead: galaxies per second per Infer invocation (measure it with a
    /// `cai run` at the same memory/vCPUs).
    #[arg(long)]
    pub throughput: Option<f64>,
    /// Estimate without a plan: this many galaxies in all (with --throughput).
    #[arg(long, requires_all = ["throughput", "partition_galaxies"])]
    pub galaxies: Option<u64>,
    /// Galaxies per partition (one partition per rank) for --galaxies; 25 MB ≈ 1,280.
    #[arg(long)]
    pub partition_galaxies: Option<u64>,
    /// The cost as JSON.
    #[command(flatten)]
    pub json: crate::cli::JsonArg,
}

/// `cai cost`.
pub async fn cost(a: CostArgs, printer: &Printer) -> Result<Outcome> {
    let memory = f64::from(a.memory_mb);
    let arch: Arch = a.arch.into();
    if let Some(t) = a.throughput {
        anyhow::ensure!(
            t.is_finite() && t > 0.0,
            "--throughput must be > 0, got {t}"
        );
    }
    let est = |ranks: &[u64], partitions, t| {
        estimate(ranks, partitions, t, a.overhead_s, memory, arch, &PRICES)
    };
    let c = match (a.galaxies, a.throughput, &a.results.results) {
        (Some(total), Some(t), _) => {
            let per = a.partition_galaxies.unwrap_or(0);
            anyhow::ensure!(per > 0, "--partition-galaxies must be > 0");
            let ranks = cai_core::cost::split_galaxies(total, per);
            est(&ranks, ranks.len() as u64, t)
        }
        (None, Some(t), Some(results)) => {
            let url = StorageUrl::parse(results)?;
            let Some(plan) = load_plan(&url).await? else {
                bail!("no plan.json under {results}: run `cai run` (or plan) first");
            };
            let ranks = plan.galaxies_per_rank();
            if ranks.iter().all(|&g| g == 0) {
                bail!("the plan under {results} has no galaxy counts (no manifest.json): give --galaxies and --partition-galaxies");
            }
            est(&ranks, plan.partitions.len() as u64, t)
        }
        (_, _, Some(results)) => {
            let url = StorageUrl::parse(results)?;
            let reps = rank_reports(&url)
                .await
                .with_context(|| format!("cannot read the rank reports under {results}"))?;
            if reps.is_empty() {
                bail!("no <rank>.json under {results}: nothing ran yet (give --throughput to estimate)");
            }
            measured(&reps, a.overhead_s, memory, arch, &PRICES)
        }
        _ => bail!("give --results, or --galaxies with --partition-galaxies and --throughput"),
    };
    if !printer.with_json(a.json.json).json(&c)? {
        printer.result(c);
    }
    Ok(Outcome::Ok)
}
