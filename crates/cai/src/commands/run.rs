//! `cai run` (plan → map → summarize) and `cai summarize`.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cai_core::payload::Payload;
use cai_core::plan::{Plan, PlanRequest};
use cai_core::results::{load_plan, missing_ranks};
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use cai_engine::local::{available_cores, default_parallelism, LocalEngine, RankEvent};
use cai_engine::stages::{clear_results, load_model_with, plan_run};
use cai_engine::summarize::summarize as summarize_results;

use crate::cli::{RunArgs, SummarizeArgs};
use crate::progress::Progress;
use crate::Outcome;

/// Read the original's `payload.json` (`--payload`), for every engine.
pub(crate) fn read_payload(path: &std::path::Path) -> Result<Payload> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the payload {}", path.display()))?;
    Ok(Payload::from_json(&path.display().to_string(), &bytes)?)
}

/// Resolve where things are and plan (or reload the plan, with `--resume`).
pub(crate) async fn plan_or_resume(a: &RunArgs) -> Result<(Arc<Plan>, Vec<usize>)> {
    let payload = a.payload.as_deref().map(read_payload).transpose()?;
    let results = a
        .results
        .clone()
        .or_else(|| payload.as_ref().and_then(Payload::results_url))
        .context(
            "no results location: give --results (or --payload with bucket and result_path)",
        )?;
    let results_url = StorageUrl::parse(&results)?;

    if a.resume {
        let Some(mut plan) = load_plan(&results_url).await? else {
            bail!("no plan.json under {results}: nothing to resume; run without --resume first");
        };
        if let Some(m) = &a.model {
            plan.model = m.clone();
        }
        let ranks = missing_ranks(&results_url, plan.world_size).await?;
        return Ok((Arc::new(plan), ranks));
    }

    let data = a
        .data
        .clone()
        .or_else(|| payload.as_ref().and_then(Payload::data_url))
        .context("no data location: give --data (or --payload with data_bucket and data_prefix)")?;
    let model = a.model.clone().context(
        "no model: give --model FILE (a safetensors state_dict; `cai model init` makes one)",
    )?;
    let req = PlanRequest {
        data,
        results,
        model,
        batch_size: a.batch_size,
        file_limit: a.file_limit,
        world_size: a.world_size,
        payload,
    };
    let plan = plan_run(&req).await?;
    clear_results(&results_url).await?;
    let ranks = (0..plan.world_size).collect();
    Ok((Arc::new(plan), ranks))
}

/// Plan, run the ranks on this machine, summarize. Used by `cai run` and `cai demo`.
pub async fn run_local(a: &RunArgs, quiet: bool) -> Result<(Arc<Plan>, Summary)> {
    let (plan, ranks) = plan_or_resume(a).await?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
        if !quiet {
            eprintln!("warning: {w}");
        }
    }
    let model = load_model_with(&plan.model, a.precision)
        .await
        .with_context(|| format!("cannot load the model {}", plan.model))?;
    let cores = available_cores();
    let (dw, dt) = default_parallelism(ranks.len(), cores);
    let workers = a.workers.unwrap_or(dw).max(1);
    let threads = a
        .threads
        .unwrap_or(if a.workers.is_some() {
            (cores / workers).max(1)
        } else {
            dt
        })
        .max(1);
    let total: u64 = ranks
        .iter()
        .flat_map(|&r| plan.partitions_of(r))
        .map(|p| p.galaxies.unwrap_or(0))
        .sum();
    if !quiet {
        eprintln!(
            "running {} of {} ranks ({} partitions) on {workers} worker(s) × {threads} thread(s), kernels: {}, {}",
            ranks.len(),
            plan.world_size,
            plan.partitions.len(),
            kernel_tier(),
            a.precision.support()
        );
    }
    let progress = Arc::new(Progress::new("infer", total, "galaxies", quiet));
    let p2 = progress.clone();
    let p3 = progress.clone();
    let engine = LocalEngine {
        workers,
        threads,
        kernels: kernel_tier(),
    };
    let outcome = engine
        .run(
            plan.clone(),
            &ranks,
            model,
            Some(Arc::new(move |n| p2.inc(n))),
            Some(Arc::new(move |ev| {
                if let RankEvent::Failed(rank, e) = ev {
                    p3.println(&format!("rank {rank} failed: {e}"));
                }
            })),
        )
        .await?;
    progress.finish();
    let results = StorageUrl::parse(&plan.results)?;
    let summary = summarize_results(&results, Some(&plan)).await?;
    let _ = outcome;
    Ok((plan, summary))
}

/// Print the summary table (stderr) or JSON (stdout).
pub fn print_summary(summary: &Summary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    println!("results      {}", summary.results);
    println!(
        "ranks        {} done, {} failed, {} missing (of {})",
        summary.ranks_done,
        summary.failed.len(),
        summary.missing_ranks.len(),
        summary.ranks_total
    );
    println!("galaxies     {}", summary.galaxies);
    println!(
        "wall time    {:.2} s  ({:.1} galaxies/s)",
        summary.wall_time_s, summary.galaxies_per_s
    );
    println!("peak memory  {:.0} MB", summary.peak_memory_mb);
    if summary.nonfinite_galaxies > 0 {
        println!(
            "non-finite   {} galaxies ({} values) predicted as NaN",
            summary.nonfinite_galaxies, summary.nonfinite_inputs
        );
    }
    if let Some(m) = &summary.metrics {
        println!(
            "accuracy     MAE {:.4}  MSE {:.5}  bias {:+.4}  NMAD {:.4}  R² {:.3}  η(|Δz|>0.05) {:.3}  (n={})",
            m.mae, m.mse, m.bias, m.nmad, m.r2, m.eta, m.n
        );
    }
    for f in &summary.failed {
        println!("failed rank  {}: {}", f.rank, f.error);
    }
    if !summary.missing_ranks.is_empty() {
        println!("missing      ranks {:?}", summary.missing_ranks);
    }
    Ok(())
}

/// `cai run`.
pub async fn run(a: RunArgs, quiet: bool) -> Result<Outcome> {
    #[cfg(feature = "slurm")]
    if a.engine == crate::cli::EngineKind::Slurm {
        return super::slurm::run(&a, quiet).await;
    }
    #[cfg(feature = "aws")]
    if a.engine == crate::cli::EngineKind::Aws {
        return super::aws::run(&a, quiet).await;
    }
    let (_plan, summary) = run_local(&a, quiet).await?;
    print_summary(&summary, a.json)?;
    if summary.complete() {
        Ok(Outcome::Ok)
    } else {
        if !quiet {
            eprintln!(
                "some ranks did not finish; fix the named files, then `cai run --resume --results {}` runs only those",
                summary.results
            );
        }
        Ok(Outcome::SomeFailed)
    }
}

/// `cai summarize`.
pub async fn summarize(a: SummarizeArgs) -> Result<Outcome> {
    let results = StorageUrl::parse(&a.results)?;
    let summary = summarize_results(&results, None).await?;
    print_summary(&summary, a.json)?;
    Ok(if summary.complete() {
        Outcome::Ok
    } else {
        Outcome::SomeFailed
    })
}

/// The kernel tier this process dispatched to (scalar, avx2, avx512, neon).
pub fn kernel_tier() -> String {
    format!("{:?}", cai_model::kernels::ops().tier).to_lowercase()
}
