//! Killed at any moment: a local `cai run` SIGKILLed at seeded random moments, each time
//! followed by `cai status` (which must name what is missing) and `cai run --resume`, gives
//! every galaxy exactly once, bit for bit as an uninterrupted run, and never leaves a torn
//! file (every `*.json` parses, every `*.parquet` reads). The first trial kills the run
//! before it wrote `plan.json`, so `--resume` has nothing to resume and plans afresh. The
//! summarize step killed mid-write leaves its outputs whole or absent (writes go to a
//! temporary file renamed into place). The Lambda handler killed mid-rank is lambda.rs's
//! `a_handler_killed_mid_rank_then_reinvoked_gives_the_same_outputs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::s3::by_galaxy;
use crate::util::{fixtures, Dir};

/// Seeded trials of kill + resume.
const TRIALS: u64 = 20;
/// Partitions small enough for several ranks per worker: 0.4 MB holds 20 galaxies.
const SMALL: &str = "0.4MB";
/// Partitions used (of the 15 the 300-galaxy fixture makes): 160 galaxies, 8 ranks.
const FILES: &str = "8";

/// splitmix64: a seeded stream of numbers for the kill moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration in `[0, max)`.
    fn below(&mut self, max: Duration) -> Duration {
        let us = max.as_micros().max(1) as u64;
        Duration::from_micros(self.next() % us)
    }
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `cai run` over the small partitions into `results`, as a command to start.
fn run_command(d: &Dir, results: &str, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cai"));
    c.args(["run", "--data", &d.s("parts"), "--results", results])
        .args(["--model", fixtures().model.to_str().unwrap()])
        .args(["--file-limit", FILES, "--batch-size", "8"])
        .args(["--workers", "2", "--threads", "1", "--quiet"])
        .current_dir(d.tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if resume {
        c.arg("--resume");
    }
    c
}

fn run_ok(d: &Dir, results: &str, resume: bool) {
    let out = run_command(d, results, resume).output().expect("run cai");
    assert!(out.status.success(), "cai run failed\n{}", text(&out));
}

/// Every file under `dir` (recursively), paths relative to it.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// object_store's staging file of a put in progress (`<name>#<digits>`): never listed, and
/// what a kill mid-write leaves instead of a torn file.
fn is_staging(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Assert that no visible file under `dir` is torn; returns how many staging files a
/// killed write left.
fn assert_whole(dir: &Path, context: &str) -> usize {
    let mut staging = 0;
    for f in files(dir) {
        if is_staging(&f) {
            staging += 1;
            continue;
        }
        let bytes = std::fs::read(dir.join(&f)).unwrap();
        if f.ends_with(".json") {
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                panic!("{context}: {f} is torn: {e}");
            }
        } else if f.ends_with(".parquet") {
            if let Err(e) = cai_core::predictions::Predictions::from_parquet(&f, bytes.into()) {
                panic!("{context}: {f} is torn: {e}");
            }
        }
    }
    staging
}

/// Ranks with a `<rank>.json` under `dir`.
fn done_ranks(dir: &Path) -> BTreeSet<usize> {
    files(dir)
        .iter()
        .filter_map(|f| f.strip_suffix(".json")?.parse().ok())
        .collect()
}

/// The fixture cut into 0.4 MB partitions under `parts/`, and the predictions of an
/// uninterrupted run with how long it took.
fn reference(d: &Dir) -> (BTreeMap<i64, u32>, Duration) {
    d.ok(&[
        "partition",
        "--input",
        fixtures().dataset.to_str().unwrap(),
        "--size",
        SMALL,
        "--out",
        &d.s("parts"),
    ]);
    let t = Instant::now();
    run_ok(d, &d.s("reference"), false);
    let took = t.elapsed();
    let preds = by_galaxy(std::fs::read(d.path("reference/predictions.parquet")).unwrap());
    assert_eq!(preds.len(), 160);
    (preds, took)
}

#[test]
fn a_run_killed_at_random_moments_resumes_to_every_galaxy_once() {
    let d = Dir::new();
    let (expected, full) = reference(&d);
    let world = 8;
    let mut rng = Rng(24);
    let (mut before_plan, mut partial, mut staging_left) = (0, 0, 0);
    for trial in 0..TRIALS {
        let results = d.s(&format!("trial-{trial}"));
        let dir = d.path(&format!("trial-{trial}"));
        // Trial 0 is killed as it starts, before plan.json exists; the others anywhere in
        // the run's length (a little past it too: killed after the end is a case too).
        let delay = if trial == 0 {
            Duration::ZERO
        } else {
            rng.below(full + full / 10)
        };
        let mut child = run_command(&d, &results, false)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cai run");
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let context = format!("trial {trial} (killed after {delay:?})");
        staging_left += assert_whole(&dir, &context);

        let has_plan = dir.join("plan.json").exists();
        let status = Command::new(env!("CARGO_BIN_EXE_cai"))
            .args(["status", "--results", &results])
            .output()
            .expect("cai status");
        if has_plan {
            let done = done_ranks(&dir);
            let missing: Vec<usize> = (0..world).filter(|r| !done.contains(r)).collect();
            let stdout = String::from_utf8_lossy(&status.stdout);
            if missing.is_empty() {
                assert!(!stdout.contains("missing"), "{context}: {stdout}");
                assert_eq!(
                    status.status.code(),
                    Some(0),
                    "{context}\n{}",
                    text(&status)
                );
            } else {
                partial += 1;
                let line = format!(
                    "missing      ranks {} (",
                    cai_core::results::ranges(&missing)
                );
                assert!(
                    stdout.contains(&line),
                    "{context}: no {line:?} in\n{stdout}"
                );
                assert_eq!(
                    status.status.code(),
                    Some(1),
                    "{context}\n{}",
                    text(&status)
                );
            }
        } else {
            before_plan += 1;
            assert_eq!(
                status.status.code(),
                Some(2),
                "{context}\n{}",
                text(&status)
            );
            assert!(
                String::from_utf8_lossy(&status.stderr).contains("no plan.json"),
                "{context}\n{}",
                text(&status)
            );
        }
        if trial == 0 {
            assert!(!has_plan, "{context}: plan.json was already written");
        }

        run_ok(&d, &results, true);
        assert_whole(&dir, &format!("{context}, resumed"));
        let got = by_galaxy(std::fs::read(dir.join("predictions.parquet")).unwrap());
        assert_eq!(got, expected, "{context}: resumed predictions differ");
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["ranks_done"], world, "{context}");
        assert_eq!(summary["galaxies"], 160, "{context}");
        // Keep the disk small: the trial is checked.
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!(
        "kill trials: {TRIALS} kills within {full:?} (the uninterrupted run's time), \
         {before_plan} before plan.json, {partial} with ranks missing, \
         {staging_left} staging files left by killed writes; every resume complete"
    );
    assert!(before_plan >= 1);
    assert!(partial >= 1, "no kill landed mid-run");
}

#[test]
fn summarize_killed_mid_write_leaves_whole_files_and_resume_finishes() {
    let d = Dir::new();
    let (expected, _) = reference(&d);
    let results = d.s("reference");
    let dir = d.path("reference");
    let outputs = ["summary.json", "predictions.parquet", "combined_data.json"];
    let clear = || {
        for f in outputs {
            let _ = std::fs::remove_file(dir.join(f));
        }
    };
    clear();
    let summarize = || {
        Command::new(env!("CARGO_BIN_EXE_cai"))
            .args(["summarize", "--results", &results])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cai summarize")
    };
    let t = Instant::now();
    let status = summarize().wait().unwrap();
    assert!(status.success());
    let took = t.elapsed();
    let mut rng = Rng(7);
    let mut written = BTreeMap::<&str, usize>::new();
    for kill in 0..12 {
        clear();
        let mut child = summarize();
        let delay = rng.below(took);
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        assert_whole(&dir, &format!("summarize kill {kill} after {delay:?}"));
        for f in outputs {
            if dir.join(f).exists() {
                *written.entry(f).or_default() += 1;
            }
        }
    }
    eprintln!("summarize ({took:?} uninterrupted) killed 12 times: outputs written {written:?}");
    // Every rank is done: resume runs none and summarizes.
    run_ok(&d, &results, true);
    assert_whole(&dir, "after the resume");
    let got = by_galaxy(std::fs::read(dir.join("predictions.parquet")).unwrap());
    assert_eq!(got, expected);
}
