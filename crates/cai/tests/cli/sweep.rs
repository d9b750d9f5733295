//! `cai sweep`: every data size × partition size × batch size × repetition as one run per
//! folder; `cai stats` averages the repetitions and `cai report` draws the sweep figures;
//! `--resume` skips finished runs.

use std::time::Instant;

use crate::util::{fixtures, read_json, Dir};

/// 250KB partitions hold 12 galaxies, 500KB ones 24; data sizes of 512KB and 1MB take the
/// first 2 and 4 (or 1 and 2) of them: 24 and 48 galaxies of the 300-galaxy fixture.
const PARTITION_SIZES: &str = "250KB,500KB";
const BATCH_SIZES: &str = "8,16";
const DATA_SIZES: &str = "512KB,1MB";

fn sweep_args<'a>(data: &'a str, model: &'a str, res: &'a str) -> Vec<&'a str> {
    vec![
        "sweep",
        "--data",
        data,
        "--results",
        res,
        "--model",
        model,
        "--partition-sizes",
        PARTITION_SIZES,
        "--batch-sizes",
        BATCH_SIZES,
        "--data-sizes",
        DATA_SIZES,
        "--repeat",
        "2",
        "--workers",
        "2",
        "--threads",
        "1",
    ]
}

#[test]
fn sweep_writes_a_run_per_folder_that_stats_and_report_read() {
    let d = Dir::new();
    let data = fixtures().dataset.display().to_string();
    let model = fixtures().model.display().to_string();
    let res = d.s("sweep");
    let t = Instant::now();
    let out = d.ok(&sweep_args(&data, &model, &res));
    eprintln!("cai sweep (16 runs): {:.1} s", t.elapsed().as_secs_f64());

    // One folder per run, each a whole run in the layout `cai run` writes.
    let mut folders = Vec::new();
    for ds in ["512KB", "1MB"] {
        for ps in ["250KB", "500KB"] {
            for b in [8, 16] {
                for r in [1, 2] {
                    folders.push(format!("d{ds}-p{ps}-b{b}-r{r}"));
                }
            }
        }
    }
    for f in &folders {
        let summary = read_json(d.path(&format!("sweep/{f}/summary.json")));
        let want = match (f.starts_with("d512KB"), f.contains("-p250KB-")) {
            (true, true) => (24, 2),
            (true, false) => (24, 1),
            (false, true) => (48, 4),
            (false, false) => (48, 2),
        };
        assert_eq!(summary["galaxies"], want.0, "{f}");
        assert_eq!(summary["ranks_done"], want.1, "{f}");
        let plan = read_json(d.path(&format!("sweep/{f}/plan.json")));
        let b: u64 = f
            .split("-b")
            .nth(1)
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(plan["batch_size"], b, "{f}");
        assert!(d.path(&format!("sweep/{f}/0.json")).exists(), "{f}");
        assert!(
            d.path(&format!("sweep/{f}/predictions.parquet")).exists(),
            "{f}"
        );
    }
    // The partitions cut at each size, and the sweep's record.
    for (ps, n) in [("250KB", 25), ("500KB", 13)] {
        let m = read_json(d.path(&format!("sweep/partitions/{ps}/manifest.json")));
        assert_eq!(m["partitions"].as_array().unwrap().len(), n, "{ps}");
    }
    let record = read_json(d.path("sweep/sweep.json"));
    assert_eq!(record["runs"].as_array().unwrap().len(), 16);
    // The final table: a row per run.
    for f in &folders {
        assert!(
            out.lines()
                .any(|l| l.starts_with(f.as_str()) && l.contains(" ran ")),
            "{f}\n{out}"
        );
    }

    // stats: 16 runs, 8 configurations of 2 repetitions each.
    let stats = d.ok(&["stats", &res, "--csv", &d.s("stats.csv")]);
    let means = std::fs::read_to_string(d.path("stats.means.csv")).unwrap();
    let rows: Vec<&str> = means.lines().skip(1).collect();
    assert_eq!(rows.len(), 8, "{means}");
    let header: Vec<&str> = means.lines().next().unwrap().split(',').collect();
    let runs_col = header
        .iter()
        .position(|h| *h == "runs")
        .expect("runs column");
    for r in &rows {
        assert_eq!(r.split(',').nth(runs_col), Some("2"), "{r}");
    }
    assert!(stats.contains("means over repeated runs"), "{stats}");
    let per_run = std::fs::read_to_string(d.path("stats.csv")).unwrap();
    assert_eq!(per_run.lines().count(), 17, "{per_run}");

    // report: the three sweep figures.
    let t = Instant::now();
    d.ok(&["report", &res, "--out", &d.s("report.html")]);
    eprintln!("cai report (16 runs): {:.1} s", t.elapsed().as_secs_f64());
    let html = std::fs::read_to_string(d.path("report.html")).unwrap();
    for id in [
        "sweep-data-size",
        "sweep-partition-size",
        "sweep-batch-size",
    ] {
        assert!(html.contains(&format!("id=\"fig-{id}\"")), "{id} missing");
    }

    // A fresh sweep refuses to overwrite; --resume skips finished runs and reruns the rest.
    let again = d.cai(&sweep_args(&data, &model, &res));
    assert_eq!(again.status.code(), Some(2));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already holds a sweep") && err.contains("--resume"),
        "{err}"
    );
    let redo = "d512KB-p500KB-b16-r2";
    std::fs::remove_file(d.path(&format!("sweep/{redo}/summary.json"))).unwrap();
    let mut args = sweep_args(&data, &model, &res);
    args.push("--resume");
    let out = d.ok(&args);
    let ran: Vec<&str> = out.lines().filter(|l| l.contains(" ran ")).collect();
    assert_eq!(ran.len(), 1, "{out}");
    assert!(ran[0].starts_with(redo), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains(" skipped ")).count(), 15);
    assert!(d.path(&format!("sweep/{redo}/summary.json")).exists());
}

