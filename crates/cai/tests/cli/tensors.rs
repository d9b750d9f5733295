//! Any tensors per galaxy (issue 23 part 3): `cai partition` cuts NumPy `.npz` and `.npy`
//! files and a `.pt` renamed with `--names` into native partitions whose manifest records
//! the tensors, and `cai run` binds the 5-band CNN fixture's inputs to them with `--bind`:
//! its outputs equal ONNX Runtime's on the same galaxies fed as the original's `.pt`.
//! AstroMAE's tensors from an `.npz` are cut byte for byte as from the `.pt`.

use cai_data::npy::write_npz;
use cai_data::{read_tensors, TensorSet};

use crate::onnx::{assert_cnn_results, onnx_fixture};
use crate::util::{read_json, Dir};

/// The CNN fixture's 12 galaxies (images, magnitudes, redshift) as the `.pt` holds them.
fn cnn_galaxies() -> TensorSet {
    let path = onnx_fixture("cnn5_partition.pt");
    read_tensors(
        &path.display().to_string(),
        &std::fs::read(&path).unwrap(),
        None,
    )
    .unwrap()
}

/// `set` with its tensors renamed (`(old, new)`), the others dropped.
fn renamed(set: &TensorSet, names: &[(&str, &str)]) -> TensorSet {
    let tensors = names
        .iter()
        .map(|(old, new)| {
            let mut t = set.get(old).unwrap().clone();
            t.name = new.to_string();
            t
        })
        .collect();
    TensorSet { n: set.n, tensors }
}

/// `cai run` of the CNN fixture over the folder `data` into `results` (both under `d`),
/// with `extra` flags.
fn cai_run_cnn(d: &Dir, data: &str, results: &str, extra: &[&str]) -> std::process::Output {
    let model = onnx_fixture("cnn5.onnx").display().to_string();
    let (data, results) = (d.s(data), d.s(results));
    let mut args = vec![
        "run",
        "--data",
        &data,
        "--results",
        &results,
        "--model",
        &model,
    ];
    args.extend_from_slice(extra);
    d.cai(&args)
}

/// `cai run` of the CNN over `data` in batches of 5, with `binds`; checks its results
/// against ONNX Runtime's.
fn run_cnn(d: &Dir, data: &str, results: &str, binds: &[&str]) {
    let mut extra = vec!["--batch-size", "5"];
    for b in binds {
        extra.extend(["--bind", b]);
    }
    let out = cai_run_cnn(d, data, results, &extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_cnn_results(
        std::fs::read(d.path(&format!("{results}/predictions.parquet"))).unwrap(),
        &read_json(d.path(&format!("{results}/summary.json"))),
    );
}

fn manifest_tensors(d: &Dir, dir: &str) -> Vec<String> {
    let m = read_json(d.path(&format!("{dir}/manifest.json")));
    m["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{} {} {}",
                t["name"].as_str().unwrap(),
                t["dtype"].as_str().unwrap(),
                t["shape"]
            )
        })
        .collect()
}

#[test]
fn an_npz_with_other_names_runs_the_cnn_through_bind() {
    let d = Dir::new();
    let set = renamed(
        &cnn_galaxies(),
        &[("images", "pixels"), ("magnitudes", "mags")],
    );
    std::fs::write(d.path("cnn.npz"), write_npz(&set).unwrap()).unwrap();
    // 100KB holds 4 galaxies of 5x32x32 + 5 f32: 3 partitions.
    let out = d.cai(&[
        "partition",
        "--input",
        &d.s("cnn.npz"),
        "--out",
        &d.s("parts"),
        "--size",
        "100KB",
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("tensors: pixels F32[N, 5, 32, 32], mags F32[N, 5]"),
        "{said}"
    );
    assert_eq!(
        manifest_tensors(&d, "parts"),
        ["pixels F32 [5,32,32]", "mags F32 [5]"]
    );
    let m = read_json(d.path("parts/manifest.json"));
    assert_eq!(m["partitions"].as_array().unwrap().len(), 3);
    assert!(m.get("image_shape").is_none());
    run_cnn(
        &d,
        &d.s("parts"),
        "res",
        &["images=pixels", "magnitudes=mags"],
    );
    // Without --bind: refused before any rank, both sides listed.
    let out = cai_run_cnn(&d, "parts", "res2", &[]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("model inputs")
            && e.contains("data tensors")
            && e.contains("images f32[N, 5, 32, 32]")
            && e.contains("pixels f32[N, 5, 32, 32]"),
        "{e}"
    );
    assert!(!d.path("res2/0.json").exists());
    // `cai predict` reads the .npz directly: the same values as `cai run` on the partitions.
    let model = onnx_fixture("cnn5.onnx").display().to_string();
    d.ok(&[
        "predict",
        "--input",
        &d.s("cnn.npz"),
        "--model",
        &model,
        "--bind",
        "images=pixels",
        "--bind",
        "magnitudes=mags",
        "--out",
        &d.s("p.csv"),
    ]);
    let csv = std::fs::read_to_string(d.path("p.csv")).unwrap();
    let run = cai_core::predictions::Predictions::from_parquet(
        "p",
        std::fs::read(d.path("res/predictions.parquet"))
            .unwrap()
            .into(),
    )
    .unwrap();
    assert!(
        csv.starts_with("index,probs_0,probs_1,probs_2,confidence\n"),
        "{csv}"
    );
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 12);
    for (g, row) in rows.iter().enumerate() {
        let cells: Vec<f32> = row.split(',').skip(1).map(|v| v.parse().unwrap()).collect();
        let mut want: Vec<f32> = run.outputs[0].values[g * 3..g * 3 + 3].to_vec();
        want.push(run.outputs[1].values[g]);
        assert_eq!(cells, want, "galaxy {g}: {row}");
    }
}

