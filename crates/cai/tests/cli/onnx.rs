//! Any model through ONNX (issue 23): a 5-band CNN classifier that is not AstroMAE, made and
//! exported by scripts/onnx/make_fixtures.py, runs through `cai run` (the local and Slurm
//! engines), the Lambda handlers (on moto's S3, in Step Functions' order) and `cai
//! predict`, and its outputs equal ONNX Runtime's; inputs that do not bind and graphs tract
//! cannot run are refused before any rank starts; the original's code-folder payload finds
//! the model in its folder.

use std::path::PathBuf;

use crate::util::{manifest_dir, read_json, Dir};

/// The committed ONNX fixtures (crates/cai-model/tests/fixtures/onnx).
pub(crate) fn onnx_fixture(name: &str) -> PathBuf {
    manifest_dir()
        .join("../cai-model/tests/fixtures/onnx")
        .join(name)
}

/// A data location holding the CNN's 12-galaxy partition as the original's `1.pt`.
fn cnn_data(d: &Dir) -> String {
    std::fs::create_dir_all(d.path("data")).unwrap();
    std::fs::copy(onnx_fixture("cnn5_partition.pt"), d.path("data/1.pt")).unwrap();
    d.s("data")
}

/// ONNX Runtime's outputs on the partition: `probs` (12 × 3) and `confidence` (12).
fn onnxruntime_outputs() -> (Vec<f32>, Vec<f32>) {
    let doc = read_json(onnx_fixture("cnn5.json"));
    let probs = doc["probs_onnxruntime"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let conf = doc["confidence_onnxruntime"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    (probs, conf)
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-5, "{what}: max |cai - onnxruntime| = {worst:e}");
}

#[test]
fn a_cnn_classifier_runs_through_cai_run_and_equals_onnxruntime() {
    let d = Dir::new();
    let data = cnn_data(&d);
    let model = onnx_fixture("cnn5.onnx").display().to_string();
    d.ok(&[
        "run",
        "--data",
        &data,
        "--results",
        &d.s("res"),
        "--model",
        &model,
        "--batch-size",
        "5",
    ]);
    assert_cnn_results(
        std::fs::read(d.path("res/predictions.parquet")).unwrap(),
        &read_json(d.path("res/summary.json")),
    );
}

/// `predictions.parquet` and `summary.json` of a CNN run: one column per output, equal to
/// ONNX Runtime's; no redshift.
pub(crate) fn assert_cnn_results(parquet: Vec<u8>, summary: &serde_json::Value) {
    let p = cai_core::predictions::Predictions::from_parquet("p", parquet.into()).unwrap();
    assert_eq!(p.len(), 12);
    let names: Vec<&str> = p.outputs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["probs", "confidence"]);
    assert_eq!(p.outputs[0].width, Some(3));
    assert_eq!(p.outputs[1].width, None);
    // No `z` output: no redshift predicted, no redshift metrics.
    assert!(p.z_pred.iter().all(|z| z.is_nan()));
    assert_eq!(summary["galaxies"], 12);
    assert!(summary["metrics"].is_null());
    let (probs, conf) = onnxruntime_outputs();
    assert_close("probs", &p.outputs[0].values, &probs);
    assert_close("confidence", &p.outputs[1].values, &conf);
}

#[test]
fn a_cnn_classifier_runs_on_slurm_and_equals_onnxruntime() {
    let Some(_cluster) = crate::slurm::cluster() else {
        return;
    };
    let d = Dir::new();
    let data = cnn_data(&d);
    let model = onnx_fixture("cnn5.onnx").display().to_string();
    d.ok(&[
        "run",
        "--engine",
        "slurm",
        "--poll",
        "0.2",
        "--data",
        &data,
        "--results",
        &d.s("res"),
        "--model",
        &model,
        "--batch-size",
        "5",
    ]);
    let rank0 = read_json(d.path("res/0.json"));
    assert_eq!(rank0["engine"], "slurm");
    assert_cnn_results(
        std::fs::read(d.path("res/predictions.parquet")).unwrap(),
        &read_json(d.path("res/summary.json")),
    );
}