#[test]
fn sweep_errors_name_what_to_do() {
    let d = Dir::new();
    let model = fixtures().model.display().to_string();
    std::fs::create_dir_all(d.path("empty")).unwrap();
    let (empty, missing, res) = (d.s("empty"), d.s("missing"), d.s("res"));
    let cases: [(&[&str], &str); 4] = [
        (
            &["--data", &empty, "--partition-sizes", "1MB"],
            "no dataset file",
        ),
        (
            &["--data", &missing, "--partition-sizes", "1MB"],
            "no such file",
        ),
        (
            &["--data", &empty, "--partition-sizes", "1MB,1024KB"],
            "same size",
        ),
        (
            &["--data", &empty, "--partition-sizes", "lots"],
            "--partition-sizes",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec![
            "sweep",
            "--results",
            &res,
            "--model",
            &model,
            "--batch-sizes",
            "8",
        ];
        args.extend_from_slice(extra);
        let out = d.cai(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// The same sweep on Slurm (gated like the Slurm tests: `CAI_TEST_SLURM=1`): every run is
/// a job array followed to its summary, and the stats name the engine.
#[test]
fn sweep_on_slurm() {
    let Some(_cluster) = crate::slurm::cluster() else {
        return;
    };
    let d = Dir::new();
    let data = fixtures().dataset.display().to_string();
    let model = fixtures().model.display().to_string();
    let res = d.s("sweep");
    let out = d.ok(&[
        "sweep",
        "--engine",
        "slurm",
        "--poll",
        "0.2",
        "--data",
        &data,
        "--results",
        &res,
        "--model",
        &model,
        "--partition-sizes",
        "500KB",
        "--batch-sizes",
        "8,16",
        "--data-sizes",
        "512KB",
        "--repeat",
        "1",
        "--threads",
        "1",
    ]);
    for f in ["d512KB-p500KB-b8-r1", "d512KB-p500KB-b16-r1"] {
        let summary = read_json(d.path(&format!("sweep/{f}/summary.json")));
        assert_eq!(summary["galaxies"], 24, "{f}");
        assert_eq!(summary["engines"], serde_json::json!(["slurm"]), "{f}");
        assert!(
            out.lines().any(|l| l.starts_with(f) && l.contains(" ran ")),
            "{f}\n{out}"
        );
    }
    let stats = d.ok(&["stats", &res]);
    assert!(stats.contains("slurm"), "{stats}");
}
