//! The Lambda handlers on a real Lambda runtime API: `cargo lambda watch --only-lambda-apis`
//! serves the runtime API and the invoke endpoint, our built `cai` binary (as `bootstrap`,
//! or as `cai lambda`) polls it like a `provided.al2023` function, and `cargo lambda invoke`
//! sends the events. Data, model and results are in a moto S3 server.
//!
//! The workflow is driven in Step Functions' order with the events the generated state
//! machine sends (its `Parameters`, `ItemReader`, `ResultSelector` and `ResultPath` applied
//! by `sfn.rs`'s `task_payload` and `task_output`): Initialize (the original's
//! payload) → every item of `items.json` → Summarize. The outputs must equal a local
//! `cai run` of the same data, galaxy for galaxy, when S3 answers 500 or cuts connections
//! mid-object, and when a handler is killed mid-rank and its item re-invoked (the plain
//! run's equality is conformance.rs's, through the whole workflow).
//!
//! Without cargo-lambda or moto the tests print why and pass, except under `CI=true`, where
//! that is a failure (`.ci/run` installs both: `pip install cargo-lambda "moto[server]"`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cai_engine::aws::{state_machine, AwsConfig, FunctionArns, S3Prefix};
use serde_json::{json, Value};

use crate::s3::{by_galaxy, free_port, json as parse_json, local_run, wait_listening, S3Server};
use crate::sfn::{apply_template, set_path, task_output, task_payload};
use crate::util::{content_length, fixtures, read_head, Dir, SIZE};

pub(crate) const DATA_BUCKET: &str = "cosmicai-data";
pub(crate) const RESULTS_BUCKET: &str = "cosmicai-results";
pub(crate) const MODEL_URL: &str = "s3://cosmicai-results/models/astromae.safetensors";

/// Print why the test is skipped; under CI, fail instead.
fn unavailable(what: &str) {
    crate::util::unavailable("the Lambda test", what);
}

