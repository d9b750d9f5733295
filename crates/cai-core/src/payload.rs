//! The original's Initialize input payload, accepted as it is.
//!
//! ```json
//! {"bucket": "cosmicai-data", "file_limit": "11", "batch_size": 512, "object_type": "folder",
//!  "S3_object_name": "Anomaly Detection", "script": "/tmp/Anomaly Detection/Inference/inference.py",
//!  "result_path": "result-partition-100MB/1GB/1", "data_bucket": "cosmicai-data", "data_prefix": "100MB"}
//! ```
//! Numbers may be JSON numbers or strings (the original's sample has `"file_limit": "11"`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The original's input payload. Unknown keys are kept and written back unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Bucket of the code and of the results (`result_path` lives here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Keep only the first `file_limit` partitions.
    #[serde(
        default,
        deserialize_with = "flex_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub file_limit: Option<u64>,
    /// Galaxies per inference batch.
    #[serde(
        default,
        deserialize_with = "flex_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub batch_size: Option<u64>,
    /// The original's code object type (`folder`); carried into each rank item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_type: Option<String>,
    /// The original's code object name; carried into each rank item.
    #[serde(
        rename = "S3_object_name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub s3_object_name: Option<String>,
    /// The original's inference script path; carried into each rank item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Results prefix inside `bucket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_path: Option<String>,
    /// Bucket holding the partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bucket: Option<String>,
    /// Prefix of the partitions inside `data_bucket` (e.g. `100MB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_prefix: Option<String>,
    /// Number of ranks (default: one partition per rank).
    #[serde(
        default,
        deserialize_with = "flex_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub world_size: Option<u64>,
    /// CAI's own key: finish the run already planned at the results location, running only
    /// the ranks without a result (`cai run --engine aws --resume`); the original never sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<bool>,
    /// CAI's own key: model inputs fed from data tensors of other names (`cai run --bind
    /// INPUT=TENSOR`), as `{"INPUT": "TENSOR"}`; the original never sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<BTreeMap<String, String>>,
    /// CAI's own key: the data tensor holding each galaxy's label (`cai run --label`;
    /// default `redshift`); the original never sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Every other key, kept as given.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// Most galaxies per batch a payload may ask for.
pub const MAX_BATCH_SIZE: u64 = 1 << 20;
/// Most ranks a payload may ask for (the plan's own limit).
pub const MAX_WORLD_SIZE: u64 = crate::plan::MAX_WORLD_SIZE as u64;

/// A JSON value's kind, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value for a message, cut to 60 characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Accept `12`, `"12"`, `12.0` or null for a count.
fn flex_u64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    use serde::de::Error as _;
    let v = Value::deserialize(d)?;
    match &v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    // Below 2^64: `as` would saturate larger values to u64::MAX.
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 18_446_744_073_709_551_616.0)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("expected a whole number, got {n}"))),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("expected a whole number, got {s:?}"))),
        other => Err(D::Error::custom(format!(
            "expected a whole number, got {other}"
        ))),
    }
}

impl Payload {
    /// Parse a payload document; `source_name` is used in errors.
    pub fn from_json(source_name: &str, bytes: &[u8]) -> Result<Self> {
        let json_err = |source| Error::Json {
            what: "payload",
            source_name: source_name.to_string(),
            source,
        };
        let value: Value = serde_json::from_slice(bytes).map_err(json_err)?;
        let Value::Object(fields) = &value else {
            return Err(Error::Invalid {
                field: format!("payload {source_name}"),
                reason: format!("expected a JSON object, got {}", kind(&value)),
            });
        };
        match serde_json::from_value::<Payload>(value.clone()) {
            Ok(p) => {
                p.check(source_name)?;
                Ok(p)
            }
            // Name the field at fault: serde's message for a field of the wrong type
            // names only the type.
            Err(e) => Err(fields
                .iter()
                .find_map(|(k, v)| {
                    let one = Value::Object([(k.clone(), v.clone())].into_iter().collect());
                    serde_json::from_value::<Payload>(one)
                        .err()
                        .map(|e| Error::Invalid {
                            field: format!("payload field {k:?} in {source_name}"),
                            reason: format!("{e} (the value is {})", short(v)),
                        })
                })
                .unwrap_or_else(|| json_err(e))),
        }
    }

