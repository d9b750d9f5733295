//! S3 faults: a seeded fault-injecting proxy in front of moto's S3 server answers about 5%
//! of requests with S3's `503 SlowDown`, cuts a GET's body mid-way, or stalls 2 s before
//! answering (and the first request open to each kind always meets it, so every kind is
//! exercised). Through it, `cai partition` to S3 writes the same partitions, a local-engine
//! run over `s3://` gives predictions identical to a fault-free run, and so do the Lambda
//! handlers; the retries are logged. A fault that persists (an object always answered 503,
//! one never answered) fails its rank by name within the retry bounds (`CAI_S3_RETRIES`,
//! `CAI_S3_TIMEOUT`, `CAI_S3_RETRY_TIMEOUT`; cai-core's `S3Retry`), and `--resume` over a
//! healthy endpoint finishes the run.
//!
//! Needs python3 with moto[server] (and cargo-lambda for the handlers); without them the
//! tests print why and pass, except under `CI=true`, where that is a failure.

use std::collections::HashMap;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::s3::{by_galaxy, json, local_run, S3Server};
use crate::util::{content_length, fixtures, read_head, Dir, SIZE};

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answer `503 SlowDown` without asking moto.
    SlowDown,
    /// Forward the answer's head and half its body, then close the connection.
    Cut,
    /// Wait this long, then forward the request.
    Stall(Duration),
}

/// The proxy's schedule: seeded random faults, plus objects that always fail.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// Seed of the per-request draw.
    pub seed: u64,
    /// Faults per thousand requests.
    pub per_mille: u64,
    /// How long a random stall lasts.
    pub stall: Duration,
    /// Requests whose line contains the text always meet the fault.
    pub always: Vec<(String, Fault)>,
    /// The first request whose line contains the text meets the fault (once).
    pub first: Vec<(String, Fault)>,
}

impl Schedule {
    /// About 5% of requests: 503 SlowDown, a cut body or a 2 s stall, seeded.
    pub(crate) fn five_percent(seed: u64) -> Self {
        Self {
            seed,
            per_mille: 50,
            stall: Duration::from_secs(2),
            always: Vec::new(),
            first: Vec::new(),
        }
    }
}

/// What the proxy did.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub requests: AtomicUsize,
    pub slowdown: AtomicUsize,
    pub cut: AtomicUsize,
    pub stalled: AtomicUsize,
}

impl Stats {
    pub(crate) fn line(&self) -> String {
        format!(
            "{} requests: {} answered 503 SlowDown, {} bodies cut mid-way, {} stalled",
            self.requests.load(Ordering::Relaxed),
            self.slowdown.load(Ordering::Relaxed),
            self.cut.load(Ordering::Relaxed),
            self.stalled.load(Ordering::Relaxed)
        )
    }
}

/// Which request meets which fault: a seeded draw per request, keyed by the request line
/// and how many times that line was seen (so a retry draws afresh), with the first request
/// open to each kind forced.
struct Decider {
    schedule: Schedule,
    seen: Mutex<HashMap<String, u64>>,
    /// Whether the first SlowDown (PUT), cut (object GET) and stall (list) were given.
    forced: Mutex<[bool; 3]>,
    /// Which of the schedule's `first` faults were met.
    first_met: Mutex<std::collections::HashSet<usize>>,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl Decider {
    fn decide(&self, line: &str) -> Option<Fault> {
        for (needle, fault) in &self.schedule.always {
            if line.contains(needle.as_str()) {
                return Some(*fault);
            }
        }
        for (i, (needle, fault)) in self.schedule.first.iter().enumerate() {
            if line.contains(needle.as_str()) && self.first_met.lock().unwrap().insert(i) {
                return Some(*fault);
            }
        }
        let is_get = line.starts_with("GET ");
        let is_list = is_get && line.contains("list-type");
        let kind = if line.starts_with("PUT ") {
            Some(0)
        } else if is_list {
            Some(2)
        } else if is_get {
            Some(1)
        } else {
            None
        };
        if let Some(k) = kind {
            let mut forced = self.forced.lock().unwrap();
            if !forced[k] {
                forced[k] = true;
                return Some(self.kind(k as u64));
            }
        }
        let occurrence = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(line.to_string()).or_default();
            *n += 1;
            *n
        };
        let h = splitmix(self.schedule.seed ^ fnv(line) ^ splitmix(occurrence));
        if h % 1000 >= self.schedule.per_mille {
            return None;
        }
        // A cut needs a body to cut: other requests get one of the other two.
        let k = (h / 1000) % 3;
        Some(if k == 1 && !is_get {
            self.kind(0)
        } else {
            self.kind(k)
        })
    }