/// `cargo lambda watch --only-lambda-apis` on a free port: the runtime API for one function
/// and its invoke endpoint. Killed on drop.
pub(crate) struct Emulator {
    child: Child,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    invocations: AtomicUsize,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emulator {
    pub(crate) fn available() -> bool {
        Command::new("cargo")
            .args(["lambda", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub(crate) fn start() -> Self {
        // `cargo lambda watch` reads a Cargo manifest even when it builds nothing; give it
        // an empty package (it never compiles it: --only-lambda-apis).
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[package]\nname = \"emulator\"\nversion = \"0.0.0\"\nedition = \"2021\"\n[workspace]\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("watch.log")).unwrap();
        let child = Command::new("cargo")
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "--invoke-address",
                "127.0.0.1",
                "--invoke-port",
                &port.to_string(),
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start cargo lambda watch");
        let emu = Emulator {
            child,
            port,
            dir,
            invocations: AtomicUsize::new(0),
        };
        wait_listening(port, "cargo lambda watch");
        emu
    }

    /// The value Lambda gives a function as `AWS_LAMBDA_RUNTIME_API`.
    fn runtime_api(&self) -> String {
        format!("http://127.0.0.1:{}/.rt", self.port)
    }

    fn invoke_command(&self, event: &Value) -> Command {
        let n = self.invocations.fetch_add(1, Ordering::Relaxed);
        let file = self.dir.path().join(format!("event-{n}.json"));
        std::fs::write(&file, serde_json::to_vec(event).unwrap()).unwrap();
        let mut c = Command::new("cargo");
        c.args([
            "lambda",
            "invoke",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &self.port.to_string(),
            "--output-format",
            "json",
            "--data-file",
        ])
        .arg(file)
        .arg("_");
        c
    }

    /// Invoke the function with `event`: its answer, or the error Lambda reports.
    fn invoke(&self, event: &Value) -> Result<Value, String> {
        let out = self
            .invoke_command(event)
            .output()
            .expect("cargo lambda invoke");
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout))))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub(crate) fn invoke_ok(&self, event: &Value) -> Value {
        self.invoke(event)
            .unwrap_or_else(|e| panic!("invoke {event} failed:\n{e}"))
    }
}

/// One function instance: our `cai` binary polling the emulator's runtime API.
pub(crate) struct Function {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Process start → ready for the first event.
    init: Duration,
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a function instance is started.
pub(crate) struct Launch<'a> {
    s3: &'a S3Server,
    /// The S3 endpoint the function talks to (moto, or a fault proxy in front of it).
    endpoint: String,
    results_root: String,
    data_root: String,
    /// The function's `CAI_MODEL`.
    model: String,
    /// Directory holding a `bootstrap` link to the cai binary.
    bootstrap: PathBuf,
    /// More environment for the function.
    env: Vec<(String, String)>,
}

impl Launch<'_> {
    pub(crate) fn new<'a>(s3: &'a S3Server, endpoint: &str, tmp: &Path) -> Launch<'a> {
        let dir = tmp.join("lambda-task");
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("bootstrap");
        if !link.exists() {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cai"), &link).unwrap();
        }
        Launch {
            s3,
            endpoint: endpoint.to_string(),
            results_root: format!("s3://{RESULTS_BUCKET}/default"),
            data_root: format!("s3://{DATA_BUCKET}/1MB"),
            model: MODEL_URL.to_string(),
            bootstrap: link,
            env: Vec::new(),
        }
    }

    /// The same launch with `key=value` in the function's environment.
    pub(crate) fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The same launch with another model (`CAI_MODEL`) and data root (`CAI_DATA_ROOT`).
    pub(crate) fn with_model(mut self, model: &str, data_root: &str) -> Self {
        self.model = model.to_string();
        self.data_root = data_root.to_string();
        self
    }

    /// Start `handler` against `emu`, as Lambda does (`bootstrap`) or as `cai lambda`, and
    /// wait until it asks for its first event.
    pub(crate) fn start(
        &self,
        emu: &Emulator,
        handler: &str,
        as_bootstrap: bool,
        log: &str,
    ) -> Function {
        let mut c = if as_bootstrap {
            self.s3.command(self.bootstrap.to_str().unwrap())
        } else {
            let mut c = self.s3.command(env!("CARGO_BIN_EXE_cai"));
            c.arg("lambda");
            c
        };
        c.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_LAMBDA_RUNTIME_API", emu.runtime_api())
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "3538")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("CAI_HANDLER", handler)
            .env("CAI_MODEL", &self.model)
            .env("CAI_RESULTS_ROOT", &self.results_root)
            .env("CAI_DATA_ROOT", &self.data_root)
            .env("CAI_LOG", log)
            // As the local runs compared with (`--threads 2`).
            .env("CAI_THREADS", "2")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t = Instant::now();
        let mut child = c.spawn().expect("start the handler");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("ready in") {
                        let _ = tx.send(t.elapsed());
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut f = Function {
            child,
            lines,
            init: Duration::ZERO,
        };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(d) => f.init = d,
            Err(_) => panic!("the {handler} handler did not get ready:\n{}", f.log()),
        }
        f
    }
}