    /// Refuse counts no run can have: a zero or absurd batch size, world size or file
    /// limit, naming the field.
    pub fn check(&self, source_name: &str) -> Result<()> {
        for (name, value, max) in [
            ("batch_size", self.batch_size, MAX_BATCH_SIZE),
            ("world_size", self.world_size, MAX_WORLD_SIZE),
            ("file_limit", self.file_limit, u64::MAX),
        ] {
            match value {
                Some(0) => {
                    return Err(Error::Invalid {
                        field: format!("payload field {name:?} in {source_name}"),
                        reason: "must be at least 1".into(),
                    })
                }
                Some(v) if v > max => {
                    return Err(Error::Invalid {
                        field: format!("payload field {name:?} in {source_name}"),
                        reason: format!("{v} is more than the {max} supported"),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `s3://data_bucket/data_prefix`, where the original lists partitions.
    pub fn data_url(&self) -> Option<String> {
        let bucket = self.data_bucket.as_deref().or(self.bucket.as_deref())?;
        Some(s3_url(bucket, self.data_prefix.as_deref().unwrap_or("")))
    }

    /// The code folder the original's workers run (`"object_type": "folder"` and
    /// `S3_object_name`): where a model file is looked for when none is given. A local
    /// folder of that name when one exists here, else `s3://bucket/<S3_object_name>`.
    pub fn model_folder(&self) -> Option<String> {
        if self.object_type.as_deref() != Some("folder") {
            return None;
        }
        let name = self.s3_object_name.as_deref()?.trim_matches('/');
        if name.is_empty() {
            return None;
        }
        if std::path::Path::new(name).is_dir() {
            return Some(name.to_string());
        }
        Some(s3_url(self.bucket.as_deref()?, name))
    }

    /// `s3://bucket/result_path`, where the original writes its results.
    pub fn results_url(&self) -> Option<String> {
        let bucket = self.bucket.as_deref()?;
        Some(s3_url(bucket, self.result_path.as_deref()?))
    }
}

fn s3_url(bucket: &str, prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "bucket": "cosmicai-data",
      "file_limit": "11",
      "batch_size": 512,
      "object_type": "folder",
      "S3_object_name": "Anomaly Detection",
      "script": "/tmp/Anomaly Detection/Inference/inference.py",
      "result_path": "result-partition-100MB/1GB/1",
      "data_bucket": "cosmicai-data",
      "data_prefix": "100MB"
    }"#;

    #[test]
    fn bad_fields_are_named() {
        for (doc, field, want) in [
            (r#"{"world_size": -3}"#, "world_size", "got -3"),
            (r#"{"batch_size": "many"}"#, "batch_size", "\"many\""),
            (r#"{"file_limit": 1.5}"#, "file_limit", "whole number"),
            (
                r#"{"bucket": 5, "batch_size": 4}"#,
                "bucket",
                "expected a string",
            ),
            (r#"{"data_prefix": ["a"]}"#, "data_prefix", "[\"a\"]"),
            (r#"{"world_size": true}"#, "world_size", "got true"),
            (r#"{"batch_size": 0}"#, "batch_size", "at least 1"),
            (
                r#"{"world_size": 100001}"#,
                "world_size",
                "more than the 100000",
            ),
            (
                r#"{"batch_size": "99999999999"}"#,
                "batch_size",
                "more than",
            ),
            (r#"{"world_size": 1e300}"#, "world_size", "whole number"),
        ] {
            let e = Payload::from_json("in.json", doc.as_bytes()).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("payload field \"{field}\" in in.json"))
                    && msg.contains(want),
                "{doc}: {msg}"
            );
        }
        for doc in ["[1, 2]", "\"x\"", "null"] {
            let msg = Payload::from_json("in.json", doc.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("expected a JSON object") && msg.contains("in.json"),
                "{msg}"
            );
        }
        let msg = Payload::from_json("in.json", b"{\"bucket\": ")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("in.json"), "{msg}");
    }

    proptest::proptest! {
        /// Any JSON value as a payload (or any bytes): an answer or an error, never a panic.
        #[test]
        fn arbitrary_payloads_never_panic(
            key in proptest::sample::select(vec![
                "bucket", "file_limit", "batch_size", "world_size", "result_path",
                "data_prefix", "S3_object_name", "other",
            ]),
            n in proptest::num::f64::ANY,
            i in proptest::num::i64::ANY,
            text in ".{0,12}",
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let values = [
                serde_json::json!(i),
                serde_json::Number::from_f64(n).map(Value::Number).unwrap_or(Value::Null),
                Value::String(text.clone()),
                serde_json::json!([i, text.clone()]),
                serde_json::json!({"x": i}),
            ];
            for v in values {
                let doc = serde_json::json!({ key: v }).to_string();
                if let Ok(p) = Payload::from_json("p.json", doc.as_bytes()) {
                    proptest::prop_assert!(p.check("p.json").is_ok());
                }
            }
            let _ = Payload::from_json("p.json", &bytes);
        }
    }

    #[test]
    fn the_originals_sample_payload_parses() {
        let p = Payload::from_json("demo input.json", SAMPLE.as_bytes()).unwrap();
        assert_eq!(p.file_limit, Some(11));
        assert_eq!(p.batch_size, Some(512));
        assert_eq!(p.world_size, None);
        assert_eq!(p.s3_object_name.as_deref(), Some("Anomaly Detection"));
        assert_eq!(p.data_url().unwrap(), "s3://cosmicai-data/100MB");
        assert_eq!(
            p.results_url().unwrap(),
            "s3://cosmicai-data/result-partition-100MB/1GB/1"
        );
        // Round trip keeps every key.
        let v: Value = serde_json::to_value(&p).unwrap();
        assert_eq!(v["S3_object_name"], "Anomaly Detection");
        assert_eq!(v["data_prefix"], "100MB");
    }

    #[test]
    fn unknown_keys_are_kept_and_bad_numbers_named() {
        let p = Payload::from_json("p", br#"{"world_size": "4", "note": "x"}"#).unwrap();
        assert_eq!(p.world_size, Some(4));
        assert_eq!(p.extra["note"], "x");
        let e = Payload::from_json("p.json", br#"{"file_limit": "eleven"}"#).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("p.json") && msg.contains("eleven"), "{msg}");
    }
}