/// The CNN's 12 galaxies with their images named `images`, and a `kind` tensor of class
/// labels (the fixture's), cut by `cai partition` into `d`'s folder `parts`; returns the
/// confusion matrix expected from ONNX Runtime's probabilities and those labels.
fn labelled_cnn_parts(d: &Dir, images: &str) -> [[u64; 3]; 3] {
    let doc = read_json(onnx_fixture("cnn5.json"));
    let labels: Vec<i64> = doc["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let mut set = renamed(
        &cnn_galaxies(),
        &[("images", images), ("magnitudes", "magnitudes")],
    );
    set.tensors.push(cai_data::NamedTensor {
        name: "kind".into(),
        dtype: cai_data::StoredDtype::I64,
        shape: vec![],
        values: cai_data::TensorValues::I64(labels.clone()),
    });
    std::fs::write(d.path("c.npz"), write_npz(&set).unwrap()).unwrap();
    d.ok(&[
        "partition",
        "--input",
        &d.s("c.npz"),
        "--out",
        &d.s("parts"),
    ]);
    let probs = doc["probs_onnxruntime"].as_array().unwrap();
    let mut confusion = [[0u64; 3]; 3];
    for (row, &l) in probs.iter().zip(&labels) {
        let row: Vec<f64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let best = (0..3).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        confusion[l as usize][best] += 1;
    }
    confusion
}

/// `summary.json`'s class metrics are those of `confusion` over the 12 galaxies.
fn assert_class_metrics(s: &serde_json::Value, confusion: &[[u64; 3]; 3]) {
    let m = &s["class_metrics"];
    assert_eq!(m["output"], "probs", "{s}");
    assert_eq!(m["n"], 12);
    assert_eq!(m["confusion"], serde_json::json!(confusion));
    let correct: u64 = (0..3).map(|c| confusion[c][c]).sum();
    assert_eq!(m["accuracy"].as_f64().unwrap(), correct as f64 / 12.0);
    assert_eq!(m["classes"].as_array().unwrap().len(), 3);
    assert!(m["macro_roc_auc"].as_f64().unwrap() > 0.5);
}

