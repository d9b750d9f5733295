//! One conformance suite, run by every engine against its real backend (as object_store's
//! `integration.rs` is by every store): `cai run --engine …` over the fixture's five
//! partitions in three ranks must
//! - write each rank once: one `<rank>.json` per rank, naming the engine, no failure record,
//!   every galaxy in exactly one rank's predictions;
//! - give the same predictions as the local engine, bit for bit;
//! - report a failed rank and name it: a corrupt partition fails its rank alone, and the
//!   summary names the rank, the engine and the file;
//! - with `--resume`, run only what is missing: the finished ranks' reports are left as they
//!   were.
//!
//! The local engine always runs it; Slurm with `CAI_TEST_SLURM=1` on scripts/slurm/start.sh's
//! cluster; AWS on moto's Step Functions calling the handlers under `cargo lambda` (the
//! setup of workflow.rs), which under `CI=true` must be installed.

use std::collections::BTreeMap;
use std::process::Output;

use serde_json::Value;

#[cfg(feature = "aws")]
use crate::lambda::RESULTS_BUCKET;
#[cfg(feature = "aws")]
use crate::s3::S3Server;
use crate::s3::{by_galaxy, json, local_run};
use crate::util::{fixtures, partitioned, Dir};

/// Every run: 5 partitions over 3 ranks ([[1, 2], [3, 4], [5]]), batches of 16.
const RUN: [&str; 4] = ["--batch-size", "16", "--world-size", "3"];
/// The partition corrupted to fail rank 1.
const VICTIM: &str = "00003.safetensors";
/// Galaxies of rank 1 (partitions 3 and 4, 61 each).
const RANK1_GALAXIES: u64 = 122;