    fn kind(&self, k: u64) -> Fault {
        match k {
            0 => Fault::SlowDown,
            1 => Fault::Cut,
            _ => Fault::Stall(self.schedule.stall),
        }
    }
}

/// How long the straggler tests' stalled read lasts: far longer than a whole run should
/// take, even on a loaded machine (ranks took 20 s at load 10).
pub(crate) const STRAGGLER_STALL: Duration = Duration::from_secs(300);

/// The straggler tests' proxy in front of `upstream`: the first read of partition 00003
/// (rank 2's, with one partition per rank) stalls [`STRAGGLER_STALL`]; every other request
/// passes untouched, the read of that partition by a second copy of rank 2 included.
pub(crate) fn first_read_stalls(upstream: &str) -> FaultyS3 {
    FaultyS3::start(
        upstream,
        Schedule {
            seed: 1,
            per_mille: 0,
            stall: Duration::ZERO,
            always: Vec::new(),
            first: vec![("00003.safetensors".into(), Fault::Stall(STRAGGLER_STALL))],
        },
    )
}

/// A TCP proxy in front of moto that injects the faults of a [`Schedule`]. Every request
/// gets its own connection (`Connection: close` both ways), so each meets the schedule.
pub(crate) struct FaultyS3 {
    pub port: u16,
    pub stats: Arc<Stats>,
    _rt: tokio::runtime::Runtime,
}

