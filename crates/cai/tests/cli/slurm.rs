//! The Slurm engine against a real slurmctld (scripts/slurm/start.sh), beyond the
//! conformance suite every engine passes (conformance.rs): logs and reattaching, a
//! cancelled task retried, a killed task resumed, a corrupt partition named,
//! `--resume`, refused jobs and an unshared results location. Gated: these run only with
//! `CAI_TEST_SLURM=1` (scripts/test.sh sets it when it could start the cluster); the
//! cluster-free checks (dry run, no sbatch) always run.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::util::{fixtures, partitioned, read_json, Dir};

/// One Slurm test at a time: they share the cluster's two CPUs, and the kill test times a
/// running task.
static CLUSTER: Mutex<()> = Mutex::new(());

pub(crate) fn cluster() -> Option<std::sync::MutexGuard<'static, ()>> {
    if std::env::var("CAI_TEST_SLURM").as_deref() != Ok("1") {
        crate::util::unavailable(
            "the Slurm test",
            "a Slurm cluster (CAI_TEST_SLURM=1; scripts/test.sh starts one as root)",
        );
        return None;
    }
    Some(CLUSTER.lock().unwrap_or_else(|e| e.into_inner()))
}

fn model() -> String {
    fixtures().model.display().to_string()
}

/// `cai run --engine slurm` arguments for results under `res`.
fn slurm_args<'a>(d: &'a Dir, res: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "run",
        "--engine",
        "slurm",
        "--data",
        &d.s("parts"),
        "--results",
        &d.s(res),
        "--model",
        &model(),
        "--batch-size",
        "16",
        "--poll",
        "0.2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn cai(d: &Dir, args: &[String]) -> std::process::Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    d.cai(&a)
}

/// Predictions by galaxy index.
fn by_index(path: std::path::PathBuf) -> HashMap<i64, (String, i32, u32)> {
    let bytes = std::fs::read(&path).unwrap();
    let p = cai_core::predictions::Predictions::from_parquet("p", bytes.into()).unwrap();
    let mut m = HashMap::new();
    for i in 0..p.len() {
        let old = m.insert(
            p.index[i],
            (p.partition[i].clone(), p.row[i], p.z_pred[i].to_bits()),
        );
        assert!(old.is_none(), "galaxy {} twice", p.index[i]);
    }
    m
}

/// The Slurm options of the dry run below, by their names; `old` gives the names they had
/// before they carried the `--slurm-` prefix (hidden aliases now).
fn sbatch_options(d: &Dir, old: bool) -> Vec<String> {
    let opts = [
        ("dry-run", None),
        ("partition", Some("astro")),
        ("account", Some("proj1")),
        ("qos", Some("low")),
        ("time", Some("0:30:00")),
        ("mem", Some("4G")),
        ("cpus-per-task", Some("2")),
        ("gres", Some("gpu:1")),
        ("constraint", Some("avx2")),
        ("max-running", Some("2")),
        ("setup", Some("module load gcc")),
    ];
    let mut v = Vec::new();
    for (name, value) in opts {
        v.push(if old {
            format!("--{name}")
        } else {
            format!("--slurm-{name}")
        });
        v.extend(value.map(String::from));
    }
    v.push(
        if old {
            "--sbatch-extra"
        } else {
            "--slurm-extra"
        }
        .into(),
    );
    v.push(d.s("extra.sbatch"));
    v
}