/// The CNN as the Lambda functions' model, run over `s3://DATA_BUCKET/<data>` (one rank,
/// batches of 5) by the handlers in Step Functions' order (as lambda.rs drives them) on
/// moto's S3, with `extra` keys in the payload; returns the run's `summary.json` and
/// `plan.json`, and its predictions file's bytes.
#[cfg(feature = "aws")]
pub(crate) fn cnn_in_lambda_handlers(
    s3: &crate::s3::S3Server,
    d: &Dir,
    data: &str,
    extra: serde_json::Value,
) -> (serde_json::Value, serde_json::Value, Vec<u8>) {
    use crate::lambda::{
        infer_task, initialize, items, machine, summarize, Emulator, Launch, DATA_BUCKET,
        RESULTS_BUCKET,
    };
    use crate::sfn::task_payload;
    s3.upload(
        &onnx_fixture("cnn5.onnx"),
        RESULTS_BUCKET,
        "models/cnn5.onnx",
    );
    let l = Launch::new(s3, &s3.endpoint, d.tmp.path()).with_model(
        &format!("s3://{RESULTS_BUCKET}/models/cnn5.onnx"),
        &format!("s3://{DATA_BUCKET}/{data}"),
    );
    let sm = machine();
    let result_path = format!("lambda/{data}");
    let mut input = serde_json::json!({
        "bucket": RESULTS_BUCKET, "batch_size": 5, "result_path": result_path,
        "data_bucket": DATA_BUCKET, "data_prefix": data, "world_size": 1
    });
    if let (Some(i), serde_json::Value::Object(e)) = (input.as_object_mut(), extra) {
        i.extend(e);
    }
    let (state, _) = initialize(&l, &sm, &input);
    let items = items(s3, d, &sm, &state);
    assert_eq!(items.len(), 1);
    let emu = Emulator::start();
    let f = l.start(&emu, "infer", true, "info");
    let out = emu.invoke_ok(&task_payload(infer_task(&sm), &items[0]).unwrap());
    assert_eq!(out["galaxies"], 12, "{out}");
    drop(f);
    let end = summarize(&l, &sm, &state);
    assert_eq!(end["summary"]["complete"], true, "{end}");
    let json = |name: &str| {
        crate::s3::json(&s3.download(
            RESULTS_BUCKET,
            &format!("{result_path}/{name}"),
            &d.path(name),
        ))
    };
    let predictions = s3.download(
        RESULTS_BUCKET,
        &format!("{result_path}/predictions.parquet"),
        &d.path("p.parquet"),
    );
    (json("summary.json"), json("plan.json"), predictions)
}

#[cfg(feature = "aws")]
#[test]
fn a_cnn_classifier_runs_in_the_lambda_handlers_and_equals_onnxruntime() {
    use crate::lambda::{tools, DATA_BUCKET, RESULTS_BUCKET};
    let Some(s3) = tools() else { return };
    let d = Dir::new();
    s3.make_bucket(DATA_BUCKET);
    s3.make_bucket(RESULTS_BUCKET);
    s3.upload(&onnx_fixture("cnn5_partition.pt"), DATA_BUCKET, "cnn/1.pt");
    let (summary, _, predictions) = cnn_in_lambda_handlers(&s3, &d, "cnn", serde_json::json!({}));
    assert_cnn_results(predictions, &summary);
}

/// The original's payload with `"object_type": "folder"` and no `--model`: the one model
/// file in the folder named by `S3_object_name` is used and named; with two, the error
/// lists them and says to choose with `--model`.
#[test]
fn a_code_folder_payload_finds_its_model() {
    let d = Dir::new();
    let data = cnn_data(&d);
    let folder = d.path("Anomaly Detection/Inference");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(onnx_fixture("cnn5.onnx"), folder.join("cnn5.onnx")).unwrap();
    std::fs::write(folder.join("inference.py"), "print('not run')\n").unwrap();
    std::fs::write(
        d.path("payload.json"),
        r#"{"bucket": "b", "batch_size": 5, "object_type": "folder",
            "S3_object_name": "Anomaly Detection",
            "script": "/tmp/Anomaly Detection/Inference/inference.py"}"#,
    )
    .unwrap();
    let run = |results: &str| {
        let out = d.cai(&[
            "run",
            "--payload",
            "payload.json",
            "--data",
            &data,
            "--results",
            &d.s(results),
        ]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success(), err)
    };
    let (ok, err) = run("res");
    assert!(ok, "{err}");
    assert!(err.contains("cnn5.onnx"), "the model used is named: {err}");
    assert_cnn_results(
        std::fs::read(d.path("res/predictions.parquet")).unwrap(),
        &read_json(d.path("res/summary.json")),
    );

    std::fs::copy(
        onnx_fixture("cnn5.onnx"),
        d.path("Anomaly Detection/other.onnx"),
    )
    .unwrap();
    let (ok, err) = run("res2");
    assert!(!ok, "{err}");
    assert!(err.contains("2 model files"), "{err}");
    assert!(
        err.contains("other.onnx") && err.contains("cnn5.onnx"),
        "{err}"
    );
    assert!(err.contains("--model"), "{err}");
}