impl Function {
    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn wait_for(&mut self, needle: &str) {
        let t = Instant::now();
        while !self
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "no {needle:?} from the handler:\n{}",
                self.log()
            );
            assert!(
                matches!(self.child.try_wait(), Ok(None)),
                "the handler is gone:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The execution ARN `cai run --engine aws` prints (`execution  arn:…`).
pub(crate) fn execution_arn(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("execution"))
        .expect("execution ARN printed")
        .trim()
        .to_string()
}

/// The state machine the tests follow (the one `cai aws state-machine` writes).
pub(crate) fn machine() -> Value {
    let cfg = AwsConfig::new(
        "cai",
        S3Prefix::new(DATA_BUCKET, "1MB"),
        S3Prefix::new(RESULTS_BUCKET, "lambda"),
        S3Prefix::parse(MODEL_URL).unwrap(),
    );
    state_machine(&cfg, &FunctionArns::placeholders())
}

/// The original's payload for `result_path` over the 5 partitions in `cosmicai-data/1MB`.
pub(crate) fn payload(result_path: &str, world_size: usize, batch_size: usize) -> Value {
    json!({
        "bucket": RESULTS_BUCKET, "file_limit": "5", "batch_size": batch_size,
        "object_type": "folder", "S3_object_name": "Anomaly Detection",
        "script": "/tmp/Anomaly Detection/Inference/inference.py",
        "result_path": result_path, "data_bucket": DATA_BUCKET, "data_prefix": "1MB",
        "world_size": world_size
    })
}

/// Buckets, the model and the fixture dataset partitioned into `cosmicai-data/1MB`.
pub(crate) fn stage_data(s3: &S3Server, d: &Dir) {
    s3.make_bucket(DATA_BUCKET);
    s3.make_bucket(RESULTS_BUCKET);
    let f = fixtures();
    s3.upload(&f.model, RESULTS_BUCKET, "models/astromae.safetensors");
    s3.cai_ok(
        d,
        &[
            "partition",
            "--input",
            f.dataset.to_str().unwrap(),
            "--size",
            SIZE,
            "--out",
            &format!("s3://{DATA_BUCKET}/1MB"),
        ],
    );
}

/// Initialize as Step Functions runs it; returns the state after it (`$.init` set).
pub(crate) fn initialize(l: &Launch, sm: &Value, input: &Value) -> (Value, Duration) {
    let task = &sm["States"]["Initialize"];
    let emu = Emulator::start();
    let f = l.start(&emu, "initialize", false, "info");
    let event = task_payload(task, input).unwrap();
    let answer = emu.invoke_ok(&event);
    (task_output(task, input, answer).unwrap(), f.init)
}

/// The map's items, read as its ItemReader does.
pub(crate) fn items(s3: &S3Server, d: &Dir, sm: &Value, state: &Value) -> Vec<Value> {
    let reader = apply_template(&sm["States"]["Infer"]["ItemReader"]["Parameters"], state).unwrap();
    let bytes = s3.download(
        reader["Bucket"].as_str().unwrap(),
        reader["Key"].as_str().unwrap(),
        &d.path("items.json"),
    );
    parse_json(&bytes).as_array().unwrap().clone()
}

/// Summarize as Step Functions runs it, after the map; returns the final state.
pub(crate) fn summarize(l: &Launch, sm: &Value, state: &Value) -> Value {
    let task = &sm["States"]["Summarize"];
    let after_map = set_path(
        state,
        "$.map",
        json!({"ResultWriterDetails": {"Bucket": RESULTS_BUCKET, "Key": "lambda/stepfunctions/manifest.json"}}),
    )
    .unwrap();
    let emu = Emulator::start();
    let _f = l.start(&emu, "summarize", true, "info");
    let event = task_payload(task, &after_map).unwrap();
    let answer = emu.invoke_ok(&event);
    task_output(task, &after_map, answer).unwrap()
}

pub(crate) fn infer_task(sm: &Value) -> &Value {
    &sm["States"]["Infer"]["ItemProcessor"]["States"]["InferRank"]
}

/// Galaxies of a results prefix's `predictions.parquet`, and its `summary.json`.
pub(crate) fn outputs(s3: &S3Server, d: &Dir, prefix: &str) -> (BTreeMap<i64, u32>, Value) {
    let preds = by_galaxy(s3.download(
        RESULTS_BUCKET,
        &format!("{prefix}/predictions.parquet"),
        &d.path("p.parquet"),
    ));
    let summary = parse_json(&s3.download(
        RESULTS_BUCKET,
        &format!("{prefix}/summary.json"),
        &d.path("summary.json"),
    ));
    (preds, summary)
}

pub(crate) fn tools() -> Option<S3Server> {
    if !Emulator::available() {
        unavailable("cargo-lambda (pip install cargo-lambda)");
        return None;
    }
    let s3 = S3Server::moto();
    if s3.is_none() {
        unavailable("python3 with moto[server]");
    }
    s3
}

#[test]
fn handlers_in_step_functions_order_write_every_output() {
    let Some(s3) = tools() else { return };
    let d = Dir::new();
    stage_data(&s3, &d);
    let sm = machine();
    let l = Launch::new(&s3, &s3.endpoint, d.tmp.path());
    let input = payload("lambda/1", 3, 16);

    let (state, init_cold) = initialize(&l, &sm, &input);
    assert_eq!(state["init"]["world_size"], 3);
    assert_eq!(state["init"]["results"], "s3://cosmicai-results/lambda/1");
    let keys = s3.keys(RESULTS_BUCKET, "lambda/1");
    for k in ["plan.json", "payload.json", "items.json"] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    let items = items(&s3, &d, &sm, &state);
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[0]["DATA_PATH"],
        json!(["1MB/00001.safetensors", "1MB/00002.safetensors"])
    );