/// An engine with its backend: where the data and results are, how `cai` is run there.
trait Backend {
    /// The engine's name, as the rank reports give it.
    fn name(&self) -> &'static str;
    /// The work directory.
    fn dir(&self) -> &Dir;
    /// Location of the five partitions.
    fn data(&self) -> String;
    /// A results location for the run `run`.
    fn results(&self, run: &str) -> String;
    /// `--engine …` and its options.
    fn engine_args(&self) -> Vec<String>;
    /// Run `cai` where the backend is reachable.
    fn cai(&self, args: &[String]) -> Output;
    /// An object under a results location, if there.
    fn get(&self, results: &str, key: &str) -> Option<Vec<u8>>;
    /// A partition's bytes.
    fn get_data(&self, key: &str) -> Vec<u8>;
    /// Replace a partition.
    fn put_data(&self, key: &str, bytes: &[u8]);
    /// Exit code of a run with a failed rank.
    fn failed_exit(&self) -> i32 {
        1
    }
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(b: &dyn Backend, results: &str, extra: &[&str]) -> Output {
    let model = fixtures().model.display().to_string();
    let mut args: Vec<String> = ["run", "--data", &b.data(), "--results", results]
        .iter()
        .chain(&["--model", &model])
        .chain(&RUN)
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    args.extend(b.engine_args());
    b.cai(&args)
}

fn get_json(b: &dyn Backend, results: &str, key: &str) -> Value {
    json(
        &b.get(results, key)
            .unwrap_or_else(|| panic!("{results}: no {key}")),
    )
}

/// The local engine's predictions for these partitions (`--threads 2`, as every backend
/// here runs).
fn reference(d: &Dir) -> BTreeMap<i64, u32> {
    local_run(d, &RUN)
}

/// Each rank written once, and the predictions equal `expected`.
fn every_rank_once_and_as_local(b: &dyn Backend, expected: &BTreeMap<i64, u32>) {
    let res = b.results("full");
    let out = run(b, &res, &[]);
    assert!(out.status.success(), "{}: {}", b.name(), text(&out));
    let mut galaxies = 0;
    for rank in 0..3 {
        let r = get_json(b, &res, &format!("{rank}.json"));
        assert_eq!(r["rank"], rank, "{}", b.name());
        assert_eq!(r["engine"], b.name());
        galaxies += r["galaxies"].as_u64().expect("galaxies");
        assert!(b.get(&res, &format!("failed/{rank}.json")).is_none());
    }
    assert_eq!(galaxies, 300, "{}: each galaxy in one rank", b.name());
    assert!(b.get(&res, "3.json").is_none(), "no rank beyond the plan");
    let combined = get_json(b, &res, "combined_data.json");
    assert_eq!(combined.as_array().map(Vec::len), Some(3), "{}", b.name());
    let s = get_json(b, &res, "summary.json");
    assert_eq!(s["ranks_done"], 3, "{}: {s}", b.name());
    assert_eq!(s["galaxies"], 300);
    assert_eq!(s["failed"], serde_json::json!([]));
    assert_eq!(s["engines"], serde_json::json!([b.name()]));
    // by_galaxy fails on a galaxy predicted twice.
    let preds = by_galaxy(b.get(&res, "predictions.parquet").expect("predictions"));
    assert_eq!(preds.len(), 300);
    assert_eq!(
        &preds,
        expected,
        "{}: predictions differ from the local engine's",
        b.name()
    );
}

/// A corrupt partition fails its rank alone, named; `--resume` then runs only that rank.
fn a_failed_rank_is_named_and_resume_runs_only_it(b: &dyn Backend, expected: &BTreeMap<i64, u32>) {
    let res = b.results("part");
    let good = b.get_data(VICTIM);
    b.put_data(VICTIM, &good[..good.len() / 3]);
    let out = run(b, &res, &[]);
    b.put_data(VICTIM, &good);
    assert_eq!(
        out.status.code(),
        Some(b.failed_exit()),
        "{}: {}",
        b.name(),
        text(&out)
    );
    assert!(text(&out).contains(VICTIM), "{}: {}", b.name(), text(&out));
    let s = get_json(b, &res, "summary.json");
    let failed = s["failed"].as_array().expect("failed ranks");
    assert_eq!(failed.len(), 1, "{}: {s}", b.name());
    assert_eq!(failed[0]["rank"], 1);
    assert_eq!(failed[0]["engine"], b.name());
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains(VICTIM)),
        "{}: {s}",
        b.name()
    );
    assert_eq!(s["ranks_done"], 2);
    assert_eq!(s["galaxies"], 300 - RANK1_GALAXIES);
    assert!(b.get(&res, "1.json").is_none());
    assert_eq!(get_json(b, &res, "failed/1.json")["rank"], 1);

    let mut args: Vec<String> = ["run", "--resume", "--results", &res]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(b.engine_args());
    let before: Vec<Vec<u8>> = [0, 2]
        .iter()
        .map(|r| b.get(&res, &format!("{r}.json")).expect("rank report"))
        .collect();
    let out = b.cai(&args);
    assert!(out.status.success(), "{}: {}", b.name(), text(&out));
    for (r, old) in [0, 2].iter().zip(&before) {
        let now = b.get(&res, &format!("{r}.json")).expect("rank report");
        assert_eq!(&now, old, "{}: rank {r} ran again on --resume", b.name());
    }
    assert_eq!(get_json(b, &res, "1.json")["engine"], b.name());
    assert!(b.get(&res, "failed/1.json").is_none());
    let s = get_json(b, &res, "summary.json");
    assert_eq!(s["galaxies"], 300, "{}: {s}", b.name());
    assert_eq!(s["failed"], serde_json::json!([]));
    let preds = by_galaxy(b.get(&res, "predictions.parquet").expect("predictions"));
    assert_eq!(&preds, expected, "{}", b.name());
}

/// Every check, on one backend.
fn conformance(b: &dyn Backend, expected: &BTreeMap<i64, u32>) {
    every_rank_once_and_as_local(b, expected);
    a_failed_rank_is_named_and_resume_runs_only_it(b, expected);
}

/// Data and results on this machine's disk (the local and Slurm engines).
struct OnDisk {
    d: Dir,
    name: &'static str,
    engine: Vec<&'static str>,
}

