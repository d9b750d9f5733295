//! Makes the inputs of the scale benchmark (`scripts/bench/scale.sh`): a data location whose
//! manifest lists N partitions, the plan of a run over it, and N finished ranks (each
//! `<rank>.json` and a one-galaxy `predictions/<rank>.parquet`), in the formats the worker
//! writes. Nothing here is timed by the benchmark except `plan`, which is the library's own
//! planning (`stages::plan_run`, what `cai run` does before any rank starts).
//!
//! ```text
//! cargo run --release -p cai-engine --features aws --example scale_fixture -- manifest DATA N
//! cargo run … -- plan DATA RESULTS MODEL
//! cargo run … -- ranks RESULTS [old|new] [FROM] [TO]
//!                                      # old: predictions without the report inside;
//!                                      # FROM..TO: only those ranks (default all)
//! cargo run … -- checkpoint RESULTS    # gather the finished ranks, as `cai run` does
//! cargo run … -- summarize RESULTS     # the library call `cai summarize` makes
//! cargo run … -- status RESULTS        # what `cai status --once` reads
//! ```
//! DATA and RESULTS are paths or `s3://` URLs. With no arguments it runs all three on a
//! temporary directory with 64 ranks, then checks the summary checkpoint on 40; `cargo test -p cai-engine --example scale_fixture` runs
//! that as a test (`scripts/test.sh` does, so the fixture cannot rot).

use std::sync::Arc;

use cai_core::layout;
use cai_core::plan::{Plan, PlanRequest};
use cai_core::predictions::Predictions;
use cai_core::report::RankReport;
use cai_core::results::{load_plan, PARALLEL_READS};
use cai_core::StorageUrl;
use cai_data::partition::{partition_key, Manifest, ManifestEntry};
use futures::{StreamExt, TryStreamExt};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Bytes of a partition in the manifest (one 5×32×32 float32 galaxy and headers).
const PARTITION_BYTES: u64 = 20_500;

async fn manifest(data: &str, n: usize) -> Res<()> {
    let partitions: Vec<ManifestEntry> = (0..n)
        .map(|i| ManifestEntry {
            key: partition_key(i + 1),
            galaxies: 1,
            bytes: PARTITION_BYTES,
            sha256: format!("{:064x}", i + 1),
            first_galaxy: i as u64,
        })
        .collect();
    let m = Manifest {
        format: cai_data::native::FORMAT_NAME.to_string(),
        version: cai_data::partition::MANIFEST_VERSION,
        total_galaxies: n as u64,
        image_shape: Some([cai_data::native::NUM_BANDS, 32, 32]),
        tensors: None,
        labelled: true,
        partitions,
    };
    StorageUrl::parse(data)?
        .put(layout::MANIFEST, m.to_json().into_bytes())
        .await?;
    Ok(())
}

async fn plan(data: &str, results: &str, model: &str) -> Res<Plan> {
    let t = std::time::Instant::now();
    let plan = cai_engine::stages::plan_run(&PlanRequest {
        data: data.into(),
        results: results.into(),
        model: model.into(),
        ..Default::default()
    })
    .await?;
    eprintln!(
        "planned {} ranks in {:.2} s",
        plan.world_size,
        t.elapsed().as_secs_f64()
    );
    Ok(plan)
}

async fn ranks(results: &str, old_layout: bool) -> Res<()> {
    ranks_in(results, old_layout, 0..usize::MAX).await
}