    let emu = Emulator::start();
    let f = l.start(&emu, "infer", true, "info");
    let task = infer_task(&sm);
    let mut galaxies = 0;
    for item in &items {
        let event = task_payload(task, item).unwrap();
        let out = task_output(task, item, emu.invoke_ok(&event)).unwrap();
        assert_eq!(out["rank"], item["RANK"]);
        assert_eq!(out["reused"], false);
        galaxies += out["galaxies"].as_u64().unwrap();
    }
    assert_eq!(galaxies, 300);
    let infer_cold = f.init;
    drop(f);

    let end = summarize(&l, &sm, &state);
    assert_eq!(end["summary"]["complete"], true, "{end}");
    assert_eq!(end["summary"]["galaxies"], 300);
    assert_eq!(end["summary"]["ranks_done"], 3);
    assert_eq!(end["summary"]["failed_ranks"], json!([]));

    let (remote, summary) = outputs(&s3, &d, "lambda/1");
    let rank0 = parse_json(&s3.download(RESULTS_BUCKET, "lambda/1/0.json", &d.path("0.json")));
    assert_eq!(rank0["engine"], "aws");
    assert_eq!(summary["galaxies"], 300);
    // Equal to the local engine's: conformance.rs, through the whole workflow.
    assert_eq!(remote.len(), 300);
    eprintln!(
        "cold start (process start → ready for the first event), test-profile build under cargo lambda: \
         initialize {:.1} ms, infer {:.1} ms (model loaded from S3 during init)",
        init_cold.as_secs_f64() * 1e3,
        infer_cold.as_secs_f64() * 1e3
    );

    // A rank the map retries after it finished is returned as it is, not recomputed.
    let before = s3.download(RESULTS_BUCKET, "lambda/1/1.json", &d.path("1a.json"));
    let f = l.start(&emu, "infer", false, "info");
    let again = emu.invoke_ok(&task_payload(task, &items[1]).unwrap());
    assert_eq!(again["reused"], true);
    drop(f);
    let after = s3.download(RESULTS_BUCKET, "lambda/1/1.json", &d.path("1b.json"));
    assert_eq!(before, after);

    // A rank that cannot run is a Lambda error (Step Functions counts it) and leaves
    // failed/<rank>.json, as the local engine does.
    s3.py(
        "s3.delete_object(Bucket=sys.argv[1], Key='1MB/00005.safetensors')",
        &[DATA_BUCKET],
    );
    s3.py(
        "s3.delete_object(Bucket=sys.argv[1], Key='lambda/1/2.json')",
        &[RESULTS_BUCKET],
    );
    let f = l.start(&emu, "infer", true, "info");
    let err = emu
        .invoke(&task_payload(task, &items[2]).unwrap())
        .unwrap_err();
    assert!(err.contains("CAI.RankFailed"), "{err}");
    assert!(err.contains("00005.safetensors"), "{err}");
    drop(f);
    let failure = parse_json(&s3.download(
        RESULTS_BUCKET,
        "lambda/1/failed/2.json",
        &d.path("failed.json"),
    ));
    assert_eq!(failure["rank"], 2);
    assert_eq!(failure["engine"], "aws");
    let end = summarize(&l, &sm, &state);
    assert_eq!(end["summary"]["complete"], false);
    assert_eq!(end["summary"]["failed_ranks"], json!([2]));
}