impl FaultyS3 {
    pub(crate) fn start(upstream: &str, schedule: Schedule) -> Self {
        let upstream: u16 = upstream.rsplit(':').next().unwrap().parse().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(Stats::default());
        let decider = Arc::new(Decider {
            schedule,
            seen: Mutex::new(HashMap::new()),
            forced: Mutex::new([false; 3]),
            first_met: Mutex::new(Default::default()),
        });
        let s = stats.clone();
        rt.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (s, decider) = (s.clone(), decider.clone());
                tokio::spawn(async move {
                    let _ = proxy_one(sock, upstream, &decider, &s).await;
                });
            }
        });
        FaultyS3 {
            port,
            stats,
            _rt: rt,
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A head with its `Connection` header replaced by `Connection: close`.
fn closing(head: &str) -> String {
    let mut out: String = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    out.push_str("Connection: close\r\n\r\n");
    out
}

async fn proxy_one(
    mut client: tokio::net::TcpStream,
    upstream: u16,
    decider: &Decider,
    stats: &Stats,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (head, rest) = read_head(&mut client).await?;
    let head = String::from_utf8_lossy(&head).into_owned();
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let body_left = content_length(&head).saturating_sub(rest.len()) as u64;
    let line = head.lines().next().unwrap_or_default().to_string();
    let fault = decider.decide(&line);
    match fault {
        Some(Fault::SlowDown) => {
            // Take the whole request, as S3 does, then refuse it.
            tokio::io::copy(&mut (&mut client).take(body_left), &mut tokio::io::sink()).await?;
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                        <Message>Please reduce your request rate.</Message></Error>";
            let resp = format!(
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(resp.as_bytes()).await?;
            stats.slowdown.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Some(Fault::Stall(d)) => {
            stats.stalled.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(d).await;
        }
        _ => {}
    }
    let mut up = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await?;
    up.write_all(closing(&head).as_bytes()).await?;
    up.write_all(&rest).await?;
    tokio::io::copy(&mut (&mut client).take(body_left), &mut up).await?;
    let (rhead, mut body) = read_head(&mut up).await?;
    let rhead_text = String::from_utf8_lossy(&rhead).into_owned();
    client.write_all(closing(&rhead_text).as_bytes()).await?;
    let length = content_length(&rhead_text);
    if fault == Some(Fault::Cut) && length > 1 {
        // Forward half of the body, then drop both connections.
        let keep = length / 2;
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

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `cai args…` against S3 through `endpoint` with extra environment.
fn cai_via(s3: &S3Server, d: &Dir, endpoint: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    s3.command(env!("CARGO_BIN_EXE_cai"))
        .env("AWS_ENDPOINT_URL", endpoint)
        .envs(env.iter().copied())
        .args(args)
        .current_dir(d.tmp.path())
        .output()
        .expect("run cai")
}

/// The `partitions` of a manifest (what `cai partition` wrote, without where it ran).
fn partitions_of(manifest: &[u8]) -> Value {
    json(manifest)["partitions"].clone()
}

#[test]
fn partition_and_run_over_s3_through_faults_equal_a_fault_free_run() {
    let Some(s3) = S3Server::moto() else { return };
    let d = Dir::new();
    let f = fixtures();
    for b in ["cai-data", "cai-results", "cai-models"] {
        s3.make_bucket(b);
    }
    s3.upload(&f.model, "cai-models", "model.safetensors");
    let proxy = FaultyS3::start(&s3.endpoint, Schedule::five_percent(24));

    let out = cai_via(
        &s3,
        &d,
        &proxy.endpoint(),
        &[],
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
    assert!(out.status.success(), "partition failed\n{}", text(&out));
    let mut logs = String::from_utf8_lossy(&out.stderr).into_owned();
    d.ok(&[
        "partition",
        "--input",
        f.dataset.to_str().unwrap(),
        "--size",
        SIZE,
        "--out",
        &d.s("clean-parts"),
    ]);
    let remote = s3.download("cai-data", "parts/manifest.json", &d.path("m.json"));
    let clean = std::fs::read(d.path("clean-parts/manifest.json")).unwrap();
    assert_eq!(
        partitions_of(&remote),
        partitions_of(&clean),
        "partitions written through faults differ"
    );

    let common = ["--batch-size", "16", "--world-size", "3"];
    let out = cai_via(
        &s3,
        &d,
        &proxy.endpoint(),
        &[],
        &[
            "run",
            "--data",
            "s3://cai-data/parts",
            "--results",
            "s3://cai-results/faults",
            "--model",
            "s3://cai-models/model.safetensors",
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
    assert!(out.status.success(), "run failed\n{}", text(&out));
    logs.push_str(&String::from_utf8_lossy(&out.stderr));
    // Partitions are checked against the manifest's SHA-256 as they are read, so a cut
    // body that was not resumed correctly would have failed its rank.
    let got = by_galaxy(s3.download(
        "cai-results",
        "faults/predictions.parquet",
        &d.path("p.parquet"),
    ));
    let expected = local_run(&d, &common);
    assert_eq!(got.len(), 300);
    assert_eq!(got, expected, "predictions through faults differ");
    let summary = json(&s3.download("cai-results", "faults/summary.json", &d.path("s.json")));
    assert_eq!(summary["ranks_done"], 3);

    eprintln!("fault proxy (seed 24, 5%): {}", proxy.stats.line());
    let st = &proxy.stats;
    assert!(st.slowdown.load(Ordering::Relaxed) > 0);
    assert!(st.cut.load(Ordering::Relaxed) > 0);
    assert!(st.stalled.load(Ordering::Relaxed) > 0);
    // Retries are logged by default.
    assert!(
        logs.contains("backing off") || logs.contains("Retrying"),
        "no retry was logged:\n{logs}"
    );
}

#[test]
fn a_persistent_fault_fails_its_rank_by_name_and_resume_finishes() {
    let Some(s3) = S3Server::moto() else { return };
    let d = Dir::new();
    let f = fixtures();
    for b in ["cai-data", "cai-results", "cai-models"] {
        s3.make_bucket(b);
    }
    s3.upload(&f.model, "cai-models", "model.safetensors");
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
    // Ranks: [[1, 2], [3, 4], [5]]. Partition 3 always answers 503; partition 5 never
    // answers at all.
    let proxy = FaultyS3::start(
        &s3.endpoint,
        Schedule {
            seed: 1,
            per_mille: 0,
            stall: Duration::ZERO,
            always: vec![
                ("00003.safetensors".into(), Fault::SlowDown),
                (
                    "00005.safetensors".into(),
                    Fault::Stall(Duration::from_secs(3600)),
                ),
            ],
            first: Vec::new(),
        },
    );
    let bounds = [
        ("CAI_S3_RETRIES", "2"),
        ("CAI_S3_TIMEOUT", "2"),
        ("CAI_S3_RETRY_TIMEOUT", "20"),
    ];
    let run = |endpoint: &str, resume: bool| {
        let mut c = s3.command(env!("CARGO_BIN_EXE_cai"));
        c.env("AWS_ENDPOINT_URL", endpoint)
            .envs(bounds)
            .args(["run", "--data", "s3://cai-data/parts"])
            .args(["--results", "s3://cai-results/persist"])
            .args(["--model", "s3://cai-models/model.safetensors"])
            .args(["--workers", "2", "--threads", "1"])
            .args(["--batch-size", "16", "--world-size", "3", "--json"])
            .current_dir(d.tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if resume {
            c.arg("--resume");
        }
        c
    };
    let t = Instant::now();
    let mut child = run(&proxy.endpoint(), false).spawn().unwrap();
    // Not a hang: the run ends within the retry bounds (3 attempts of 2 s and backoff).
    let deadline = Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > deadline {
            let _ = child.kill();
            panic!("the run hangs on a persistent fault ({deadline:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let summary = json(&out.stdout);
    let failed: Vec<u64> = summary["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rank"].as_u64().unwrap())
        .collect();
    assert_eq!(failed, [1, 2], "{summary}");
    for (rank, file) in [(1, "00003.safetensors"), (2, "00005.safetensors")] {
        let failure = json(&s3.download(
            "cai-results",
            &format!("persist/failed/{rank}.json"),
            &d.path("f.json"),
        ));
        let error = failure["error"].as_str().unwrap();
        assert!(error.contains(file), "rank {rank}: {error}");
        eprintln!("rank {rank} failed: {error}");
    }
    eprintln!(
        "persistent faults: the run ended in {took:?} with ranks 1 and 2 failed ({})",
        proxy.stats.line()
    );

    // Over a healthy endpoint, --resume runs the two failed ranks.
    let out = run(&s3.endpoint, true).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let got = by_galaxy(s3.download(
        "cai-results",
        "persist/predictions.parquet",
        &d.path("p.parquet"),
    ));
    assert_eq!(
        got,
        local_run(&d, &["--batch-size", "16", "--world-size", "3"])
    );
}

#[test]
fn a_partition_whose_first_read_stalls_gets_a_second_copy_that_wins() {
    let Some(s3) = S3Server::moto() else { return };
    let d = Dir::new();
    let f = fixtures();
    for b in ["cai-data", "cai-results", "cai-models"] {
        s3.make_bucket(b);
    }
    s3.upload(&f.model, "cai-models", "model.safetensors");
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
    // One partition per rank; rank 2's partition (00003) stalls on its first read for
    // longer than the whole run should take.
    let stall = STRAGGLER_STALL;
    let proxy = first_read_stalls(&s3.endpoint);
    let common = ["--batch-size", "16", "--world-size", "5"];
    let t = Instant::now();
    let out = cai_via(
        &s3,
        &d,
        &proxy.endpoint(),
        &[("CAI_S3_TIMEOUT", "600")],
        &[
            "run",
            "--data",
            "s3://cai-data/parts",
            "--results",
            "s3://cai-results/straggler",
            "--model",
            "s3://cai-models/model.safetensors",
            "--workers",
            "2",
            "--threads",
            "1",
            "--json",
            "--speculate",
            "2",
            common[0],
            common[1],
            common[2],
            common[3],
        ],
    );
    let took = t.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("starting a second copy"), "{stderr}");
    let summary = json(&out.stdout);
    assert_eq!(
        summary["speculated_ranks"],
        serde_json::json!([2]),
        "{summary}"
    );
    assert_eq!(summary["ranks_done"], 5);
    assert_eq!(summary["galaxies"], 300);
    // The copy won: the run did not wait for the stalled read.
    assert!(took < stall, "the run took {took:?}, as long as the stall");
    let rank2 = json(&s3.download("cai-results", "straggler/2.json", &d.path("2.json")));
    assert_eq!(rank2["speculated"], true);
    let rank0 = json(&s3.download("cai-results", "straggler/0.json", &d.path("0.json")));
    assert!(rank0.get("speculated").is_none());
    let got = by_galaxy(s3.download(
        "cai-results",
        "straggler/predictions.parquet",
        &d.path("p.parquet"),
    ));
    assert_eq!(
        got,
        local_run(&d, &common),
        "every galaxy once, as a plain run"
    );
    eprintln!(
        "straggler: rank 2's first read stalled {stall:?}; the run took {took:?} with a \
         second copy of rank 2 ({})",
        proxy.stats.line()
    );
}

#[cfg(feature = "aws")]
#[test]
fn the_lambda_handlers_through_faults_equal_a_fault_free_run() {
    use crate::lambda::{
        infer_task, initialize, items, machine, outputs, payload, stage_data, summarize, tools,
        Emulator, Launch,
    };
    use crate::sfn::task_payload;
    let Some(s3) = tools() else { return };
    let d = Dir::new();
    stage_data(&s3, &d);
    let proxy = FaultyS3::start(&s3.endpoint, Schedule::five_percent(5));
    let sm = machine();
    let l = Launch::new(&s3, &proxy.endpoint(), d.tmp.path());
    let (state, _) = initialize(&l, &sm, &payload("lambda/seeded-faults", 3, 16));
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
    let (remote, _) = outputs(&s3, &d, "lambda/seeded-faults");
    let local = local_run(&d, &["--batch-size", "16", "--world-size", "3"]);
    assert_eq!(
        remote, local,
        "the handlers' predictions through faults differ"
    );
    eprintln!(
        "fault proxy before the handlers (seed 5, 5%): {}",
        proxy.stats.line()
    );
    let st = &proxy.stats;
    assert!(st.slowdown.load(Ordering::Relaxed) > 0);
    assert!(st.cut.load(Ordering::Relaxed) > 0);
    assert!(st.stalled.load(Ordering::Relaxed) > 0);
}
