//! partition → run → summarize, bad input, --resume, predict, payloads.

use std::collections::HashSet;

use cai_core::report::ORIGINAL_KEYS;

use crate::util::{fixtures, partitioned, read_json, Dir};

fn predictions(d: &Dir) -> cai_core::predictions::Predictions {
    let bytes = std::fs::read(d.path("res/predictions.parquet")).unwrap();
    cai_core::predictions::Predictions::from_parquet("p", bytes.into()).unwrap()
}

#[test]
fn full_run_writes_every_output_and_every_original_key() {
    let d = partitioned();
    let manifest = read_json(d.path("parts/manifest.json"));
    assert_eq!(manifest["partitions"].as_array().unwrap().len(), 5);
    let model = fixtures().model.display().to_string();
    d.ok(&[
        "run",
        "--data",
        &d.s("parts"),
        "--results",
        &d.s("res"),
        "--model",
        &model,
        "--batch-size",
        "16",
        "--world-size",
        "3",
    ]);
    // The original's rule: 5 files over 3 ranks → 2, 2, 1.
    let plan = read_json(d.path("res/plan.json"));
    assert_eq!(plan["ranks"], serde_json::json!([[0, 1], [2, 3], [4]]));
    assert!(d.path("res/payload.json").exists());
    for rank in 0..3 {
        let r = read_json(d.path(&format!("res/{rank}.json")));
        for k in ORIGINAL_KEYS {
            assert!(r.get(k).is_some(), "rank {rank}: {k} missing");
        }
        assert_eq!(r["batch_size"], 16);
        assert!(r["sample_persec"].as_f64().unwrap() > 0.0);
        assert!(d.path(&format!("res/predictions/{rank}.parquet")).exists());
    }
    let combined = read_json(d.path("res/combined_data.json"));
    assert_eq!(combined.as_array().unwrap().len(), 3);
    let summary = read_json(d.path("res/summary.json"));
    assert_eq!(summary["galaxies"], 300);
    assert_eq!(summary["ranks_done"], 3);
    assert!(summary["metrics"]["mae"].as_f64().is_some());
    let p = predictions(&d);
    let idx: HashSet<i64> = p.index.iter().copied().collect();
    assert_eq!(idx.len(), 300);
    assert_eq!(idx, (0..300).collect());
    assert!(p.z_pred.iter().all(|z| z.is_finite()));
}

