//! S3 for real: every command on `s3://` URLs against an S3-compatible server on loopback,
//! compared galaxy for galaxy with the same run on local paths. Two servers: moto (Python;
//! it also serves the Lambda and Step Functions APIs the other suites need, and answers one
//! request at a time) and s3s-fs (Rust, over a folder, serving requests in parallel as S3
//! does; the scale benchmark's S3 figures are judged there, scripts/bench/scale.sh).
//!
//! Each test starts its own server on a free port and stops it when done. Without the
//! server the tests print a note and pass, except under `CI=true` (`pip install
//! "moto[server]"`, `cargo install s3s-fs --version 0.14.1 --features binary --locked`;
//! `.ci/run` installs both). Buckets are made and objects read back with boto3.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{fixtures, Dir};

const PY: &str = "python3";

/// An S3-compatible server on 127.0.0.1 (moto or s3s-fs), killed on drop.
pub(crate) struct S3Server {
    child: Child,
    pub(crate) endpoint: String,
    /// s3s-fs's folder (its buckets are directories in it), removed after the server stops.
    _root: Option<tempfile::TempDir>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Wait (up to a minute) until `what` listens on `port` of loopback.
pub(crate) fn wait_listening(port: u16, what: &str) {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl S3Server {
    /// Start moto, or `None` (with a note) when python3 or moto is not installed.
    pub(crate) fn moto() -> Option<Self> {
        Self::moto_with_env(&[])
    }

    /// Start s3s-fs (`$S3S_FS` or `s3s-fs` on PATH) over a new temporary folder, or `None`
    /// (with a note) when it or python3 with boto3 is not installed.
    pub(crate) fn s3s_fs() -> Option<Self> {
        let program = std::env::var("S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        let found = Command::new(&program).arg("--help").output();
        let boto = Command::new(PY).args(["-c", "import boto3"]).output();
        if !matches!(&found, Ok(o) if o.status.success())
            || !matches!(&boto, Ok(o) if o.status.success())
        {
            crate::util::unavailable(
                "the s3s-fs S3 test",
                "s3s-fs (cargo install s3s-fs --version 0.14.1 --features binary --locked) \
                 and python3 with boto3",
            );
            return None;
        }
        let root = tempfile::tempdir().expect("s3s-fs folder");
        let port = free_port();
        let mut cmd = Command::new(&program);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "testing", "--secret-key", "testing"])
            .arg(root.path());
        Some(Self::serve(cmd, port, "s3s-fs", Some(root)))
    }

    /// Spawns `cmd` (a server that will listen on `port` of loopback), quiet, and waits
    /// until it listens; `root` is the folder it serves, removed after it stops.
    fn serve(mut cmd: Command, port: u16, what: &str, root: Option<tempfile::TempDir>) -> Self {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _root: root,
        };
        wait_listening(port, what);
        server
    }

    /// [`S3Server::moto`] with extra environment for the server (e.g. `MOTO_PORT`, the
    /// endpoint its Step Functions interpreter calls Lambda at).
    pub(crate) fn moto_with_env(env: &[(&str, String)]) -> Option<Self> {
        let probe = Command::new(PY)
            .args(["-c", "import moto.server, boto3, flask"])
            .output();
        if !matches!(&probe, Ok(o) if o.status.success()) {
            crate::util::unavailable(
                "the S3 test",
                "python3 with moto[server] (pip install \"moto[server]\")",
            );
            return None;
        }
        let port = free_port();
        let mut cmd = Command::new(PY);
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        Some(Self::serve(cmd, port, "moto", None))
    }

