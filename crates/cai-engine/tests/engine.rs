//! The stages on the in-memory store: plan → local engine → summarize, with a small
//! AstroMAE (depth 1) so the test is quick.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cai_core::layout;
use cai_core::plan::PlanRequest;
use cai_core::predictions::Predictions;
use cai_core::StorageUrl;
use cai_data::partition::partition_dataset;
use cai_data::{generate, SynthConfig};
use cai_engine::local::LocalEngine;
use cai_engine::stages::plan_run;
use cai_engine::summarize::summarize;
use cai_model::{init, AstroMae, Config, Model};

fn small_model() -> Arc<dyn Model> {
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
        workers: 2,
        threads: 1,
        kernels: "test".into(),
    };
    let ranks: Vec<usize> = (0..plan.world_size).collect();
    let out = engine
        .run(plan.clone(), &ranks, small_model(), None, None)
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
        workers: 1,
        threads: 2,
        kernels: "test".into(),
    };
    let ranks: Vec<usize> = (0..plan.world_size).collect();
    let out = engine
        .run(plan.clone(), &ranks, small_model(), None, None)
        .await
        .unwrap();
    assert_eq!(out.done.len(), 3);
    assert_eq!(out.failed.len(), 1);
    assert_eq!(out.failed[0].0, 1);
    assert!(
        out.failed[0].1.contains("00002.safetensors"),
        "{}",
        out.failed[0].1
    );
    let results = StorageUrl::parse(&plan.results).unwrap();
    let s = summarize(&results, Some(&plan)).await.unwrap();
    assert_eq!(s.failed.len(), 1);
    assert_eq!(s.galaxies, 15);
    assert!(!results.exists("1.json").await.unwrap());
    assert!(results.exists("failed/1.json").await.unwrap());
}
