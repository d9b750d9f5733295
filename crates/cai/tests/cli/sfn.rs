//! A Step Functions emulator for the JSONPath subset the generated state machine uses: a
//! Task state's `Parameters`, `ResultSelector`, `ResultPath` and `OutputPath`, and the
//! Distributed Map's `ItemReader`. The Lambda tests (`lambda.rs`) drive the handlers in
//! Step Functions' order with exactly the events it would send. Test scaffolding: it lives
//! here, not in the engine.

use cai_engine::aws::lambda::{InferOutput, InitializeOutput, SummarizeOutput};
use cai_engine::aws::{state_machine, AwsConfig, FunctionArns, S3Prefix};
use serde_json::{json, Map, Value};

/// Evaluate a reference path (`$`, `$.a.b`) against `input`; `None` when a field is missing.
pub(crate) fn json_path<'a>(input: &'a Value, path: &str) -> Option<&'a Value> {
    let rest = path.strip_prefix('$')?;
    let mut at = input;
    for field in rest.split('.').filter(|f| !f.is_empty()) {
        at = at.get(field)?;
    }
    Some(at)
}

/// Apply a payload template (`Parameters`, `ResultSelector`): keys ending in `.$` take the
/// value at their path in `input`, other values are copied (objects recursively).
pub(crate) fn apply_template(template: &Value, input: &Value) -> Result<Value, String> {
    let Some(obj) = template.as_object() else {
        return Ok(template.clone());
    };
    let mut out = Map::new();
    for (k, v) in obj {
        if let Some(name) = k.strip_suffix(".$") {
            let path = v
                .as_str()
                .ok_or_else(|| format!("{k}: the path must be a string"))?;
            let value = json_path(input, path)
                .ok_or_else(|| format!("{k}: {path} is not in the input {input}"))?;
            out.insert(name.to_string(), value.clone());
        } else {
            out.insert(k.clone(), apply_template(v, input)?);
        }
    }
    Ok(Value::Object(out))
}