/// What the fault proxy did.
#[derive(Default)]
struct FaultStats {
    connections: AtomicUsize,
    errors_500: AtomicUsize,
    cut: AtomicUsize,
    denied: AtomicUsize,
    partition_gets: AtomicUsize,
}

/// A TCP proxy in front of moto that answers some requests with S3's 500 InternalError,
/// cuts the first partition downloads halfway through the body, and turns 404s into 403
/// AccessDenied (S3's answer for a missing key to a role without ListBucket on it). Every
/// request gets its own connection (`Connection: close` is added), so each one meets the
/// fault schedule.
struct FaultProxy {
    port: u16,
    stats: Arc<FaultStats>,
    _rt: tokio::runtime::Runtime,
}

/// Partition downloads cut halfway.
const CUT_PARTITION_GETS: usize = 3;
/// Every this-many connections gets a 500.
const ERROR_EVERY: usize = 4;

impl FaultProxy {
    fn start(upstream: u16) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(FaultStats::default());
        let s = stats.clone();
        rt.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let n = s.connections.fetch_add(1, Ordering::Relaxed);
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = proxy_one(sock, n, upstream, &s).await;
                });
            }
        });
        FaultProxy {
            port,
            stats,
            _rt: rt,
        }
    }
}

/// An S3 error response (with `Connection: close`).
fn s3_error(status: &str, code: &str, message: &str) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
         <Message>{message}</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn proxy_one(
    mut client: tokio::net::TcpStream,
    n: usize,
    upstream: u16,
    stats: &FaultStats,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (head, rest) = read_head(&mut client).await?;
    let head = String::from_utf8_lossy(&head).into_owned();
    // The request body still to come after the head.
    let body_left = content_length(&head).saturating_sub(rest.len()) as u64;
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let partition_get = request_line.starts_with("GET ") && request_line.contains(".safetensors");
    let cut =
        partition_get && stats.partition_gets.fetch_add(1, Ordering::Relaxed) < CUT_PARTITION_GETS;
    if !cut && n % ERROR_EVERY == ERROR_EVERY - 1 {
        // Take the whole request, as S3 does, then fail it.
        tokio::io::copy(&mut (&mut client).take(body_left), &mut tokio::io::sink()).await?;
        let resp = s3_error(
            "500 Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        );
        client.write_all(resp.as_bytes()).await?;
        stats.errors_500.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let mut up = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await?;
    let mut new_head: String = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    new_head.push_str("Connection: close\r\n\r\n");
    up.write_all(new_head.as_bytes()).await?;
    up.write_all(&rest).await?;
    tokio::io::copy(&mut (&mut client).take(body_left), &mut up).await?;
    let (rhead, mut body) = read_head(&mut up).await?;
    let rhead_text = String::from_utf8_lossy(&rhead).into_owned();
    if rhead_text.starts_with("HTTP/1.1 404") {
        // What S3 answers for a missing key to a role that may not list it.
        let resp = s3_error("403 Forbidden", "AccessDenied", "Access Denied");
        client.write_all(resp.as_bytes()).await?;
        stats.denied.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    client.write_all(&rhead).await?;
    if cut {
        // Forward half of the body, then drop both connections.
        let keep = content_length(&rhead_text) / 2;
        let mut chunk = [0u8; 8192];
        while body.len() < keep {
            let got = up.read(&mut chunk).await?;
            if got == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..got]);
        }
        body.truncate(keep);
        client.write_all(&body).await?;
        client.flush().await?;
        stats.cut.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    client.write_all(&body).await?;
    tokio::io::copy(&mut up, &mut client).await?;
    Ok(())
}

#[test]
fn s3_errors_cut_connections_and_403s_still_give_every_galaxy_once() {
    let Some(s3) = tools() else { return };
    let d = Dir::new();
    stage_data(&s3, &d);
    let moto_port: u16 = s3.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = FaultProxy::start(moto_port);
    let sm = machine();
    let l = Launch::new(
        &s3,
        &format!("http://127.0.0.1:{}", proxy.port),
        d.tmp.path(),
    );
    let input = payload("lambda/faults", 3, 16);

    let (state, _) = initialize(&l, &sm, &input);
    let items = items(&s3, &d, &sm, &state);
    let emu = Emulator::start();
    let f = l.start(&emu, "infer", true, "info");
    let task = infer_task(&sm);
    for item in &items {
        emu.invoke_ok(&task_payload(task, item).unwrap());
    }
    drop(f);
    let end = summarize(&l, &sm, &state);
    assert_eq!(end["summary"]["complete"], true, "{end}");
    assert_eq!(end["summary"]["galaxies"], 300);

    let (errors, cut, denied) = (
        proxy.stats.errors_500.load(Ordering::Relaxed),
        proxy.stats.cut.load(Ordering::Relaxed),
        proxy.stats.denied.load(Ordering::Relaxed),
    );
    eprintln!(
        "fault proxy: {} connections, {errors} answered 500, {cut} partition downloads cut \
         halfway, {denied} missing keys answered 403",
        proxy.stats.connections.load(Ordering::Relaxed)
    );
    assert!(errors > 0, "no request met a 500");
    assert!(
        denied > 0,
        "no missing key was asked for (each rank looks for its report)"
    );
    assert_eq!(cut, CUT_PARTITION_GETS, "partition downloads were not cut");
    let (remote, _) = outputs(&s3, &d, "lambda/faults");
    let local = local_run(&d, &["--batch-size", "16", "--world-size", "3"]);
    assert_eq!(
        remote, local,
        "Lambda (through faults) and local predictions differ"
    );
}

#[test]
fn a_handler_killed_mid_rank_then_reinvoked_gives_the_same_outputs() {
    let Some(s3) = tools() else { return };
    let d = Dir::new();
    stage_data(&s3, &d);
    let sm = machine();
    let l = Launch::new(&s3, &s3.endpoint, d.tmp.path());
    // One rank with all five partitions, small batches: a long rank to kill.
    let input = payload("lambda/killed", 1, 4);
    let (state, _) = initialize(&l, &sm, &input);
    let items = items(&s3, &d, &sm, &state);
    assert_eq!(items.len(), 1);
    let event = task_payload(infer_task(&sm), &items[0]).unwrap();

    let emu = Emulator::start();
    let mut f = l.start(&emu, "infer", true, "debug");
    let mut pending = emu
        .invoke_command(&event)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    f.wait_for("galaxies done");
    f.child.kill().unwrap();
    f.child.wait().unwrap();
    let _ = pending.kill();
    let _ = pending.wait();
    let keys = s3.keys(RESULTS_BUCKET, "lambda/killed");
    assert!(
        !keys.iter().any(|k| k == "0.json"),
        "the killed rank looks done: {keys:?}"
    );

    // The map retries the item on a fresh instance.
    let f2 = l.start(&emu, "infer", true, "info");
    let out = emu.invoke_ok(&event);
    assert_eq!(out["galaxies"], 300);
    assert_eq!(out["reused"], false);
    drop(f2);
    let end = summarize(&l, &sm, &state);
    assert_eq!(end["summary"]["complete"], true, "{end}");
    assert_eq!(end["summary"]["galaxies"], 300);
    let (remote, _) = outputs(&s3, &d, "lambda/killed");
    let local = local_run(&d, &["--batch-size", "4", "--world-size", "1"]);
    assert_eq!(
        remote, local,
        "the retried rank's predictions differ from a local run"
    );
}