impl Backend for OnDisk {
    fn name(&self) -> &'static str {
        self.name
    }
    fn dir(&self) -> &Dir {
        &self.d
    }
    fn data(&self) -> String {
        self.d.s("parts")
    }
    fn results(&self, run: &str) -> String {
        self.d.s(run)
    }
    fn engine_args(&self) -> Vec<String> {
        self.engine.iter().map(|s| s.to_string()).collect()
    }
    fn cai(&self, args: &[String]) -> Output {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.d.cai(&a)
    }
    fn get(&self, results: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(std::path::Path::new(results).join(key)).ok()
    }
    fn get_data(&self, key: &str) -> Vec<u8> {
        std::fs::read(self.d.path("parts").join(key)).expect("partition")
    }
    fn put_data(&self, key: &str, bytes: &[u8]) {
        std::fs::write(self.d.path("parts").join(key), bytes).expect("write partition");
    }
}

#[test]
fn local() {
    let b = OnDisk {
        d: partitioned(),
        name: "local",
        engine: vec!["--workers", "2", "--threads", "2"],
    };
    let expected = reference(b.dir());
    conformance(&b, &expected);
}

#[test]
fn slurm() {
    let Some(_cluster) = crate::slurm::cluster() else {
        return;
    };
    let b = OnDisk {
        d: partitioned(),
        name: "slurm",
        engine: vec!["--engine", "slurm", "--poll", "0.2", "--threads", "2"],
    };
    let expected = reference(b.dir());
    conformance(&b, &expected);
}

/// Data and results in moto's S3, runs on moto's Step Functions.
#[cfg(feature = "aws")]
struct OnAws<'a> {
    moto: &'a S3Server,
    d: &'a Dir,
}

#[cfg(feature = "aws")]
impl Backend for OnAws<'_> {
    fn name(&self) -> &'static str {
        "aws"
    }
    fn dir(&self) -> &Dir {
        self.d
    }
    fn data(&self) -> String {
        "s3://cosmicai-data/1MB".into()
    }
    fn results(&self, run: &str) -> String {
        format!("s3://{RESULTS_BUCKET}/{run}")
    }
    fn engine_args(&self) -> Vec<String> {
        // A fresh state machine per run (see workflow::new_state_machine).
        let arn = crate::workflow::new_state_machine(self.moto, self.d);
        ["--engine", "aws", "--state-machine", &arn, "--poll", "0.5"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
    fn cai(&self, args: &[String]) -> Output {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.moto.cai(self.d, &a)
    }
    fn get(&self, results: &str, key: &str) -> Option<Vec<u8>> {
        let (bucket, prefix) = results
            .strip_prefix("s3://")
            .and_then(|r| r.split_once('/'))
            .expect("s3://bucket/prefix");
        s3_get(self.moto, self.d, bucket, &format!("{prefix}/{key}"))
    }
    fn get_data(&self, key: &str) -> Vec<u8> {
        s3_get(self.moto, self.d, "cosmicai-data", &format!("1MB/{key}")).expect("partition")
    }
    fn put_data(&self, key: &str, bytes: &[u8]) {
        let file = self.d.path("upload.bin");
        std::fs::write(&file, bytes).expect("write");
        self.moto
            .upload(&file, "cosmicai-data", &format!("1MB/{key}"));
    }
    fn failed_exit(&self) -> i32 {
        // The workflow ends in its RanksFailed state: the execution failed.
        2
    }
}

/// An object from moto's S3, `None` when there is no such key.
#[cfg(feature = "aws")]
fn s3_get(moto: &S3Server, d: &Dir, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let to = d.path("download.bin");
    let out = moto
        .command("python3")
        .arg("-c")
        .arg(
            "import sys, os, boto3, botocore\n\
             s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
             try:\n    s3.download_file(sys.argv[1], sys.argv[2], sys.argv[3])\n\
             except botocore.exceptions.ClientError:\n    sys.exit(3)",
        )
        .args([bucket, key, &to.display().to_string()])
        .output()
        .expect("run python3");
    if out.status.code() == Some(3) {
        return None;
    }
    assert!(out.status.success(), "{}", text(&out));
    Some(std::fs::read(&to).expect("downloaded"))
}

/// On moto's Step Functions running the generated workflow on the handlers.
#[cfg(feature = "aws")]
#[test]
fn aws_conformance() {
    crate::workflow::with_workflow(|moto, d, _| {
        conformance(&OnAws { moto, d }, &reference(d));
    });
}