/// Put `result` at `path` (`$` replaces the whole input; `$.a.b` sets that field).
pub(crate) fn set_path(input: &Value, path: &str, result: Value) -> Result<Value, String> {
    let rest = path
        .strip_prefix('$')
        .ok_or_else(|| format!("{path}: not a reference path"))?;
    let fields: Vec<&str> = rest.split('.').filter(|f| !f.is_empty()).collect();
    let Some((last, parents)) = fields.split_last() else {
        return Ok(result);
    };
    let mut out = input.clone();
    let mut at = &mut out;
    for f in parents {
        let obj = at
            .as_object_mut()
            .ok_or_else(|| format!("{path}: the input is not an object at {f}"))?;
        at = obj
            .entry(f.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    at.as_object_mut()
        .ok_or_else(|| format!("{path}: the input is not an object"))?
        .insert(last.to_string(), result);
    Ok(out)
}

/// The payload a `lambda:invoke` Task state sends its function for state input `input`:
/// its `Parameters` applied, then `Payload`.
pub(crate) fn task_payload(task: &Value, input: &Value) -> Result<Value, String> {
    let params = task.get("Parameters").ok_or("the task has no Parameters")?;
    let resolved = apply_template(params, input)?;
    resolved
        .get("Payload")
        .cloned()
        .ok_or_else(|| "the task's Parameters have no Payload".to_string())
}

/// The state output of a `lambda:invoke` Task state whose function answered `answer`:
/// `ResultSelector` over `{"Payload": answer}`, `ResultPath` into the input, `OutputPath`.
pub(crate) fn task_output(task: &Value, input: &Value, answer: Value) -> Result<Value, String> {
    let raw = json!({ "Payload": answer, "StatusCode": 200 });
    let selected = match task.get("ResultSelector") {
        Some(sel) => apply_template(sel, &raw)?,
        None => raw,
    };
    let path = task
        .get("ResultPath")
        .and_then(Value::as_str)
        .unwrap_or("$");
    let combined = set_path(input, path, selected)?;
    match task.get("OutputPath").and_then(Value::as_str) {
        Some(p) => json_path(&combined, p)
            .cloned()
            .ok_or_else(|| format!("OutputPath {p} is not in {combined}")),
        None => Ok(combined),
    }
}

/// The generated state machine for a stack over the original's buckets.
fn machine() -> Value {
    let cfg = AwsConfig::new(
        "cai",
        S3Prefix::new("cosmicai-data", "100MB"),
        S3Prefix::new("cosmicai-results", "runs"),
        S3Prefix::new("cosmicai-models", "astromae.safetensors"),
    );
    state_machine(&cfg, &FunctionArns::placeholders())
}

#[test]
fn paths_and_templates_follow_step_functions() {
    let input = json!({"a": {"b": 1}, "c": [1, 2]});
    assert_eq!(json_path(&input, "$"), Some(&input));
    assert_eq!(json_path(&input, "$.a.b"), Some(&json!(1)));
    assert_eq!(json_path(&input, "$.x"), None);
    let t = json!({"x.$": "$.a", "lit": "v", "nested": {"y.$": "$.c"}});
    assert_eq!(
        apply_template(&t, &input).unwrap(),
        json!({"x": {"b": 1}, "lit": "v", "nested": {"y": [1, 2]}})
    );
    assert!(apply_template(&json!({"x.$": "$.nope"}), &input).is_err());
    assert_eq!(
        set_path(&input, "$.a.z", json!(2)).unwrap()["a"],
        json!({"b": 1, "z": 2})
    );
    assert_eq!(set_path(&input, "$", json!(3)).unwrap(), json!(3));
}

/// The state output of `task` after its function answered `out`.
fn answered<T: serde::Serialize>(task: &Value, input: &Value, out: &T) -> Value {
    task_output(task, input, serde_json::to_value(out).unwrap()).unwrap()
}

/// The handlers' input and output types against the generated machine: what Step
/// Functions sends each function parses, and what each answers gives the next state
/// the fields it reads.
#[test]
fn event_shapes_match_the_generated_state_machine() {
    let sm = machine();
    let states = &sm["States"];
    let payload = json!({
        "bucket": "cosmicai-results", "file_limit": "11", "batch_size": 512,
        "object_type": "folder", "S3_object_name": "Anomaly Detection",
        "script": "/tmp/Anomaly Detection/Inference/inference.py",
        "result_path": "runs/1", "data_bucket": "cosmicai-data", "data_prefix": "100MB"
    });
    // Initialize gets the execution input unchanged: the original's payload.
    let init_event = task_payload(&states["Initialize"], &payload).unwrap();
    assert_eq!(init_event, payload);
    let parsed: cai_core::payload::Payload = serde_json::from_value(init_event).unwrap();
    assert_eq!(
        parsed.results_url().unwrap(),
        "s3://cosmicai-results/runs/1"
    );

    let answer = InitializeOutput {
        items_bucket: "cosmicai-results".into(),
        items_key: "runs/1/items.json".into(),
        results: "s3://cosmicai-results/runs/1".into(),
        world_size: 2,
        warnings: vec!["a gap".into()],
    };
    let after_init = answered(&states["Initialize"], &payload, &answer);
    assert_eq!(
        after_init["bucket"], "cosmicai-results",
        "the input is kept"
    );
    let init = &after_init["init"];
    assert_eq!(init["world_size"], 2);
    // The map's ItemReader finds items.json from the answer.
    let map = &states["Infer"];
    let reader = apply_template(&map["ItemReader"]["Parameters"], &after_init).unwrap();
    assert_eq!(
        reader,
        json!({"Bucket": "cosmicai-results", "Key": "runs/1/items.json"})
    );
    assert!(
        map.get("ItemSelector").is_none(),
        "items reach Infer unchanged"
    );

    // Infer gets one item as Initialize wrote it.
    let plan = cai_core::plan::make_plan(
        &cai_core::plan::PlanRequest {
            data: "s3://cosmicai-data/100MB".into(),
            results: "s3://cosmicai-results/runs/1".into(),
            model: "s3://m/model.safetensors".into(),
            world_size: Some(2),
            payload: Some(parsed),
            ..Default::default()
        },
        (1..=3)
            .map(|i| cai_core::plan::PartitionRef {
                key: format!("{i}.pt"),
                galaxies: None,
                bytes: 1,
                sha256: None,
                first_galaxy: None,
            })
            .collect(),
    )
    .unwrap();
    let items: Value = serde_json::to_value(&plan.items).unwrap();
    let task = &map["ItemProcessor"]["States"]["InferRank"];
    let item = &items[1];
    let event = task_payload(task, item).unwrap();
    let parsed: cai_core::plan::RankItem = serde_json::from_value(event).unwrap();
    assert_eq!(parsed.rank, 1);
    assert_eq!(
        parsed.plan_url.as_deref(),
        Some("s3://cosmicai-results/runs/1/plan.json")
    );
    let out = InferOutput {
        rank: 1,
        galaxies: 10,
        report: "s3://cosmicai-results/runs/1/1.json".into(),
        predictions: "s3://cosmicai-results/runs/1/predictions/1.parquet".into(),
        wall_time_s: 1.0,
        reused: false,
        superseded: false,
    };
    let ans = serde_json::to_value(&out).unwrap();
    assert_eq!(task_output(task, item, ans.clone()).unwrap(), ans);

    // Summarize gets {results} from Initialize's answer, even after the map failed.
    let after_map = set_path(&after_init, "$.map_error", json!({"Error": "x"})).unwrap();
    let sum_event = task_payload(&states["Summarize"], &after_map).unwrap();
    assert_eq!(
        sum_event,
        json!({"results": "s3://cosmicai-results/runs/1"})
    );
    let done = SummarizeOutput {
        complete: true,
        galaxies: 10,
        ranks_done: 2,
        failed_ranks: vec![],
        missing_ranks: vec![],
        summary: "s3://cosmicai-results/runs/1/summary.json".into(),
    };
    let end = answered(&states["Summarize"], &after_map, &done);
    assert_eq!(
        json_path(
            &end,
            states["Complete?"]["Choices"][0]["Variable"]
                .as_str()
                .unwrap()
        ),
        Some(&json!(true))
    );
}