#[test]
fn class_labels_give_accuracy_confusion_and_roc_auc_in_the_summary() {
    let d = Dir::new();
    let confusion = labelled_cnn_parts(&d, "images");
    let out = cai_run_cnn(&d, "parts", "res", &["--label", "kind"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = read_json(d.path("res/summary.json"));
    assert_class_metrics(&s, &confusion);
    // The report shows a classifier's accuracy: its table and figures, no redshift plots.
    d.ok(&["report", &d.s("res"), "--out", &d.s("report.html")]);
    let html = std::fs::read_to_string(d.path("report.html")).unwrap();
    for want in [
        "judged as class scores",
        "id=\"fig-run1-confusion\"",
        "id=\"fig-run1-roc\"",
        "class 0 (AUC ",
    ] {
        assert!(html.contains(want), "the report lacks {want}");
    }
    assert!(!html.contains("No accuracy") && !html.contains("fig-run1-pred-vs-true"));
    // A label tensor the data lacks: the partition's tensors named.
    let out = cai_run_cnn(&d, "parts", "r2", &["--label", "nope"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && e.contains("--label nope: no such tensor")
            && e.contains("kind I64[N]"),
        "{e}"
    );
}

#[test]
fn a_pt_renamed_with_names_runs_the_cnn_and_an_npy_is_one_tensor() {
    let d = Dir::new();
    let pt = onnx_fixture("cnn5_partition.pt").display().to_string();
    let n = cnn_galaxies().tensors.len();
    let names = ["px", "mg", "zz"][..n].join(",");
    d.ok(&[
        "partition",
        "--input",
        &pt,
        "--names",
        &names,
        "--out",
        &d.s("parts"),
    ]);
    assert_eq!(
        manifest_tensors(&d, "parts")[..2],
        ["px F32 [5,32,32]", "mg F32 [5]"]
    );
    run_cnn(&d, "parts", "res", &["images=px", "magnitudes=mg"]);
    // Too few names: the file and both counts named.
    let out = d.cai(&[
        "partition",
        "--input",
        &pt,
        "--names",
        "a",
        "--out",
        &d.s("x"),
    ]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("cnn5_partition.pt") && e.contains("1 names given"),
        "{e}"
    );
    // One .npy: one tensor, named after the file; the CNN's other input is missing.
    let set = renamed(&cnn_galaxies(), &[("images", "cube")]);
    std::fs::write(
        d.path("cube.npy"),
        cai_data::npy::write_npy(&set.tensors[0], set.n),
    )
    .unwrap();
    d.ok(&[
        "partition",
        "--input",
        &d.s("cube.npy"),
        "--out",
        &d.s("cube"),
    ]);
    assert_eq!(manifest_tensors(&d, "cube"), ["cube F32 [5,32,32]"]);
    let out = cai_run_cnn(&d, "cube", "r", &["--bind", "images=cube"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && e.contains("input `magnitudes` has no tensor")
            && e.contains("cube f32[N, 5, 32, 32]"),
        "{e}"
    );
}

#[test]
fn astromae_tensors_from_an_npz_cut_byte_for_byte_as_from_the_pt() {
    let d = Dir::new();
    let pt = onnx_fixture("cnn5_partition.pt").display().to_string();
    std::fs::write(d.path("g.npz"), write_npz(&cnn_galaxies()).unwrap()).unwrap();
    for (input, out) in [(pt.as_str(), "a"), (&d.s("g.npz"), "b")] {
        d.ok(&[
            "partition",
            "--input",
            input,
            "--out",
            &d.s(out),
            "--size",
            "100KB",
        ]);
    }
    let (a, b) = (
        read_json(d.path("a/manifest.json")),
        read_json(d.path("b/manifest.json")),
    );
    assert_eq!(a, b);
    assert_eq!(a["image_shape"], serde_json::json!([5, 32, 32]));
    for e in a["partitions"].as_array().unwrap() {
        let key = e["key"].as_str().unwrap();
        assert_eq!(
            std::fs::read(d.path(&format!("a/{key}"))).unwrap(),
            std::fs::read(d.path(&format!("b/{key}"))).unwrap()
        );
    }
    // And the CNN runs on them without --bind.
    run_cnn(&d, "b", "res", &[]);
}

/// `cai sweep` of the CNN re-cuts any model's tensors: from the `.npz` file and again from
/// partitions of it, at two partition sizes; every run holds the 12 galaxies once, with
/// ONNX Runtime's outputs and the labels judged.
#[test]
fn a_sweep_recuts_other_tensors_from_a_file_and_from_partitions() {
    let d = Dir::new();
    let confusion = labelled_cnn_parts(&d, "images");
    std::fs::create_dir_all(d.path("file")).unwrap();
    std::fs::rename(d.path("c.npz"), d.path("file/c.npz")).unwrap();
    let model = onnx_fixture("cnn5.onnx").display().to_string();
    for (data, res) in [("file", "sw-file"), ("parts", "sw-parts")] {
        let (data, res) = (d.s(data), d.s(res));
        d.ok(&[
            "sweep",
            "--data",
            &data,
            "--results",
            &res,
            "--model",
            &model,
            "--partition-sizes",
            "50KB,120KB",
            "--batch-sizes",
            "5",
            "--label",
            "kind",
            "--workers",
            "2",
        ]);
        for (size, parts) in [("50KB", 6), ("120KB", 3)] {
            let run = format!("{res}/p{size}-b5-r1");
            let m = read_json(std::path::PathBuf::from(format!(
                "{res}/partitions/{size}/manifest.json"
            )));
            assert_eq!(m["partitions"].as_array().unwrap().len(), parts, "{m}");
            assert_cnn_results(
                std::fs::read(format!("{run}/predictions.parquet")).unwrap(),
                &read_json(std::path::PathBuf::from(format!("{run}/summary.json"))),
            );
            assert_class_metrics(
                &read_json(std::path::PathBuf::from(format!("{run}/summary.json"))),
                &confusion,
            );
        }
    }
}

/// `--bind` and `--label` travel to the Lambda handlers as the payload's own `bind` and
/// `label` keys: the CNN, whose `images` input is the data's `cube`, runs in the handlers
/// (Step Functions' order, moto's S3) and its summary judges the `kind` labels.
#[cfg(feature = "aws")]
#[test]
fn bindings_and_labels_travel_in_the_lambda_payload() {
    use crate::lambda::{tools, DATA_BUCKET, RESULTS_BUCKET};
    let Some(s3) = tools() else { return };
    let d = Dir::new();
    let confusion = labelled_cnn_parts(&d, "cube");
    s3.make_bucket(DATA_BUCKET);
    s3.make_bucket(RESULTS_BUCKET);
    for f in std::fs::read_dir(d.path("parts")).unwrap() {
        let f = f.unwrap();
        let key = format!("labelled/{}", f.file_name().to_string_lossy());
        s3.upload(&f.path(), DATA_BUCKET, &key);
    }
    let extra = serde_json::json!({"bind": {"images": "cube"}, "label": "kind"});
    let (summary, plan, predictions) =
        crate::onnx::cnn_in_lambda_handlers(&s3, &d, "labelled", extra);
    assert_cnn_results(predictions, &summary);
    assert_class_metrics(&summary, &confusion);
    assert_eq!(plan["label"], "kind");
    assert_eq!(plan["binds"], serde_json::json!([["images", "cube"]]));
}