    /// The environment every S3 client here gets (object_store in cai, boto3 in python).
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    pub(crate) fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for k in ["AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"] {
            c.env_remove(k);
        }
        c.envs(self.env());
        c
    }

    /// Run a boto3 snippet with `s3` bound to a client of this server; `args` are sys.argv[1:].
    pub(crate) fn py(&self, code: &str, args: &[&str]) -> String {
        let script = format!(
            "import sys, os, boto3\n\
             s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n{code}"
        );
        let out = self
            .command(PY)
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "python failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn make_bucket(&self, name: &str) {
        self.py("s3.create_bucket(Bucket=sys.argv[1])", &[name]);
    }

    pub(crate) fn upload(&self, file: &Path, bucket: &str, key: &str) {
        self.py(
            "s3.upload_file(sys.argv[1], sys.argv[2], sys.argv[3])",
            &[&file.display().to_string(), bucket, key],
        );
    }

    /// Every key under `bucket/prefix`, relative to the prefix.
    pub(crate) fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self.py(
            "p = s3.get_paginator('list_objects_v2')\n\
             for page in p.paginate(Bucket=sys.argv[1], Prefix=sys.argv[2]):\n\
             \x20   for o in page.get('Contents', []): print(o['Key'])",
            &[bucket, &format!("{}/", prefix.trim_end_matches('/'))],
        );
        let mut keys: Vec<String> = out
            .lines()
            .map(|k| k[prefix.trim_end_matches('/').len() + 1..].to_string())
            .collect();
        keys.sort();
        keys
    }

    pub(crate) fn download(&self, bucket: &str, key: &str, to: &Path) -> Vec<u8> {
        self.py(
            "s3.download_file(sys.argv[1], sys.argv[2], sys.argv[3])",
            &[bucket, key, &to.display().to_string()],
        );
        std::fs::read(to).unwrap()
    }

    /// Run `cai args…` in `d` against this server.
    pub(crate) fn cai(&self, d: &Dir, args: &[&str]) -> Output {
        self.command(env!("CARGO_BIN_EXE_cai"))
            .args(args)
            .current_dir(d.tmp.path())
            .output()
            .expect("run cai")
    }

    pub(crate) fn cai_ok(&self, d: &Dir, args: &[&str]) -> String {
        let out = self.cai(d, args);
        assert!(
            out.status.success(),
            "cai {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// 1.2 MB partitions hold 61 galaxies: the 300-galaxy fixture makes 5 partitions.
const SIZE: &str = "1.2MB";

/// `index → z_pred` of a predictions file, bit for bit.
pub(crate) fn by_galaxy(bytes: Vec<u8>) -> BTreeMap<i64, u32> {
    let p = cai_core::predictions::Predictions::from_parquet("p", bytes.into()).unwrap();
    let map: BTreeMap<i64, u32> = p
        .index
        .iter()
        .zip(&p.z_pred)
        .map(|(&i, z)| (i, z.to_bits()))
        .collect();
    assert_eq!(map.len(), p.len(), "a galaxy appears twice");
    map
}

pub(crate) fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// The same run on local paths, for comparison.
pub(crate) fn local_run(d: &Dir, extra: &[&str]) -> BTreeMap<i64, u32> {
    let f = fixtures();
    d.ok(&[
        "partition",
        "--input",
        &f.dataset.display().to_string(),
        "--size",
        SIZE,
        "--out",
        &d.s("local-parts"),
    ]);
    let mut args = vec![
        "run",
        "--data",
        &d.s("local-parts") as &str,
        "--results",
        &d.s("local-res") as &str,
        "--model",
        f.model.to_str().unwrap(),
        "--workers",
        "1",
        "--threads",
        "2",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.ok(&args);
    by_galaxy(std::fs::read(d.path("local-res/predictions.parquet")).unwrap())
}

#[test]
fn partition_run_summarize_predict_on_s3_equal_a_local_run() {
    let Some(s3) = S3Server::moto() else { return };
    partition_run_summarize_predict(&s3);
}

#[test]
fn partition_run_summarize_predict_on_s3s_fs_equal_a_local_run() {
    let Some(s3) = S3Server::s3s_fs() else { return };
    partition_run_summarize_predict(&s3);
}

/// partition → run (with its lease, checkpoint and summary) → summarize again → predict, all
/// on `s3://` at `s3`, equal galaxy for galaxy to the same steps on local paths.
fn partition_run_summarize_predict(s3: &S3Server) {
    let d = Dir::new();
    let f = fixtures();
    for b in ["cai-data", "cai-results", "cai-models"] {
        s3.make_bucket(b);
    }
    s3.upload(&f.model, "cai-models", "astromae/model.safetensors");

    s3.cai_ok(
        &d,
        &[
            "partition",
            "--input",
            f.dataset.to_str().unwrap(),
            "--size",
            SIZE,
            "--out",
            "s3://cai-data/parts",
        ],
    );
    let parts = s3.keys("cai-data", "parts");
    assert_eq!(
        parts,
        [
            "00001.safetensors",
            "00002.safetensors",
            "00003.safetensors",
            "00004.safetensors",
            "00005.safetensors",
            "manifest.json"
        ]
    );

    let common = ["--batch-size", "16", "--world-size", "3"];
    let stdout = s3.cai_ok(
        &d,
        &[
            "run",
            "--data",
            "s3://cai-data/parts",
            "--results",
            "s3://cai-results/run1",
            "--model",
            "s3://cai-models/astromae/model.safetensors",
            "--workers",
            "1",
            "--threads",
            "2",
            common[0],
            common[1],
            common[2],
            common[3],
        ],
    );
    assert!(stdout.contains("s3://cai-results/run1"), "{stdout}");
    let keys = s3.keys("cai-results", "run1");
    for k in [
        "plan.json",
        "payload.json",
        "0.json",
        "1.json",
        "2.json",
        "predictions/0.parquet",
        "predictions/2.parquet",
        "combined_data.json",
        "predictions.parquet",
        "summary.json",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    let remote = by_galaxy(s3.download(
        "cai-results",
        "run1/predictions.parquet",
        &d.path("remote.parquet"),
    ));
    let local = local_run(&d, &common);
    assert_eq!(remote.len(), 300);
    assert_eq!(remote, local, "S3 and local predictions differ");
    let summary = json(&s3.download("cai-results", "run1/summary.json", &d.path("summary.json")));
    assert_eq!(summary["galaxies"], 300);
    assert_eq!(summary["ranks_done"], 3);
    assert_eq!(summary["results"], "s3://cai-results/run1");
    let rank0 = json(&s3.download("cai-results", "run1/0.json", &d.path("0.json")));
    assert_eq!(
        rank0["data_path"],
        serde_json::json!(["00001.safetensors", "00002.safetensors"])
    );

    // Summarize again from S3 alone: same totals, same combined rank reports.
    s3.py(
        "s3.delete_object(Bucket='cai-results', Key='run1/summary.json')",
        &[],
    );
    let out = s3.cai_ok(
        &d,
        &["summarize", "--results", "s3://cai-results/run1", "--json"],
    );
    let again = json(out.as_bytes());
    assert_eq!(again["galaxies"], 300);
    assert_eq!(again["metrics"], summary["metrics"]);
    let combined = json(&s3.download(
        "cai-results",
        "run1/combined_data.json",
        &d.path("combined.json"),
    ));
    assert_eq!(combined.as_array().unwrap().len(), 3);

    // predict on one partition in S3 equals predict on the same local file.
    s3.cai_ok(
        &d,
        &[
            "predict",
            "--model",
            "s3://cai-models/astromae/model.safetensors",
            "--input",
            "s3://cai-data/parts/00002.safetensors",
            "--out",
            "remote.csv",
            "--threads",
            "2",
        ],
    );
    d.ok(&[
        "predict",
        "--model",
        f.model.to_str().unwrap(),
        "--input",
        &d.s("local-parts/00002.safetensors"),
        "--out",
        "local.csv",
        "--threads",
        "2",
    ]);
    let remote_csv = std::fs::read_to_string(d.path("remote.csv")).unwrap();
    let local_csv = std::fs::read_to_string(d.path("local.csv")).unwrap();
    assert_eq!(remote_csv.lines().count(), 62, "header + 61 galaxies");
    assert_eq!(remote_csv, local_csv);
}

#[test]
fn the_originals_payload_runs_on_its_buckets_without_location_flags() {
    let Some(s3) = S3Server::moto() else { return };
    let d = Dir::new();
    let f = fixtures();
    s3.make_bucket("cosmicai-data");
    s3.make_bucket("cosmicai-results");
    s3.upload(&f.model, "cosmicai-results", "model.safetensors");
    s3.cai_ok(
        &d,
        &[
            "partition",
            "--input",
            f.dataset.to_str().unwrap(),
            "--size",
            SIZE,
            "--out",
            "s3://cosmicai-data/1MB",
        ],
    );
    std::fs::write(
        d.path("payload.json"),
        r#"{"bucket": "cosmicai-results", "file_limit": "4", "batch_size": 32,
            "object_type": "folder", "S3_object_name": "Anomaly Detection",
            "script": "/tmp/Anomaly Detection/Inference/inference.py",
            "result_path": "result-partition-1MB/1",
            "data_bucket": "cosmicai-data", "data_prefix": "1MB", "world_size": 2}"#,
    )
    .unwrap();
    s3.cai_ok(
        &d,
        &[
            "run",
            "--payload",
            "payload.json",
            "--model",
            "s3://cosmicai-results/model.safetensors",
            "--workers",
            "1",
            "--threads",
            "2",
        ],
    );
    let prefix = "result-partition-1MB/1";
    let keys = s3.keys("cosmicai-results", prefix);
    for k in ["0.json", "1.json", "combined_data.json", "payload.json"] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    assert!(!keys.iter().any(|x| x == "2.json"), "{keys:?}");
    let plan = json(&s3.download(
        "cosmicai-results",
        &format!("{prefix}/plan.json"),
        &d.path("plan.json"),
    ));
    assert_eq!(plan["data"], "s3://cosmicai-data/1MB");
    assert_eq!(plan["results"], format!("s3://cosmicai-results/{prefix}"));
    assert_eq!(plan["ranks"], serde_json::json!([[0, 1], [2, 3]]));
    assert_eq!(plan["items"][1]["DATA_BUCKET"], "cosmicai-data");
    assert_eq!(plan["items"][1]["RESULT_PATH"], prefix);
    let summary = json(&s3.download(
        "cosmicai-results",
        &format!("{prefix}/summary.json"),
        &d.path("summary.json"),
    ));
    assert_eq!(summary["galaxies"], 4 * 61);
    // The original's tooling reads combined_data.json: one entry per rank.
    let combined = json(&s3.download(
        "cosmicai-results",
        &format!("{prefix}/combined_data.json"),
        &d.path("combined.json"),
    ));
    assert_eq!(combined.as_array().unwrap().len(), 2);

    // A missing bucket is an error that names the location, not a hang or a panic.
    let out = s3.cai(
        &d,
        &["summarize", "--results", "s3://no-such-bucket/x", "--json"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-bucket"), "{err}");
}