#[test]
fn cai_predict_writes_one_csv_column_per_output_value() {
    let d = Dir::new();
    let model = onnx_fixture("cnn5.onnx").display().to_string();
    let input = onnx_fixture("cnn5_partition.pt").display().to_string();
    d.ok(&[
        "predict",
        "--model",
        &model,
        "--input",
        &input,
        "--out",
        "p.csv",
        "--threads",
        "2",
    ]);
    let csv = std::fs::read_to_string(d.path("p.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("index,probs_0,probs_1,probs_2,confidence")
    );
    let rows: Vec<Vec<f32>> = lines
        .map(|l| l.split(',').skip(1).map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 12);
    let (probs, conf) = onnxruntime_outputs();
    let got_probs: Vec<f32> = rows.iter().flat_map(|r| r[..3].to_vec()).collect();
    let got_conf: Vec<f32> = rows.iter().map(|r| r[3]).collect();
    assert_close("probs", &got_probs, &probs);
    assert_close("confidence", &got_conf, &conf);
}

#[test]
fn model_inspect_lists_inputs_outputs_and_operators() {
    let d = Dir::new();
    let model = onnx_fixture("cnn5.onnx").display().to_string();
    let out = d.ok(&["model", "inspect", &model]);
    assert!(out.contains("images f32[batch, 5, 32, 32]"), "{out}");
    assert!(out.contains("probs f32[batch, 3]"), "{out}");
    for op in [
        "Conv 2",
        "BatchNormalization 2",
        "Relu",
        "MaxPool 1",
        "Gemm 2",
        "Softmax 1",
    ] {
        assert!(out.contains(op), "{op} missing: {out}");
    }
    assert!(out.contains("runs:          yes"), "{out}");
    assert!(out.contains("confidence f32[N]"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&d.ok(&["model", "inspect", &model, "--json"])).unwrap();
    assert_eq!(json["runs"], true);
    assert!(json["declared"]["parameters"].as_u64().unwrap() > 500);
    let bad = onnx_fixture("unsupported_op.onnx").display().to_string();
    let out = d.ok(&["model", "inspect", &bad]);
    assert!(out.contains("runs:          no"), "{out}");
    assert!(
        out.contains("NoSuchOp") && out.contains("mystery_node"),
        "{out}"
    );
}

/// `cai run` refuses before any rank: its stderr, and that no rank wrote anything.
fn refused(d: &Dir, model: &str, extra: &[&str]) -> String {
    let data = cnn_data(d);
    let mut args = vec!["run", "--data", &data, "--results", "res", "--model", model];
    args.extend_from_slice(extra);
    let out = d.cai(&args);
    assert!(!out.status.success(), "cai run {args:?} succeeded");
    assert!(!d.path("res/0.json").exists());
    assert!(!d.path("res/failed/0.json").exists());
    assert!(!d.path("res/predictions").exists());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unbindable_inputs_and_unrunnable_graphs_are_refused_before_any_rank() {
    let d = Dir::new();
    let cnn = onnx_fixture("cnn5.onnx").display().to_string();
    // A bind to a tensor the data lacks: both sides listed.
    let e = refused(&d, &cnn, &["--bind", "magnitudes=fluxes"]);
    assert!(e.contains("bound to `fluxes`"), "{e}");
    assert!(
        e.contains("model inputs") && e.contains("data tensors"),
        "{e}"
    );
    assert!(e.contains("magnitudes f32[N, 5]"), "{e}");
    // A bind naming an input the model lacks.
    let e = refused(&d, &cnn, &["--bind", "pixels=images"]);
    assert!(e.contains("`pixels`, which is not an input"), "{e}");
    // An operator tract lacks: the node and the operator named.
    let bad = onnx_fixture("unsupported_op.onnx").display().to_string();
    let e = refused(&d, &bad, &[]);
    assert!(e.contains("NoSuchOp") && e.contains("mystery_node"), "{e}");
    // A non-batch dimension that is a symbol.
    let sym = onnx_fixture("symbolic_bands.onnx").display().to_string();
    let e = refused(&d, &sym, &[]);
    assert!(e.contains("dimension 1 is `bands`"), "{e}");
}
