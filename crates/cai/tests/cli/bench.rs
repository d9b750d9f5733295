//! `cai bench`: the report's shape, not its figures (benchmarks report numbers; tests check
//! behaviour).

use crate::util::{fixtures, Dir};

/// One tiny case per precision: `-q` still prints the results table, and `--json` holds
/// every case, the ViT-blocks-alone rate of each precision, the |Δz| of the reduced ones and
/// how far the FMA probe's rate moved during the run.
#[test]
fn bench_reports_every_case_quiet_or_json() {
    let d = Dir::new();
    let model = fixtures().model.display().to_string();
    let args = [
        "--model",
        &model,
        "--threads",
        "1",
        "--batch",
        "1,2",
        "--seconds",
        "0.01",
        "--peak-seconds",
        "0.01",
        "--precision",
        "f32,int16",
        "--judge-galaxies",
        "2",
    ];
    let quiet = d.ok(&[&["-q", "bench"][..], &args[..]].concat());
    assert!(quiet.contains("ViT blocks alone, int16"), "{quiet}");
    assert!(quiet.contains("FMA probe at the end"), "{quiet}");
    let rows: Vec<&str> = quiet
        .lines()
        .filter(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() > 2 && ["f32", "int16"].contains(&w[0]) && w[1] == "1"
        })
        .collect();
    assert_eq!(rows.len(), 4, "one row per precision and batch:\n{quiet}");

    let json = d.ok(&[&["-q", "bench"][..], &args[..], &["--json"][..]].concat());
    let v: serde_json::Value = serde_json::from_str(&json).expect("bench --json is JSON");
    assert!(v["fma_peak_after_gflops_per_core"]
        .as_f64()
        .is_some_and(|g| g > 0.0));
    let drift = v["probe_drift"].as_f64().expect("probe_drift");
    assert!((0.0..1.0).contains(&drift), "probe_drift {drift}");
    let cases = v["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 4);
    for c in cases {
        assert!(c["galaxies_per_s"].as_f64().is_some_and(|r| r > 0.0), "{c}");
    }
    let blocks = v["vit_blocks"].as_array().expect("vit_blocks");
    assert_eq!(blocks.len(), 2);
    assert!(blocks
        .iter()
        .all(|b| b["gflops_per_cpu_s"].as_f64().is_some_and(|g| g > 0.0)));
    let int16 = &v["precisions"][1];
    assert_eq!(int16["precision"], "int16");
    let dz = int16["dz_bench"]["max"].as_f64().expect("int16 |Δz|");
    assert!(dz < 1e-2, "int16 max |Δz| {dz}");
    // Also judged on the full-size formula model (original structure), always available.
    let dzf = int16["dz_formula"]["max"]
        .as_f64()
        .expect("int16 |Δz| on the formula model");
    assert!(
        dzf > 0.0 && dzf < 1e-2,
        "int16 max |Δz| on the formula model {dzf}"
    );
    assert_eq!(int16["dz_formula"]["galaxies"], 2);
    assert!(v["auto"].is_null());
}