#[test]
fn old_slurm_option_names_write_the_same_scripts() {
    let d = partitioned();
    std::fs::write(d.path("extra.sbatch"), "#SBATCH --mail-type=END\n").unwrap();
    let script = |res: &str, old: bool| {
        cai(
            &d,
            &slurm_args(&d, res, &[])
                .into_iter()
                .chain(sbatch_options(&d, old))
                .collect::<Vec<_>>(),
        );
        let text = std::fs::read_to_string(d.path(&format!("{res}/slurm/array.sbatch")))
            .unwrap()
            .replace(&d.s(res), "RES");
        // The options' lines (the worker line carries a per-submission probe token).
        text.lines()
            .filter(|l| l.starts_with("#SBATCH") || l.starts_with("module"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let new = script("new", false);
    assert!(new.contains("#SBATCH --partition=astro"), "{new}");
    assert_eq!(new, script("old", true));
}

#[test]
fn dry_run_writes_scripts_and_prints_the_commands() {
    let d = partitioned();
    std::fs::write(
        d.path("extra.sbatch"),
        "# mine\n#SBATCH --mail-type=END\n--comment=cai\n",
    )
    .unwrap();
    let mut args: Vec<String> = [
        "run",
        "--engine",
        "slurm",
        "--data",
        &d.s("parts"),
        "--results",
        &d.s("res"),
        "--model",
        &model(),
        "--precision",
        "int8",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(sbatch_options(&d, false));
    let out = d.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.contains("sbatch --parsable") && out.contains("--dependency=afterany:"),
        "{out}"
    );
    let script = std::fs::read_to_string(d.path("res/slurm/array.sbatch")).unwrap();
    for want in [
        "#SBATCH --array=0-4%2",
        "#SBATCH --partition=astro",
        "#SBATCH --account=proj1",
        "#SBATCH --qos=low",
        "#SBATCH --time=0:30:00",
        "#SBATCH --mem=4G",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --constraint=avx2",
        "#SBATCH --mail-type=END",
        "#SBATCH --comment=cai",
        "module load gcc",
        "worker --plan",
        " --precision int8\n",
    ] {
        assert!(script.contains(want), "{want} missing:\n{script}");
    }
    // The worker takes what the script passes: it gets as far as reading the plan.
    let w = d.cai(&[
        "worker",
        "--plan",
        &d.s("no-plan.json"),
        "--rank",
        "0",
        "--precision",
        "int8",
    ]);
    let err = String::from_utf8_lossy(&w.stderr);
    assert!(err.contains("cannot read the plan"), "{err}");
    assert!(d.path("res/slurm/summarize.sbatch").exists());
    assert!(d.path("res/plan.json").exists());
    assert!(!d.path("res/slurm/jobs.json").exists(), "nothing submitted");
}

#[test]
fn no_sbatch_is_a_clear_error() {
    let d = partitioned();
    let out = Command::new(env!("CARGO_BIN_EXE_cai"))
        .args(slurm_args(&d, "res", &[]))
        .env("PATH", d.path("no-bin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`sbatch` was not found") && err.contains("login node"),
        "{err}"
    );
}

/// What only Slurm has, after a whole run (its equality with the local engine is
/// conformance.rs's): the tasks' threads, the kept logs, and `cai status` reattaching.
#[test]
fn a_slurm_run_keeps_its_logs_and_status_reattaches() {
    let Some(_c) = cluster() else { return };
    let d = partitioned();
    let out = cai(&d, &slurm_args(&d, "res", &["--threads", "1"]));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("slurm        submit to summary"),
        "{stdout}"
    );
    let s = read_json(d.path("res/summary.json"));
    assert_eq!(s["galaxies"], 300);
    assert_eq!(s["ranks_done"], 5);
    let r0 = read_json(d.path("res/0.json"));
    assert_eq!(r0["engine"], "slurm");
    assert_eq!(r0["threads"], 1);
    assert_eq!(by_index(d.path("res/predictions.parquet")).len(), 300);
    // The summarize job ran on the cluster and its log is kept.
    let logs: Vec<String> = std::fs::read_dir(d.path("res/slurm/logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        logs.iter().any(|l| l.starts_with("cai-summarize-")),
        "{logs:?}"
    );
    assert_eq!(logs.iter().filter(|l| l.ends_with(".err")).count(), 5);
    // Reattaching to a finished run prints its summary.
    let st = d.ok(&["status", "--results", &d.s("res")]);
    assert!(st.contains("5 done, 0 failed"), "{st}");
}

/// Wait for a file, up to `secs`.
fn wait_for(path: &std::path::Path, secs: u64) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Start `cai run --engine slurm` with small batches (each rank takes long enough to be caught
/// running) and `extra` options; once task 1's worker predicts, signal it with `scancel
/// extra_scancel… <array>_1`. The run, still going.
fn start_and_hit_task_1(d: &Dir, extra: &[&str], scancel: &[&str]) -> std::process::Child {
    let mut args = slurm_args(d, "res", extra);
    let b = args.iter().position(|a| a == "16").unwrap();
    args[b] = "2".into();
    let child = Command::new(env!("CARGO_BIN_EXE_cai"))
        .args(&args)
        .current_dir(d.tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(&d.path("res/slurm/jobs.json"), 60),
        "never submitted"
    );
    let jobs = read_json(d.path("res/slurm/jobs.json"));
    let array = jobs["arrays"][0]["job_id"].as_str().unwrap().to_string();
    let log = d.path(&format!("res/slurm/logs/cai-{array}_1.err"));
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("thread(s)") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "task 1 never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = Command::new("scancel")
        .args(scancel)
        .arg(format!("{array}_1"))
        .status()
        .unwrap();
    assert!(st.success());
    child
}

#[test]
fn a_task_cancelled_mid_rank_is_retried() {
    let Some(_c) = cluster() else { return };
    let d = partitioned();
    let child = start_and_hit_task_1(&d, &["--retries", "1", "--threads", "1"], &[]);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("rank 1") && stderr.contains("resubmitted as job"),
        "{stderr}"
    );
    let jobs = read_json(d.path("res/slurm/jobs.json"));
    assert_eq!(jobs["arrays"].as_array().unwrap().len(), 2);
    assert_eq!(jobs["arrays"][1]["indices"], serde_json::json!([1]));
    assert_eq!(jobs["arrays"][1]["attempt"], 1);
    let s = read_json(d.path("res/summary.json"));
    assert_eq!(s["galaxies"], 300);
    assert_eq!(s["failed"].as_array().unwrap().len(), 0);
    assert!(!d.path("res/failed/1.json").exists());
    assert_eq!(by_index(d.path("res/predictions.parquet")).len(), 300);
}

/// A task SIGKILLed (batch shell and worker) while it works on a rank, with no retry: the
/// run ends with that rank failed by name and no result of it, `cai status` names it as
/// missing, and `--resume` runs only it; every galaxy is then in the results exactly once.
#[test]
fn a_task_killed_mid_rank_then_resume_gives_every_galaxy_once() {
    let Some(_c) = cluster() else { return };
    let d = partitioned();
    let child = start_and_hit_task_1(
        &d,
        &["--retries", "0", "--threads", "1"],
        &["--signal=KILL", "--full"],
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rank 1"), "{stderr}");
    assert!(!d.path("res/1.json").exists());
    assert!(!d.path("res/predictions/1.parquet").exists());
    let f = read_json(d.path("res/failed/1.json"));
    assert_eq!(f["rank"], 1);
    assert!(
        f["error"].as_str().unwrap().contains("without a result"),
        "{f}"
    );
    let st = d.cai(&["status", "--results", &d.s("res"), "--once"]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(text.contains("missing      ranks 1 ("), "{text}");

    resume_runs_only(&d, 1);
}

#[test]
fn a_corrupt_partition_is_named_and_resume_submits_only_it() {
    let Some(_c) = cluster() else { return };
    let d = partitioned();
    let victim = d.path("parts/00003.safetensors");
    let good = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &good[..good.len() / 3]).unwrap();
    let out = cai(&d, &slurm_args(&d, "res", &[]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("00003.safetensors"), "{stderr}");
    let s = read_json(d.path("res/summary.json"));
    let failed = s["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["rank"], 2);
    assert_eq!(failed[0]["engine"], "slurm");
    assert!(failed[0]["error"]
        .as_str()
        .unwrap()
        .contains("00003.safetensors"));
    assert_eq!(s["ranks_done"], 4);
    assert_eq!(s["galaxies"], 300 - 61);
    // The summarize job on the cluster listed the failed rank too.
    let sum_log = std::fs::read_dir(d.path("res/slurm/logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("cai-summarize-"))
        .unwrap();
    let text = std::fs::read_to_string(sum_log).unwrap();
    assert!(
        text.contains("failed rank  2") && text.contains("00003.safetensors"),
        "{text}"
    );

    std::fs::write(&victim, &good).unwrap();
    resume_runs_only(&d, 2);
}

/// `cai run --engine slurm --resume` on `res` submits only `rank`, leaves rank 0's report as
/// it was, and ends with all 300 galaxies, each once (by_index fails on one seen twice).
fn resume_runs_only(d: &Dir, rank: usize) {
    let before = std::fs::read(d.path("res/0.json")).unwrap();
    d.ok(&[
        "run",
        "--engine",
        "slurm",
        "--resume",
        "--results",
        &d.s("res"),
        "--poll",
        "0.2",
    ]);
    let jobs = read_json(d.path("res/slurm/jobs.json"));
    assert_eq!(
        jobs["ranks"],
        serde_json::json!([rank]),
        "only the missing rank"
    );
    assert_eq!(std::fs::read(d.path("res/0.json")).unwrap(), before);
    let s = read_json(d.path("res/summary.json"));
    assert_eq!(s["failed"].as_array().unwrap().len(), 0);
    assert_eq!(s["galaxies"], 300);
    assert_eq!(by_index(d.path("res/predictions.parquet")).len(), 300);
}

#[test]
fn the_clusters_refusal_is_shown() {
    let Some(_c) = cluster() else { return };
    let d = partitioned();
    let out = cai(
        &d,
        &slurm_args(&d, "res", &["--partition", "no-such-partition"]),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the cluster refused `sbatch") && err.contains("invalid partition"),
        "{err}"
    );
}

#[test]
fn an_unshared_results_location_is_detected() {
    let Some(_c) = cluster() else { return };
    let d = partitioned();
    // What a node with its own /tmp would see: no probe file.
    let setup = format!("rm -f {}", d.s("res/slurm/probe"));
    let out = cai(&d, &slurm_args(&d, "res", &["--setup", &setup]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not shared with the compute nodes") && err.contains("probe"),
        "{err}"
    );
}

/// More ranks than the array size: the run goes in several arrays whose task ids stay below
/// it (`CAI_SLURM_MAX_ARRAY_SIZE=2` lowers the cluster's `MaxArraySize`; a cluster with
/// `MaxArraySize=2` in slurm.conf does the same), and every galaxy is predicted once.
#[test]
fn more_ranks_than_the_max_array_size_go_in_several_arrays() {
    let Some(_c) = cluster() else { return };
    let d = partitioned();
    let args = slurm_args(&d, "res", &["--threads", "1"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cai"))
        .args(&a)
        .current_dir(d.tmp.path())
        .env("CAI_SLURM_MAX_ARRAY_SIZE", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs = read_json(d.path("res/slurm/jobs.json"));
    let arrays = jobs["arrays"].as_array().unwrap();
    let offsets: Vec<u64> = arrays
        .iter()
        .map(|a| a["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [0, 2, 4], "{jobs}");
    assert_eq!(jobs["max_array_size"], 2);
    let s = read_json(d.path("res/summary.json"));
    assert_eq!(s["ranks_done"], 5);
    assert_eq!(by_index(d.path("res/predictions.parquet")).len(), 300);
    for r in 0..5 {
        assert_eq!(read_json(d.path(&format!("res/{r}.json")))["rank"], r);
    }
}

/// Without a cluster: the dry run prints one `sbatch` per array, each with its offset.
#[test]
fn a_dry_run_of_more_ranks_than_the_array_size_prints_each_array() {
    let d = partitioned();
    let args = slurm_args(&d, "res", &["--dry-run"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cai"))
        .args(args.iter().map(String::as_str))
        .current_dir(d.tmp.path())
        .env("CAI_SLURM_MAX_ARRAY_SIZE", "2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "a0=$(sbatch --parsable --array=0-1 --export=ALL,CAI_RANK_OFFSET=0 ",
        "a1=$(sbatch --parsable --array=0-1 --export=ALL,CAI_RANK_OFFSET=2 ",
        "a2=$(sbatch --parsable --array=0 --export=ALL,CAI_RANK_OFFSET=4 ",
        "--dependency=afterany:${a0%%;*}:${a1%%;*}:${a2%%;*} ",
    ] {
        assert!(stdout.contains(want), "{want:?} not in {stdout}");
    }
}

/// A straggler on Slurm: rank 2's partition stalls on its first read (through the fault
/// proxy in front of moto) far longer than the run should take. Once more than half the
/// ranks are done, the follower submits a second task for rank 2; that copy wins, the
/// stalled task is cancelled, the summary and rank 2's report mark it speculated, and every
/// galaxy is in the results exactly once.
#[test]
fn a_straggling_task_gets_a_second_copy_that_wins() {
    use crate::faults::{first_read_stalls, STRAGGLER_STALL};
    let Some(_c) = cluster() else { return };
    let Some(s3) = crate::s3::S3Server::moto() else {
        return;
    };
    let d = Dir::new();
    s3.make_bucket("cai-data");
    let part = s3
        .command(env!("CARGO_BIN_EXE_cai"))
        .args([
            "partition",
            "--input",
            &fixtures().dataset.display().to_string(),
            "--size",
            crate::util::SIZE,
            "--out",
            "s3://cai-data/parts",
        ])
        .output()
        .unwrap();
    assert!(part.status.success(), "{part:?}");
    let stall = STRAGGLER_STALL;
    let proxy = first_read_stalls(&s3.endpoint);
    let mut args = slurm_args(
        &d,
        "res",
        &["--world-size", "5", "--speculate", "2", "--threads", "1"],
    );
    let at = args.iter().position(|a| a == "--data").unwrap();
    args[at + 1] = "s3://cai-data/parts".into();
    let t = Instant::now();
    let out = s3
        .command(env!("CARGO_BIN_EXE_cai"))
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .env("CAI_S3_TIMEOUT", "600")
        .args(&args)
        .current_dir(d.tmp.path())
        .output()
        .unwrap();
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("started a second copy"), "{stderr}");
    assert!(took < stall, "the run took {took:?}, as long as the stall");
    let s = read_json(d.path("res/summary.json"));
    assert_eq!(s["speculated_ranks"], serde_json::json!([2]), "{s}");
    assert_eq!(s["ranks_done"], 5);
    assert_eq!(s["galaxies"], 300);
    assert_eq!(s["failed"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(read_json(d.path("res/2.json"))["speculated"], true);
    assert!(read_json(d.path("res/0.json")).get("speculated").is_none());
    assert!(!d.path("res/failed/2.json").exists());
    let jobs = read_json(d.path("res/slurm/jobs.json"));
    let copies: Vec<&serde_json::Value> = jobs["arrays"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["speculative"] == true)
        .collect();
    assert_eq!(copies.len(), 1, "{jobs}");
    assert_eq!(copies[0]["indices"], serde_json::json!([2]));
    // Every galaxy once (by_index fails on a second row for one galaxy).
    assert_eq!(by_index(d.path("res/predictions.parquet")).len(), 300);
    eprintln!("slurm straggler: rank 2's first read stalled {stall:?}; the run took {took:?}");
}