/// While `cai run` goes, its finished ranks are gathered into the summary checkpoint (here
/// every few milliseconds, racing the workers and the final summary): the outputs are those a
/// summary from scratch makes.
#[test]
fn a_run_checkpointed_as_it_goes_summarizes_as_from_scratch() {
    let d = partitioned();
    let model = fixtures().model.display().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cai"))
        .args(["run", "--data", &d.s("parts"), "--results", &d.s("res")])
        .args(["--model", &model, "--batch-size", "8", "--world-size", "5"])
        .args(["--workers", "1", "--threads", "1", "-v"])
        .env("CAI_CHECKPOINT_SECS", "0.005")
        .current_dir(d.tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cai run failed:\n{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("ranks from the checkpoint"));
    eprintln!("{line:?}");
    assert!(line.is_some(), "{stderr}");
    let outputs = ["combined_data.json", "predictions.parquet", "summary.json"];
    let read = |k: &str| std::fs::read(d.path(&format!("res/{k}"))).unwrap();
    let checkpointed = outputs.map(read);
    std::fs::remove_file(d.path("res/summary-checkpoint.parquet")).unwrap();
    d.ok(&["summarize", "--results", &d.s("res")]);
    assert_eq!(checkpointed, outputs.map(read));
    assert_eq!(read_json(d.path("res/summary.json"))["galaxies"], 300);
}

#[test]
fn a_corrupt_partition_fails_its_rank_only_and_resume_finishes() {
    let d = partitioned();
    let model = fixtures().model.display().to_string();
    let victim = d.path("parts/00003.safetensors");
    let good = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &good[..good.len() / 3]).unwrap();
    let out = d.cai(&[
        "run",
        "--data",
        &d.s("parts"),
        "--results",
        &d.s("res"),
        "--model",
        &model,
        "--batch-size",
        "32",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = read_json(d.path("res/summary.json"));
    let failed = summary["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["rank"], 2);
    let err = failed[0]["error"].as_str().unwrap();
    assert!(err.contains("00003.safetensors"), "{err}");
    assert_eq!(summary["ranks_done"], 4);
    assert_eq!(summary["galaxies"], 300 - 61);
    // The other ranks' results exist and are untouched by the resume.
    let before = std::fs::read(d.path("res/0.json")).unwrap();

    std::fs::write(&victim, &good).unwrap();
    d.ok(&["run", "--resume", "--results", &d.s("res")]);
    assert_eq!(std::fs::read(d.path("res/0.json")).unwrap(), before);
    let summary = read_json(d.path("res/summary.json"));
    assert_eq!(summary["failed"].as_array().unwrap().len(), 0);
    assert_eq!(summary["galaxies"], 300);
    let p = predictions(&d);
    let idx: HashSet<i64> = p.index.iter().copied().collect();
    assert_eq!(p.len(), 300);
    assert_eq!(idx.len(), 300, "every galaxy exactly once");
}

#[test]
fn a_missing_partition_is_named() {
    let d = partitioned();
    std::fs::remove_file(d.path("parts/00002.safetensors")).unwrap();
    let out = d.cai(&[
        "run",
        "--data",
        &d.s("parts"),
        "--results",
        &d.s("res"),
        "--model",
        &fixtures().model.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let s = read_json(d.path("res/summary.json"));
    let e = s["failed"][0]["error"].as_str().unwrap();
    assert!(
        e.contains("00002.safetensors") && e.contains("not found"),
        "{e}"
    );
}

#[test]
fn predict_writes_the_stable_csv() {
    let d = partitioned();
    d.ok(&[
        "predict",
        "--model",
        &fixtures().model.display().to_string(),
        "--input",
        &d.s("parts/00001.safetensors"),
        "--out",
        &d.s("preds.csv"),
    ]);
    let csv = std::fs::read_to_string(d.path("preds.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("index,z_pred,z_true"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 61);
    assert!(rows[0].starts_with("0,"));
}

#[test]
fn the_originals_payload_is_accepted() {
    let d = partitioned();
    std::fs::write(
        d.path("payload.json"),
        r#"{"bucket": "cosmicai-data", "file_limit": "2", "batch_size": 64,
            "object_type": "folder", "S3_object_name": "Anomaly Detection",
            "script": "/tmp/Anomaly Detection/Inference/inference.py",
            "result_path": "result-partition-100MB/1GB/1",
            "data_bucket": "cosmicai-data", "data_prefix": "100MB"}"#,
    )
    .unwrap();
    d.ok(&[
        "run",
        "--payload",
        &d.s("payload.json"),
        "--data",
        &d.s("parts"),
        "--results",
        &d.s("res"),
        "--model",
        &fixtures().model.display().to_string(),
    ]);
    let plan = read_json(d.path("res/plan.json"));
    assert_eq!(plan["partitions"].as_array().unwrap().len(), 2);
    assert_eq!(plan["batch_size"], 64);
    assert_eq!(plan["items"][0]["DATA_PATH"], "100MB/00001.safetensors");
    assert_eq!(plan["items"][0]["S3_OBJECT_NAME"], "Anomaly Detection");
    let s = read_json(d.path("res/summary.json"));
    assert_eq!(s["galaxies"], 122);
}

#[test]
fn errors_name_what_is_wrong() {
    let d = Dir::new();
    let out = d.cai(&[
        "run",
        "--data",
        &d.s("nothing"),
        "--results",
        &d.s("r"),
        "--model",
        "m",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no partitions") && err.contains("cai partition"),
        "{err}"
    );
    let out = d.cai(&["run", "--resume", "--results", &d.s("r")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to resume"));
}
