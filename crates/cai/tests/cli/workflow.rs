//! The whole AWS workflow with nothing hand-driven: `cai run --engine aws` starts the
//! generated state machine on moto's Step Functions, whose ASL interpreter runs it
//! (Initialize → the Distributed Map reading items.json from S3 → Summarize → Complete?),
//! calling Lambda's Invoke API; a router (tests/support/lambda_router.py) sends those calls to
//! `cargo lambda`'s runtime API emulators, where our `bootstrap` serves them over data in
//! moto's S3. `cai run` follows the execution to its end and prints the summary (that its
//! predictions equal a local run's is checked by conformance.rs, on this same setup).

use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::util::manifest_dir;

use crate::lambda::{payload, stage_data, tools, Emulator, Launch, MODEL_URL, RESULTS_BUCKET};
use crate::s3::{by_galaxy, free_port, json as parse_json, wait_listening, S3Server};
use crate::util::Dir;

/// The router process, killed on drop.
struct Router(Child);

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start moto (its Step Functions executing), the three functions on their emulators and
/// the router, create the generated state machine, and call `check(moto, dir, arn)`.
/// moto's interpreter starts an execution only while no other state machine with a finished
/// execution exists (starting one deep-copies the machine, which reaches every machine's
/// executions and their locks: HTTP 500), so each run gets a fresh state machine
/// ([`new_state_machine`]), the earlier ones deleted.
pub(crate) fn with_workflow(check: impl FnOnce(&S3Server, &Dir, &str)) {
    with_workflow_via(1, |_| None, |w| check(w.moto, w.dir, &w.arn));
}

/// A running workflow setup, for the check.
pub(crate) struct Workflow<'a> {
    pub moto: &'a S3Server,
    pub dir: &'a Dir,
    /// The state machine's ARN.
    pub arn: String,
    /// The router's endpoint: Lambda's Invoke API for our functions (and moto for the rest).
    pub router: String,
}

