//! The stages on the in-memory store: plan → local engine → summarize, and the local engine
//! behind the `Engine` trait, with a small AstroMAE (depth 1) so the test is quick.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use cai_core::layout;
use cai_core::plan::PlanRequest;
use cai_core::predictions::Predictions;
use cai_core::StorageUrl;
use cai_data::partition::partition_dataset;
use cai_data::{generate, SynthConfig};
use cai_engine::local::LocalEngine;
use cai_engine::stages::plan_run;
use cai_engine::summarize::summarize;
use cai_engine::{Engine, NoEvents, RunEnd, RunEvent, RunEvents, RunRequest};
use cai_model::{init, AstroMae, Config, TensorModel};

fn small_model() -> Arc<dyn TensorModel> {
    let mut cfg = Config::astromae();
    cfg.depth = 1;
    let w = init::astromae_weights(11, &cfg);
    Arc::new(AstroMae::load(&w, "seeded").unwrap())
}

/// Write `n` synthetic galaxies as partitions of `per` galaxies under `memory://name/data`.
async fn data(name: &str, n: u64, per: u64, poison: Option<usize>) -> String {
    let cfg = SynthConfig {
        galaxies: n,
        seed: 4,
        ..Default::default()
    };
    let mut all = generate(&cfg, 0, n as usize);
    if let Some(g) = poison {
        let len = all.channels * all.height * all.width;
        all.images[g * len + 7] = f32::NAN;
        all.magnitudes[g * 5 + 1] = f32::INFINITY;
    }
    let loc = format!("memory://{name}/data");
    let store = StorageUrl::parse(&loc).unwrap();
    let mut files = Vec::new();
    let size = per * cai_data::partition::bytes_per_galaxy(all.image_shape());
    let manifest = partition_dataset(&all, size, |f| {
        files.push(f);
        Ok(())
    })
    .unwrap();
    for f in files {
        store.put(&f.key, f.bytes).await.unwrap();
    }
    store
        .put(layout::MANIFEST, manifest.to_json())
        .await
        .unwrap();
    loc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rank_once_every_galaxy_once_nonfinite_counted() {
    let data = data("e1", 40, 9, Some(13)).await;
    let req = PlanRequest {
        data,
        results: "memory://e1/results".into(),
        model: "seeded".into(),
        batch_size: Some(4),
        world_size: Some(3),
        ..Default::default()
    };
    let plan = Arc::new(plan_run(&req).await.unwrap());
    assert_eq!(plan.partitions.len(), 5);
    let engine = LocalEngine {
        workers: Some(2),
        threads: Some(1),
        kernels: "test".into(),
        ..LocalEngine::default()
    };
    let ranks: Vec<usize> = (0..plan.world_size).collect();
    let out = engine
        .run_ranks(plan.clone(), &ranks, small_model(), Arc::new(NoEvents))
        .await
        .unwrap();
    assert_eq!(out.done.len(), 3);
    assert!(out.failed.is_empty());
    let results = StorageUrl::parse(&plan.results).unwrap();
    let s = summarize(&results, Some(&plan)).await.unwrap();
    assert!(s.complete());
    assert_eq!(s.galaxies, 40);
    assert_eq!(s.nonfinite_galaxies, 1);
    assert_eq!(s.nonfinite_inputs, 2);
    let p =
        Predictions::from_parquet("p", results.get("predictions.parquet").await.unwrap()).unwrap();
    let mut idx = p.index.clone();
    idx.sort();
    assert_eq!(idx, (0..40).collect::<Vec<i64>>());
    for (i, z) in p.index.iter().zip(&p.z_pred) {
        assert_eq!(*i == 13, z.is_nan(), "galaxy {i}: {z}");
    }
    // The metrics skip the NaN galaxy.
    assert_eq!(s.metrics.unwrap().n, 39);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rank_with_a_bad_partition_fails_alone() {
    let data = data("e2", 20, 5, None).await;
    // Corrupt partition 2 after the manifest was written: its checksum no longer matches.
    let store = StorageUrl::parse(&data).unwrap();
    store.put("00002.safetensors", vec![0u8; 64]).await.unwrap();
    let req = PlanRequest {
        data,
        results: "memory://e2/results".into(),
        model: "seeded".into(),
        batch_size: Some(8),
        ..Default::default()
    };
    let plan = Arc::new(plan_run(&req).await.unwrap());
    let engine = LocalEngine {
        workers: Some(1),
        threads: Some(2),
        kernels: "test".into(),
        ..LocalEngine::default()
    };
    let ranks: Vec<usize> = (0..plan.world_size).collect();
    let out = engine
        .run_ranks(plan.clone(), &ranks, small_model(), Arc::new(NoEvents))
        .await
        .unwrap();
    assert_eq!(out.done.len(), 3);
    assert_eq!(out.failed.len(), 1);
    assert_eq!(out.failed[0].rank, 1);
    assert_eq!(out.failed[0].engine, "local");
    assert_eq!(out.failed[0].partitions, ["00002.safetensors"]);
    assert!(
        out.failed[0].error.contains("00002.safetensors"),
        "{}",
        out.failed[0].error
    );
    let results = StorageUrl::parse(&plan.results).unwrap();
    let s = summarize(&results, Some(&plan)).await.unwrap();
    assert_eq!(s.failed.len(), 1);
    assert_eq!(s.galaxies, 15);
    assert!(!results.exists("1.json").await.unwrap());
    assert!(results.exists("failed/1.json").await.unwrap());
}

/// Collects what an engine tells.
#[derive(Default)]
struct Heard(Mutex<Vec<RunEvent>>);

impl RunEvents for Heard {
    fn event(&self, e: RunEvent) {
        self.0.lock().unwrap().push(e);
    }
}

impl Heard {
    fn done(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                RunEvent::RankDone { rank, .. } => Some(*rank),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn advanced(&self) -> u64 {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                RunEvent::Advance(n) => *n,
                _ => 0,
            })
            .sum()
    }
}

/// The local engine behind `dyn Engine`: one request in, events out, one report back; a
/// failed rank is in the report with its files, and `resume` runs only that rank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_engine_through_the_trait() {
    let data = data("e3", 20, 5, None).await;
    let store = StorageUrl::parse(&data).unwrap();
    let mut cfg = Config::astromae();
    cfg.depth = 1;
    let w = init::astromae_weights(11, &cfg);
    let model = "memory://e3/model.safetensors";
    StorageUrl::parse("memory://e3")
        .unwrap()
        .put(
            "model.safetensors",
            w.to_safetensors(&Default::default()).unwrap(),
        )
        .await
        .unwrap();
    let good = store.get("00002.safetensors").await.unwrap();
    store.put("00002.safetensors", vec![0u8; 64]).await.unwrap();

    let engine: Box<dyn Engine> = Box::new(LocalEngine {
        workers: Some(2),
        threads: Some(1),
        kernels: "test".into(),
        ..LocalEngine::default()
    });
    assert_eq!(engine.name(), "local");
    let mut req = RunRequest {
        data: Some(data),
        results: Some("memory://e3/results".into()),
        model: Some(model.into()),
        batch_size: Some(8),
        ..Default::default()
    };
    let heard = Heard::default();
    let report = engine.run(&req, &heard).await.unwrap();
    assert_eq!(report.end, RunEnd::Finished);
    assert!(!report.complete());
    assert_eq!((report.ranks_total, report.ranks_done), (4, 3));
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].rank, 1);
    assert_eq!(report.failed[0].engine, "local");
    assert_eq!(report.failed[0].partitions, ["00002.safetensors"]);
    assert!(report.failed[0].error.contains("00002.safetensors"));
    assert_eq!(
        report.summary_url.as_deref(),
        Some("memory://e3/results/summary.json")
    );
    assert!(report.next.as_deref().unwrap().contains("--resume"));
    assert_eq!(heard.done(), [0, 2, 3]);
    assert_eq!(heard.advanced(), 15);
    assert!(heard.0.lock().unwrap().iter().any(|e| matches!(
        e,
        RunEvent::RankFailed { rank: 1, reason, .. } if reason.contains("00002.safetensors")
    )));

    store.put("00002.safetensors", good.to_vec()).await.unwrap();
    req.resume = true;
    let heard = Heard::default();
    let report = engine.run(&req, &heard).await.unwrap();
    assert!(report.complete());
    assert_eq!(report.summary.as_ref().unwrap().galaxies, 20);
    assert_eq!(heard.done(), [1], "resume runs only the missing rank");

    let e = engine
        .attach("memory://e3/results", None, &heard)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
    let e = engine
        .run(&RunRequest::default(), &heard)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "no results location: give --results (or --payload with bucket and result_path)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_helps_a_rank_with_unstarted_partitions() {
    let data = data("h1", 36, 6, None).await;
    let req = PlanRequest {
        data,
        results: "memory://h1/results".into(),
        model: "seeded".into(),
        batch_size: Some(3),
        world_size: Some(2),
        ..Default::default()
    };
    let mut plan = plan_run(&req).await.unwrap();
    assert_eq!(plan.partitions.len(), 6);
    // Rank 0 holds five partitions, rank 1 one: the worker done with rank 1 must not sit
    // idle while rank 0's partitions wait.
    plan.ranks = vec![vec![0, 1, 2, 3, 4], vec![5]];
    let mut solo = plan.clone();
    solo.results = "memory://h1/solo".into();
    let model = small_model();
    let engine = |workers| LocalEngine {
        workers: Some(workers),
        threads: Some(1),
        kernels: "test".into(),
        ..LocalEngine::default()
    };
    let out = engine(2)
        .run_ranks(Arc::new(plan), &[0, 1], model.clone(), Arc::new(NoEvents))
        .await
        .unwrap();
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    assert_eq!(out.done.len(), 2);
    assert_eq!(out.done[0].galaxies, 30);
    assert!(out.helped >= 1, "no partition of rank 0 was helped with");
    assert!(out.speculated.is_empty());
    // Whoever computed a partition, rank 0's predictions are those of one worker alone,
    // in the same order.
    let alone = engine(1)
        .run_ranks(Arc::new(solo), &[0, 1], model, Arc::new(NoEvents))
        .await
        .unwrap();
    assert_eq!(alone.helped, 0);
    let read = |loc: &'static str| async move {
        let url = StorageUrl::parse(loc).unwrap();
        let key = layout::rank_predictions(0);
        Predictions::from_parquet(&key, url.get(&key).await.unwrap()).unwrap()
    };
    let (a, b) = (
        read("memory://h1/results").await,
        read("memory://h1/solo").await,
    );
    assert_eq!(a.index, b.index);
    let bits = |p: &Predictions| p.z_pred.iter().map(|z| z.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(out.done[0].num_batches, alone.done[0].num_batches);
}
