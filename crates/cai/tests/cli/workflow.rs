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
use crate::s3::{by_galaxy, free_port, json as parse_json, wait_listening, Moto};
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
pub(crate) fn with_workflow(check: impl FnOnce(&Moto, &Dir, &str)) {
    // Probe the tools (and fail under CI when missing) with a throwaway server.
    if tools().is_none() {
        return;
    }
    let router_port = free_port();
    let moto = Moto::start_with_env(&[("MOTO_PORT", router_port.to_string())])
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
    let l = Launch::new(&moto, &moto.endpoint, d.tmp.path());
    let emulators: Vec<Emulator> = (0..3).map(|_| Emulator::start()).collect();
    let _functions: Vec<_> = ["initialize", "infer", "summarize"]
        .iter()
        .zip(&emulators)
        .map(|(h, emu)| l.start(emu, h, true, "info"))
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
    check(&moto, &d, &arn);
    drop(router);
}

/// Delete every state machine (their executions are over) and create a new one from the
/// workflow's definition (`sm.json` in `d`), for one more execution on this moto server;
/// its ARN.
pub(crate) fn new_state_machine(moto: &Moto, d: &Dir) -> String {
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

fn run_checks(moto: &Moto, d: &Dir, arn: &str) {
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