/// [`with_workflow`] with `infer_copies` Infer function instances (each serves one
/// invocation at a time) and, when `proxy` gives one, the functions' S3 requests through
/// that fault proxy in front of moto.
pub(crate) fn with_workflow_via(
    infer_copies: usize,
    proxy: impl FnOnce(&S3Server) -> Option<crate::faults::FaultyS3>,
    check: impl FnOnce(&Workflow),
) {
    // Probe the tools (and fail under CI when missing) with a throwaway server.
    if tools().is_none() {
        return;
    }
    let router_port = free_port();
    let moto = S3Server::moto_with_env(&[("MOTO_PORT", router_port.to_string())])
        .expect("moto started a moment ago");
    let moto_port = moto
        .endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("moto port");
    // Let moto's Step Functions execute state machines (its default only records them).
    moto.py(
        "import urllib.request\n\
         r = urllib.request.Request(os.environ['AWS_ENDPOINT_URL'] + '/moto-api/config',\n\
             data=b'{\"stepfunctions\": {\"execute_state_machine\": true}}', method='POST')\n\
         urllib.request.urlopen(r).read()",
        &[],
    );

    let d = Dir::new();
    stage_data(&moto, &d);
    let faulty = proxy(&moto);
    let endpoint = faulty
        .as_ref()
        .map_or_else(|| moto.endpoint.clone(), |p| p.endpoint());
    // A stalled read must stall, not time out and be retried at once.
    let l = Launch::new(&moto, &endpoint, d.tmp.path()).with_env("CAI_S3_TIMEOUT", "600");
    let emulators: Vec<Emulator> = (0..3).map(|_| Emulator::start()).collect();
    let _functions: Vec<_> = ["initialize", "infer", "summarize"]
        .iter()
        .zip(&emulators)
        .flat_map(|(h, emu)| {
            let copies = if *h == "infer" {
                infer_copies.max(1)
            } else {
                1
            };
            (0..copies)
                .map(|_| l.start(emu, h, true, "info"))
                .collect::<Vec<_>>()
        })
        .collect();
    let router = Router(
        Command::new("python3")
            .arg(manifest_dir().join("tests/support/lambda_router.py"))
            .arg(router_port.to_string())
            .arg(moto_port.to_string())
            .args(
                ["initialize", "infer", "summarize"]
                    .iter()
                    .zip(&emulators)
                    .map(|(h, e)| format!("{h}={}", e.port)),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the router"),
    );
    wait_listening(router_port, "the Lambda router");

    // The state machine `cai aws state-machine` writes for this stack, with its real ARNs.
    d.ok(&[
        "aws",
        "state-machine",
        "--data",
        "s3://cosmicai-data/1MB",
        "--results",
        "s3://cosmicai-results/wf",
        "--model",
        MODEL_URL,
        "--stack",
        "cai",
        "--region",
        "us-east-1",
        "--account",
        "123456789012",
        "--out",
        "sm.json",
    ]);
    let arn = new_state_machine(&moto, &d);
    check(&Workflow {
        moto: &moto,
        dir: &d,
        arn,
        router: format!("http://127.0.0.1:{router_port}"),
    });
    drop(router);
    drop(faulty);
}

/// Delete every state machine (their executions are over) and create a new one from the
/// workflow's definition (`sm.json` in `d`), for one more execution on this moto server;
/// its ARN.
pub(crate) fn new_state_machine(moto: &S3Server, d: &Dir) -> String {
    static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    moto.py(
        "sf = boto3.client('stepfunctions', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
         for m in sf.list_state_machines()['stateMachines']:\n\
         \x20   sf.delete_state_machine(stateMachineArn=m['stateMachineArn'])\n\
         print(sf.create_state_machine(name=sys.argv[2], definition=open(sys.argv[1]).read(),\n\
             roleArn='arn:aws:iam::123456789012:role/cai-workflow')['stateMachineArn'])",
        &[&d.s("sm.json"), &format!("cai-workflow-{n}")],
    )
    .trim()
    .to_string()
}

#[test]
fn step_functions_runs_the_generated_workflow_on_the_handlers() {
    with_workflow(run_checks);
}

fn run_checks(moto: &S3Server, d: &Dir, arn: &str) {
    // The original's payload, as a user would pass it.
    std::fs::write(
        d.path("payload.json"),
        serde_json::to_vec(&payload("wf", 3, 16)).expect("payload"),
    )
    .expect("write payload");
    let out = moto.cai_ok(
        d,
        &[
            "run",
            "--engine",
            "aws",
            "--state-machine",
            arn,
            "--payload",
            "payload.json",
            "--poll",
            "0.5",
            "--json",
        ],
    );
    let json_start = out.find('{').expect("summary JSON on stdout");
    let summary: Value = serde_json::from_str(&out[json_start..]).expect("summary JSON");
    assert_eq!(summary["galaxies"], 300, "{summary}");
    assert_eq!(summary["ranks_done"], 3, "{summary}");

    let preds = by_galaxy(moto.download(
        RESULTS_BUCKET,
        "wf/predictions.parquet",
        &d.path("wf.parquet"),
    ));
    assert_eq!(preds.len(), 300);
    let keys = moto.keys(RESULTS_BUCKET, "wf");
    for k in ["0.json", "1.json", "2.json", "items.json", "summary.json"] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    // The Distributed Map's ResultWriter wrote its manifest under the results.
    assert!(
        keys.iter()
            .any(|k| k.starts_with("stepfunctions/") && k.ends_with("manifest.json")),
        "{keys:?}"
    );
    let s = parse_json(&moto.download(RESULTS_BUCKET, "wf/summary.json", &d.path("s.json")));
    assert_eq!(s["galaxies"], 300);

    // A detached run is recorded at its results location: `cai status` finds the execution
    // there, shows it once, then follows it to the summary.
    let results = format!("s3://{RESULTS_BUCKET}/wf-detached");
    let arn2 = new_state_machine(moto, d);
    let out = moto.cai_ok(
        d,
        &[
            "run",
            "--engine",
            "aws",
            "--state-machine",
            &arn2,
            "--data",
            "s3://cosmicai-data/1MB",
            "--results",
            &results,
            "--world-size",
            "3",
            "--batch-size",
            "16",
            "--detach",
        ],
    );
    let execution = crate::lambda::execution_arn(&out);
    let record = parse_json(&moto.download(
        RESULTS_BUCKET,
        "wf-detached/aws/execution.json",
        &d.path("e.json"),
    ));
    assert_eq!(record["execution"], execution.as_str());
    let once = moto.cai(d, &["status", "--results", &results, "--once"]);
    let text = String::from_utf8_lossy(&once.stdout).into_owned();
    assert!(text.contains(&execution), "{text}");
    let out = moto.cai_ok(
        d,
        &["status", "--results", &results, "--poll", "0.5", "--json"],
    );
    let summary: Value =
        serde_json::from_str(&out[out.find('{').expect("JSON")..]).expect("summary JSON");
    assert_eq!(summary["galaxies"], 300, "{summary}");
    assert_eq!(summary["ranks_done"], 3, "{summary}");
}

/// `cai sweep --engine aws`: the partitions in S3 re-cut at another size, each run a whole
/// execution of the state machine into its own folder (a one-run grid: one execution per
/// moto server).
#[test]
fn sweep_runs_on_the_aws_engine() {
    with_workflow(|moto, d, arn| {
        let out = moto.cai_ok(
            d,
            &[
                "sweep",
                "--engine",
                "aws",
                "--state-machine",
                arn,
                "--data",
                "s3://cosmicai-data/1MB",
                "--partition-sizes",
                "2MB",
                "--batch-sizes",
                "32",
                "--repeat",
                "1",
                "--results",
                "s3://cosmicai-results/sweep",
                "--model",
                MODEL_URL,
                "--poll",
                "0.5",
            ],
        );
        let s = parse_json(&moto.download(
            RESULTS_BUCKET,
            "sweep/p2MB-b32-r1/summary.json",
            &d.path("s.json"),
        ));
        assert_eq!(s["galaxies"], 300, "{s}\n{out}");
        assert_eq!(s["ranks_total"], 3, "2 MB partitions of the 300 galaxies");
        assert!(out.contains("p2MB-b32-r1"), "{out}");
    });
}

/// A straggler on AWS: rank 2's partition stalls on its first read (through the fault proxy
/// in front of moto) far longer than the run should take. Once more than half the ranks are
/// done, the follower (`cai run --engine aws`) invokes the Infer function for rank 2 with
/// its map item; that copy wins, the stalled copy sees it and ends as superseded (a
/// success without output), the execution succeeds, the summary and rank 2's report mark
/// it speculated, and every galaxy is in the results exactly once.
#[test]
fn a_straggling_rank_gets_a_second_invocation_that_wins() {
    use crate::faults::{first_read_stalls, STRAGGLER_STALL};
    // Two instances for the map's five ranks and one for the second copy.
    with_workflow_via(
        3,
        |moto| Some(first_read_stalls(&moto.endpoint)),
        |w| {
            let t = std::time::Instant::now();
            let out = w
                .moto
                .command(env!("CARGO_BIN_EXE_cai"))
                .env("AWS_ENDPOINT_URL_LAMBDA", &w.router)
                .args([
                    "run",
                    "--engine",
                    "aws",
                    "--state-machine",
                    &w.arn,
                    "--data",
                    "s3://cosmicai-data/1MB",
                    "--results",
                    "s3://cosmicai-results/straggler",
                    "--world-size",
                    "5",
                    "--batch-size",
                    "16",
                    "--speculate",
                    "2",
                    "--poll",
                    "0.5",
                    "--json",
                ])
                .current_dir(w.dir.tmp.path())
                .output()
                .expect("run cai");
            let took = t.elapsed();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stderr}");
            assert!(stderr.contains("for a second copy"), "{stderr}");
            assert!(
                took < STRAGGLER_STALL,
                "the run took {took:?}, as long as the stall"
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let summary: Value =
                serde_json::from_str(&stdout[stdout.find('{').expect("JSON")..]).expect("JSON");
            assert_eq!(
                summary["speculated_ranks"],
                serde_json::json!([2]),
                "{summary}"
            );
            assert_eq!(summary["ranks_done"], 5, "{summary}");
            assert_eq!(summary["galaxies"], 300, "{summary}");
            assert_eq!(
                summary["failed"].as_array().map(Vec::len),
                Some(0),
                "{summary}"
            );
            let rank = |r: usize| {
                parse_json(&w.moto.download(
                    RESULTS_BUCKET,
                    &format!("straggler/{r}.json"),
                    &w.dir.path(&format!("{r}.json")),
                ))
            };
            assert_eq!(rank(2)["speculated"], true);
            assert!(rank(0).get("speculated").is_none());
            let keys = w.moto.keys(RESULTS_BUCKET, "straggler");
            assert!(!keys.iter().any(|k| k == "failed/2.json"), "{keys:?}");
            // Every galaxy once (by_galaxy fails on a second row for one galaxy).
            let preds = by_galaxy(w.moto.download(
                RESULTS_BUCKET,
                "straggler/predictions.parquet",
                &w.dir.path("p.parquet"),
            ));
            assert_eq!(preds.len(), 300);
            eprintln!("aws straggler: rank 2's first read stalled {STRAGGLER_STALL:?}; the run took {took:?}");
        },
    );
}