/// Write the finished ranks in `range` (clamped to the plan's).
async fn ranks_in(results: &str, old_layout: bool, range: std::ops::Range<usize>) -> Res<()> {
    let loc = StorageUrl::parse(results)?;
    let plan = Arc::new(
        load_plan(&loc)
            .await?
            .ok_or_else(|| format!("no plan.json under {results}"))?,
    );
    let t = std::time::Instant::now();
    let range = range.start.min(plan.world_size)..range.end.min(plan.world_size);
    let count = range.len();
    futures::stream::iter(range.map(|rank| {
        let (loc, plan) = (loc.clone(), plan.clone());
        async move { write_rank(&loc, &plan, rank, old_layout).await }
    }))
    .buffer_unordered(PARALLEL_READS)
    .try_collect::<Vec<()>>()
    .await?;
    eprintln!(
        "wrote {count} finished ranks in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn write_rank(loc: &StorageUrl, plan: &Plan, rank: usize, old_layout: bool) -> Res<()> {
    let parts = plan.partitions_of(rank);
    let mut p = Predictions::default();
    for part in &parts {
        let first = part.first_galaxy.unwrap_or(0);
        for row in 0..part.galaxies.unwrap_or(0) {
            p.index.push((first + row) as i64);
            p.partition.push(part.key.clone());
            p.row.push(row as i32);
            p.rank.push(rank as i32);
            p.z_pred.push(0.1 + (rank % 100) as f32 * 1e-3);
            p.z_true.push(Some(0.1 + (rank % 97) as f32 * 1e-3));
        }
    }
    let key = layout::rank_predictions(rank);
    let report = RankReport {
        rank,
        world_size: plan.world_size,
        galaxies: p.len() as u64,
        num_batches: 1,
        batch_size: plan.batch_size as u64,
        device: "cpu".into(),
        engine: "local".into(),
        host: "scale-fixture".into(),
        model: plan.model.clone(),
        predictions: key.clone(),
        result_path: plan.results.clone(),
        data_path: serde_json::Value::Array(
            parts
                .iter()
                .map(|p| serde_json::Value::String(p.key.clone()))
                .collect(),
        ),
        wall_time_s: 1.0,
        total_cpu_time: 1.0,
        ..Default::default()
    };
    let json = serde_json::to_string_pretty(&report)?;
    // As the worker writes them: the predictions carry the report (an older layout without
    // it, when asked, to time summarize's fallback).
    let carried = match old_layout {
        true => Vec::new(),
        false => vec![(layout::RANK_REPORT_METADATA.to_string(), json.clone())],
    };
    loc.put(&key, p.to_parquet_with(&loc.url_of(&key), || carried)?)
        .await?;
    loc.put(&layout::rank_report(rank), json.into_bytes())
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| -> Res<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {i}; see the file's header").into())
    };
    match args.first().map(String::as_str) {
        Some("manifest") => manifest(a(1)?, a(2)?.parse()?).await,
        Some("plan") => plan(a(1)?, a(2)?, a(3)?).await.map(|_| ()),
        Some("ranks") => {
            let bound = |i: usize, default: usize| -> Res<usize> {
                Ok(args
                    .get(i)
                    .map(|v| v.parse())
                    .transpose()?
                    .unwrap_or(default))
            };
            let old = args.get(2).is_some_and(|a| a == "old");
            ranks_in(a(1)?, old, bound(3, 0)?..bound(4, usize::MAX)?).await
        }
        Some("checkpoint") => {
            // What `cai run` does while it follows a run (one step, always written).
            let t = std::time::Instant::now();
            let read = cai_engine::summarize::checkpoint(&StorageUrl::parse(a(1)?)?).await?;
            eprintln!(
                "checkpoint: read {read} ranks in {:.2} s",
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Some("summarize") => {
            // What `cai summarize` runs.
            let t = std::time::Instant::now();
            let s = cai_engine::summarize::summarize(&StorageUrl::parse(a(1)?)?, None).await?;
            eprintln!(
                "summarized {} ranks, {} galaxies in {:.2} s",
                s.ranks_done,
                s.galaxies,
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Some("status") => {
            // What `cai status --once` reads: the plan and one listing.
            let t = std::time::Instant::now();
            let loc = StorageUrl::parse(a(1)?)?;
            let plan = load_plan(&loc).await?.ok_or("no plan.json")?;
            let l = cai_core::results::ResultsListing::list(&loc).await?;
            eprintln!(
                "status: {} of {} ranks done, {} failed, in {:.2} s",
                l.done_ranks().len(),
                plan.world_size,
                l.failed_ranks().len(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Some(other) => Err(format!(
            "unknown step {other:?} (manifest, plan, ranks, checkpoint, summarize, status)"
        )
        .into()),
        None => {
            quick(64).await?;
            checkpointed(40).await
        }
    }
}

/// A manifest of `n` partitions and a run planned over it, in a new temporary directory
/// named after `name`: the directory and the results location.
async fn planned(name: &str, n: usize) -> Res<(std::path::PathBuf, String)> {
    let dir = std::env::temp_dir().join(format!("{name}-{}-{n}", std::process::id()));
    let (data, results) = (dir.join("data"), dir.join("results"));
    let (data, results) = (
        data.to_string_lossy(),
        results.to_string_lossy().into_owned(),
    );
    manifest(&data, n).await?;
    plan(&data, &results, "model.safetensors").await?;
    Ok((dir, results))
}

/// Every step on a temporary directory with `n` ranks, checking the summary's counts and that
/// both layouts of a rank's outputs summarize alike (what the example does with no
/// arguments, and what its test runs).
async fn quick(n: usize) -> Res<()> {
    let (dir, results) = planned("cai-scale", n).await?;
    let loc = StorageUrl::parse(&results)?;
    // The older layout (predictions without the report inside) summarizes to the same bytes.
    ranks(&results, true).await?;
    cai_engine::summarize::summarize(&loc, None).await?;
    let outputs = [layout::COMBINED, layout::PREDICTIONS, layout::SUMMARY];
    let mut old = Vec::new();
    for key in outputs {
        old.push(loc.get(key).await?);
    }
    ranks(&results, false).await?;
    let s = cai_engine::summarize::summarize(&loc, None).await?;
    for (key, old) in outputs.iter().zip(old) {
        if loc.get(key).await? != old {
            return Err(format!("{key} differs between the two layouts").into());
        }
    }
    let p = Predictions::from_parquet(
        &loc.url_of(layout::PREDICTIONS),
        loc.get(layout::PREDICTIONS).await?,
    )?;
    let combined: serde_json::Value = serde_json::from_slice(&loc.get(layout::COMBINED).await?)?;
    std::fs::remove_dir_all(&dir)?;
    let ranks_in_combined = combined.as_array().map(Vec::len).unwrap_or(0);
    let expected: Vec<i64> = (0..n as i64).collect();
    if (s.ranks_done, s.galaxies as usize, ranks_in_combined) != (n, n, n) || p.index != expected {
        return Err(format!(
            "summary of {n} ranks: {} ranks done, {} galaxies, {ranks_in_combined} reports \
             combined, predictions {:?}",
            s.ranks_done, s.galaxies, p.index
        )
        .into());
    }
    eprintln!("ok: {n} ranks planned, written and summarized");
    Ok(())
}

/// The summary checkpoint: ranks gathered while a run goes are not read again, a rank
/// rewritten since is, and a checkpoint that does not read is ignored; each time the outputs
/// are those of a summary from scratch.
async fn checkpointed(n: usize) -> Res<()> {
    let (dir, results) = planned("cai-checkpoint", n).await?;
    let loc = &StorageUrl::parse(&results)?;
    let summarize = || cai_engine::summarize::summarize(loc, None);
    let outputs = [layout::COMBINED, layout::PREDICTIONS, layout::SUMMARY];
    let from_scratch = || async {
        let kept = loc.get(layout::SUMMARY_CHECKPOINT).await?;
        loc.delete(layout::SUMMARY_CHECKPOINT).await?;
        summarize().await?;
        let mut out = Vec::new();
        for key in outputs {
            out.push(loc.get(key).await?);
        }
        loc.put(layout::SUMMARY_CHECKPOINT, kept.to_vec()).await?;
        Ok::<_, Box<dyn std::error::Error>>(out)
    };
    let check = |what: &'static str| async move {
        summarize().await?;
        let mut got = Vec::new();
        for key in outputs {
            got.push(loc.get(key).await?);
        }
        if got != from_scratch().await? {
            return Err(format!("{what}: the outputs differ from a summary from scratch").into());
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    };

    let first = n * 3 / 4;
    ranks_in(&results, false, 0..first).await?;
    let read = cai_engine::summarize::checkpoint(loc).await?;
    if read != first {
        return Err(format!("the first checkpoint read {read} ranks, not {first}").into());
    }
    ranks_in(&results, false, first..n).await?;
    // Rank 0 is in the checkpoint: without its predictions file, only the checkpoint can
    // give its galaxy to the summary.
    let p0 = layout::rank_predictions(0);
    let kept = loc.get(&p0).await?;
    loc.delete(&p0).await?;
    let s = summarize().await?;
    if (s.ranks_done, s.galaxies) != (n, n as u64) {
        return Err(format!(
            "checkpointed summary: {} ranks, {} galaxies",
            s.ranks_done, s.galaxies
        )
        .into());
    }
    if cai_engine::summarize::checkpoint(loc).await? != 0 {
        return Err("a checkpoint after the summary read ranks again".into());
    }
    loc.put(&p0, kept.to_vec()).await?;
    check("after the rest finished").await?;

    // A rank written again (a new prediction) is read again.
    let key = layout::rank_predictions(1);
    let mut p = Predictions::from_parquet(&loc.url_of(&key), loc.get(&key).await?)?;
    p.z_pred = vec![9.5; p.len()];
    loc.put(&key, p.to_parquet(&key)?).await?;
    let report = loc.get(&layout::rank_report(1)).await?;
    loc.put(&layout::rank_report(1), [&report[..], b"\n"].concat())
        .await?;
    check("after rank 1 was rewritten").await?;
    let all = Predictions::from_parquet("p", loc.get(layout::PREDICTIONS).await?)?;
    if !all.z_pred.contains(&9.5) {
        return Err("rank 1's new prediction is not in the summary".into());
    }

    // A checkpoint that does not read is ignored.
    loc.put(layout::SUMMARY_CHECKPOINT, b"not parquet".to_vec())
        .await?;
    let s = summarize().await?;
    std::fs::remove_dir_all(&dir)?;
    if (s.ranks_done, s.galaxies) != (n, n as u64) {
        return Err(format!(
            "after a broken checkpoint: {} ranks, {} galaxies",
            s.ranks_done, s.galaxies
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The benchmark's fixture and the summary it times, at a size CI runs in seconds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sixty_four_ranks_are_planned_written_and_summarized() {
        super::quick(64).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_summary_reads_only_what_its_checkpoint_lacks() {
        super::checkpointed(40).await.unwrap();
    }
}
