//! Initialize: which partitions each rank runs, by the original's rule.
//!
//! Partitions are ordered by the number in their file name (`1.pt`, `2.pt`, … or
//! `00001.safetensors`, …), cut to the first `file_limit`, and dealt to `world_size` ranks:
//! rank r takes the next `ceil(files_left / ranks_left)` files, so ranks beyond the file
//! count get none. Gaps in the `1..N` numbering are reported as warnings, as the original does.

use std::ops::Range;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::payload::Payload;

/// Version of the `plan.json` layout.
pub const PLAN_VERSION: u32 = 1;

/// One partition as the plan knows it (from `manifest.json` or a listing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRef {
    /// Key relative to the data location (`00001.safetensors`, `1.pt`).
    pub key: String,
    /// Galaxies in it, when a manifest says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub galaxies: Option<u64>,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the file, when a manifest says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Index in the dataset of the partition's first galaxy, when a manifest says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_galaxy: Option<u64>,
}

/// The per-rank item of the original's Initialize, key for key, plus the URLs a worker needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankItem {
    /// The payload's `bucket`.
    #[serde(rename = "S3_BUCKET")]
    pub s3_bucket: String,
    /// The payload's `S3_object_name`.
    #[serde(rename = "S3_OBJECT_NAME")]
    pub s3_object_name: String,
    /// The payload's `script`.
    #[serde(rename = "SCRIPT")]
    pub script: String,
    /// The payload's `object_type`.
    #[serde(rename = "S3_OBJECT_TYPE")]
    pub s3_object_type: String,
    /// Number of ranks.
    #[serde(rename = "WORLD_SIZE", deserialize_with = "flex_usize")]
    pub world_size: usize,
    /// This rank.
    #[serde(rename = "RANK", deserialize_with = "flex_usize")]
    pub rank: usize,
    /// The payload's `data_bucket`.
    #[serde(rename = "DATA_BUCKET")]
    pub data_bucket: String,
    /// The payload's `data_prefix`.
    #[serde(rename = "DATA_PREFIX")]
    pub data_prefix: String,
    /// One key, or a list of keys when the rank has several partitions (as the original).
    #[serde(rename = "DATA_PATH")]
    pub data_path: Value,
    /// The payload's `result_path`.
    #[serde(rename = "RESULT_PATH")]
    pub result_path: String,
    /// Galaxies per batch.
    #[serde(rename = "BATCH_SIZE", deserialize_with = "flex_usize")]
    pub batch_size: usize,
    /// Where the full plan lives (ours: lets a worker start from the item alone).
    #[serde(rename = "PLAN_URL", default, skip_serializing_if = "Option::is_none")]
    pub plan_url: Option<String>,
}

fn flex_usize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    use serde::de::Error as _;
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| D::Error::custom(format!("expected a whole number, got {n}"))),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| D::Error::custom(format!("expected a whole number, got {s:?}"))),
        other => Err(D::Error::custom(format!(
            "expected a whole number, got {other}"
        ))),
    }
}

/// The whole plan: written as `plan.json` to the results location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Layout version ([`PLAN_VERSION`]).
    pub version: u32,
    /// Location of the partitions.
    pub data: String,
    /// Location of the results.
    pub results: String,
    /// Location of the model file.
    pub model: String,
    /// Model inputs fed from differently named data tensors, `(INPUT, TENSOR)` pairs
    /// (`--bind INPUT=TENSOR`; ONNX models only). Absent from older plans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<(String, String)>,
    /// The data tensor holding each galaxy's label (`--label`; default `redshift`): the
    /// predictions' `z_true`, judged against a scalar output as redshift, against a vector
    /// output as class scores. Absent from older plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Galaxies per batch.
    pub batch_size: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Partitions in plan order (after `file_limit`).
    pub partitions: Vec<PartitionRef>,
    /// For each rank, indices into `partitions`.
    pub ranks: Vec<Vec<usize>>,
    /// The original's per-rank items.
    pub items: Vec<RankItem>,
    /// Warnings raised while planning (gaps in numbering…).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The payload this plan came from (or one made from flags).
    pub payload: Payload,
}

/// What to plan: locations, sizes and the original's knobs.
#[derive(Debug, Clone, Default)]
pub struct PlanRequest {
    /// Location of the partitions.
    pub data: String,
    /// Location of the results.
    pub results: String,
    /// Location of the model file.
    pub model: String,
    /// Model inputs bound to data tensors of other names, `(INPUT, TENSOR)`.
    pub binds: Vec<(String, String)>,
    /// The data tensor of the labels (`--label`; default `redshift`).
    pub label: Option<String>,
    /// Galaxies per batch (default 512 as in the original's runs).
    pub batch_size: Option<usize>,
    /// Keep only the first N partitions.
    pub file_limit: Option<usize>,
    /// Number of ranks (default: one per partition).
    pub world_size: Option<usize>,
    /// The original's payload, if one was given.
    pub payload: Option<Payload>,
}

/// Most ranks a plan may have.
pub const MAX_WORLD_SIZE: usize = 100_000;

/// Check that a partition key stays inside its data location: a relative path of plain
/// segments (no `..` or `.`, no leading `/`, no empty segment, no backslash, no URL of another
/// bucket, no control characters). The reason is returned when it does not.
pub fn check_key(key: &str) -> std::result::Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.contains("://") {
        return Err("a URL: partitions must be keys under the data location, not in another bucket or store".into());
    }
    if key.starts_with('/') {
        return Err("an absolute path: partitions must be keys under the data location".into());
    }
    if key.contains('\\') {
        return Err("contains a backslash".into());
    }
    if key.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    for seg in key.split('/') {
        match seg {
            "" => return Err("has an empty path segment (`//` or a trailing `/`)".into()),
            "." | ".." => {
                return Err(format!(
                    "has a {seg:?} segment: partitions must stay under the data location"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Default batch size, the original's.
pub const DEFAULT_BATCH_SIZE: usize = 512;

/// The original's assignment: rank r takes the next `ceil(left / ranks_left)` files.
pub fn assign(files: usize, world_size: usize) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(world_size);
    let mut start = 0;
    for r in 0..world_size {
        let left = files - start;
        let ranks_left = world_size - r;
        let take = left.div_ceil(ranks_left);
        out.push(start..start + take);
        start += take;
    }
    out
}

/// The number in a partition's file name: the first run of digits in the stem (the name up
/// to its first `.`): `12.pt` → 12, `00012.safetensors` → 12, `100MB/3.pt` → 3,
/// `part-0007.safetensors` → 7. None when the stem holds no number or it overflows `u64`.
/// The one rule for partition numbers: the planner orders and checks partitions with it.
pub fn partition_number(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let stem = name.split('.').next()?;
    let digits: String = stem
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Is this key a partition file we can read (`*.pt`, `*.safetensors`)?
pub fn is_partition_key(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    (name.ends_with(".pt") || name.ends_with(".safetensors")) && partition_number(name).is_some()
}

/// Order partitions by file number (then key), as the original's `1..N`.
pub fn sort_partitions(parts: &mut [PartitionRef]) {
    parts.sort_by(|a, b| {
        (partition_number(&a.key), &a.key).cmp(&(partition_number(&b.key), &b.key))
    });
}

/// Warnings for gaps in `1..N` numbering (and duplicates), as the original prints.
pub fn numbering_gaps(parts: &[PartitionRef]) -> Vec<String> {
    let mut nums: Vec<u64> = parts
        .iter()
        .filter_map(|p| partition_number(&p.key))
        .collect();
    nums.sort_unstable();
    let mut warnings = Vec::new();
    let mut expected = 1u64;
    let mut missing = Vec::new();
    for &n in &nums {
        if n < expected {
            warnings.push(format!("partition number {n} appears more than once"));
            continue;
        }
        while expected < n && missing.len() < 1000 {
            missing.push(expected);
            expected += 1;
        }
        expected = n + 1;
    }
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(20).map(u64::to_string).collect();
        let more = if missing.len() > 20 {
            format!(" and {} more", missing.len() - 20)
        } else {
            String::new()
        };
        warnings.push(format!(
            "gap in partition numbering: missing {}{more}",
            shown.join(", ")
        ));
    }
    warnings
}

/// Build the plan for the given partitions (any order; they are sorted here).
pub fn make_plan(req: &PlanRequest, mut partitions: Vec<PartitionRef>) -> Result<Plan> {
    let payload = req.payload.clone().unwrap_or_default();
    sort_partitions(&mut partitions);
    let mut warnings = numbering_gaps(&partitions);
    let limit = req
        .file_limit
        .or(payload.file_limit.map(|v| v as usize))
        .unwrap_or(partitions.len());
    if limit > partitions.len() {
        warnings.push(format!(
            "file_limit {limit} is more than the {} partitions found; using all",
            partitions.len()
        ));
    }
    partitions.truncate(limit);
    if partitions.is_empty() {
        return Err(Error::Invalid {
            field: "data".into(),
            reason: format!("no partitions to run under {}", req.data),
        });
    }
    let batch_size = req
        .batch_size
        .or(payload.batch_size.map(|v| v as usize))
        .unwrap_or(DEFAULT_BATCH_SIZE);
    if batch_size == 0 {
        return Err(Error::Invalid {
            field: "batch_size".into(),
            reason: "must be at least 1".into(),
        });
    }
    let world_size = req
        .world_size
        .or(payload.world_size.map(|v| v as usize))
        .unwrap_or(partitions.len());
    if world_size == 0 {
        return Err(Error::Invalid {
            field: "world_size".into(),
            reason: "must be at least 1".into(),
        });
    }
    if world_size > MAX_WORLD_SIZE {
        return Err(Error::Invalid {
            field: "world_size".into(),
            reason: format!("{world_size} ranks is more than the 100,000 supported"),
        });
    }
    if batch_size as u64 > crate::payload::MAX_BATCH_SIZE {
        return Err(Error::Invalid {
            field: "batch_size".into(),
            reason: format!(
                "{batch_size} galaxies per batch is more than the {} supported",
                crate::payload::MAX_BATCH_SIZE
            ),
        });
    }
    for p in &partitions {
        check_key(&p.key).map_err(|reason| Error::Invalid {
            field: format!("partition key {:?} under {}", p.key, req.data),
            reason,
        })?;
    }
    if world_size > partitions.len() {
        warnings.push(format!(
            "world_size {world_size} is more than the {} partitions: ranks {}..{} get none",
            partitions.len(),
            partitions.len(),
            world_size - 1
        ));
    }
    let ranks: Vec<Vec<usize>> = assign(partitions.len(), world_size)
        .into_iter()
        .map(|r| r.collect())
        .collect();
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    let data_prefix = s(&payload.data_prefix);
    let items = ranks
        .iter()
        .enumerate()
        .map(|(rank, idx)| {
            let keys: Vec<Value> = idx
                .iter()
                .map(|&i| Value::String(join_key(&data_prefix, &partitions[i].key)))
                .collect();
            let data_path = if keys.len() == 1 {
                keys[0].clone()
            } else {
                Value::Array(keys)
            };
            RankItem {
                s3_bucket: s(&payload.bucket),
                s3_object_name: s(&payload.s3_object_name),
                script: s(&payload.script),
                s3_object_type: s(&payload.object_type),
                world_size,
                rank,
                data_bucket: payload
                    .data_bucket
                    .clone()
                    .or_else(|| payload.bucket.clone())
                    .unwrap_or_default(),
                data_prefix: data_prefix.clone(),
                data_path,
                result_path: payload
                    .result_path
                    .clone()
                    .unwrap_or_else(|| req.results.clone()),
                batch_size,
                plan_url: Some(format!(
                    "{}/{}",
                    req.results.trim_end_matches('/'),
                    crate::layout::PLAN
                )),
            }
        })
        .collect();
    Ok(Plan {
        version: PLAN_VERSION,
        data: req.data.clone(),
        results: req.results.clone(),
        model: req.model.clone(),
        // Flags first, then the payload's own keys (how the Lambda Initialize gets them).
        binds: match (&req.binds[..], &payload.bind) {
            ([], Some(b)) => b.iter().map(|(i, t)| (i.clone(), t.clone())).collect(),
            _ => req.binds.clone(),
        },
        label: req.label.clone().or_else(|| payload.label.clone()),
        batch_size,
        world_size,
        partitions,
        ranks,
        items,
        warnings,
        payload,
    })
}

fn join_key(prefix: &str, key: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    }
}

impl Plan {
    /// Parse `plan.json`.
    pub fn from_json(source_name: &str, bytes: &[u8]) -> Result<Self> {
        let plan: Plan = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "plan",
            source_name: source_name.to_string(),
            source,
        })?;
        plan.validate(source_name)?;
        Ok(plan)
    }

    /// Check that ranks point at real partitions and agree with `world_size`.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        let bad = |reason: String| Error::Invalid {
            field: format!("plan {source_name}"),
            reason,
        };
        if self.ranks.len() != self.world_size {
            return Err(bad(format!(
                "{} rank lists for world_size {}",
                self.ranks.len(),
                self.world_size
            )));
        }
        if self.batch_size == 0 {
            return Err(bad("batch_size 0".into()));
        }
        for p in &self.partitions {
            check_key(&p.key)
                .map_err(|reason| bad(format!("partition key {:?}: {reason}", p.key)))?;
        }
        for (r, idx) in self.ranks.iter().enumerate() {
            if let Some(i) = idx.iter().find(|&&i| i >= self.partitions.len()) {
                return Err(bad(format!(
                    "rank {r} names partition {i} of {}",
                    self.partitions.len()
                )));
            }
        }
        Ok(())
    }

    /// Partitions of one rank.
    pub fn partitions_of(&self, rank: usize) -> Vec<&PartitionRef> {
        self.ranks
            .get(rank)
            .map(|idx| idx.iter().map(|&i| &self.partitions[i]).collect())
            .unwrap_or_default()
    }

    /// Galaxies of one rank (0 for partitions whose count the plan does not know: no
    /// manifest).
    pub fn galaxies_of(&self, rank: usize) -> u64 {
        self.partitions_of(rank)
            .iter()
            .map(|p| p.galaxies.unwrap_or(0))
            .sum()
    }

    /// Galaxies of each rank, in rank order ([`Plan::galaxies_of`]).
    pub fn galaxies_per_rank(&self) -> Vec<u64> {
        (0..self.world_size).map(|r| self.galaxies_of(r)).collect()
    }

    /// The original's `payload.json`: the payload, the rank→files map and the items.
    pub fn payload_json(&self) -> Value {
        let mut v = serde_json::to_value(&self.payload).unwrap_or(Value::Null);
        if !v.is_object() {
            v = Value::Object(Default::default());
        }
        let files: serde_json::Map<String, Value> = self
            .items
            .iter()
            .map(|it| (it.rank.to_string(), it.data_path.clone()))
            .collect();
        if let Value::Object(m) = &mut v {
            m.insert("world_size".into(), Value::from(self.world_size));
            m.insert("batch_size".into(), Value::from(self.batch_size));
            m.insert("files".into(), Value::Object(files));
            m.insert(
                "items".into(),
                serde_json::to_value(&self.items).unwrap_or(Value::Null),
            );
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_leave_the_data_location_are_refused() {
        for ok in [
            "1.pt",
            "100MB/00001.safetensors",
            "a b/c-d_e.pt",
            "..x/1.pt",
            "x../2.pt",
        ] {
            assert_eq!(check_key(ok), Ok(()), "{ok}");
        }
        for (bad, want) in [
            ("", "empty"),
            ("../secret/1.pt", "\"..\" segment"),
            ("a/../../1.pt", "\"..\" segment"),
            ("./1.pt", "\".\" segment"),
            ("/etc/passwd", "absolute path"),
            ("s3://other-bucket/1.pt", "another bucket"),
            ("file:///etc/1.pt", "another bucket"),
            ("a//1.pt", "empty path segment"),
            ("a/", "empty path segment"),
            ("a\\..\\1.pt", "backslash"),
            ("1\n.pt", "control character"),
        ] {
            let e = check_key(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        // In a manifest being planned, and in a plan.json a worker reads.
        let parts = vec![PartitionRef {
            key: "../1.pt".into(),
            galaxies: Some(1),
            bytes: 1,
            sha256: None,
            first_galaxy: None,
        }];
        let req = PlanRequest {
            data: "s3://d/p".into(),
            ..Default::default()
        };
        let e = make_plan(&req, parts).unwrap_err().to_string();
        assert!(
            e.contains("partition key \"../1.pt\" under s3://d/p"),
            "{e}"
        );
        let good = vec![PartitionRef {
            key: "1.pt".into(),
            galaxies: Some(1),
            bytes: 1,
            sha256: None,
            first_galaxy: None,
        }];
        let plan = make_plan(&req, good).unwrap();
        let mut v = serde_json::to_value(&plan).unwrap();
        v["partitions"][0]["key"] = Value::String("/etc/passwd".into());
        let e = Plan::from_json("r/plan.json", v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("plan r/plan.json") && e.contains("absolute path"),
            "{e}"
        );
        let absurd = PlanRequest {
            batch_size: Some(usize::MAX),
            ..req.clone()
        };
        let one = |k: &str| {
            vec![PartitionRef {
                key: k.into(),
                galaxies: None,
                bytes: 1,
                sha256: None,
                first_galaxy: None,
            }]
        };
        let e = make_plan(&absurd, one("1.pt")).unwrap_err().to_string();
        assert!(e.contains("batch_size"), "{e}");
    }

    proptest::proptest! {
        /// Bytes as plan.json: a plan or an error, never a panic; a plan that parses has
        /// ranks inside its partitions and keys inside its data location.
        #[test]
        fn arbitrary_plans_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128),
            world in 0usize..5,
            idx in proptest::collection::vec(0usize..6, 0..6),
            key in "[a-z./\\\\:]{0,10}",
        ) {
            let _ = Plan::from_json("p", &bytes);
            let doc = serde_json::json!({
                "version": 1, "data": "d", "results": "r", "model": "m", "batch_size": 1,
                "world_size": world,
                "partitions": [{"key": key, "bytes": 1}, {"key": "2.pt", "bytes": 1}],
                "ranks": vec![idx.clone(); world],
                "items": [], "payload": {},
            });
            if let Ok(p) = Plan::from_json("p", doc.to_string().as_bytes()) {
                for r in 0..p.world_size {
                    proptest::prop_assert!(p.partitions_of(r).len() == idx.len());
                }
                for part in &p.partitions {
                    proptest::prop_assert!(check_key(&part.key).is_ok());
                }
            }
        }
    }
    use proptest::prelude::*;

    fn parts(keys: &[&str]) -> Vec<PartitionRef> {
        keys.iter()
            .map(|k| PartitionRef {
                key: k.to_string(),
                galaxies: None,
                bytes: 10,
                sha256: None,
                first_galaxy: None,
            })
            .collect()
    }

    /// The rule written out the way the original's Initialize computes it.
    fn original_rule(files: usize, world: usize) -> Vec<Vec<usize>> {
        let all: Vec<usize> = (0..files).collect();
        let mut out = vec![];
        let mut i = 0;
        for r in 0..world {
            let n = ((files - i) as f64 / (world - r) as f64).ceil() as usize;
            out.push(all[i..i + n].to_vec());
            i += n;
        }
        out
    }

    proptest! {
        #[test]
        fn assignment_matches_the_original_rule(files in 0usize..400, world in 1usize..300) {
            let got: Vec<Vec<usize>> = assign(files, world).into_iter().map(|r| r.collect()).collect();
            prop_assert_eq!(&got, &original_rule(files, world));
            // Every file exactly once, in order.
            let flat: Vec<usize> = got.concat();
            prop_assert_eq!(flat, (0..files).collect::<Vec<_>>());
        }
    }

    #[test]
    fn numbers_and_sorting() {
        assert_eq!(partition_number("12.pt"), Some(12));
        assert_eq!(partition_number("100MB/3.pt"), Some(3));
        assert_eq!(partition_number("00012.safetensors"), Some(12));
        assert_eq!(partition_number("manifest.json"), None);
        assert_eq!(partition_number("part-0007.safetensors"), Some(7));
        assert_eq!(partition_number("12_v2.pt"), Some(12));
        assert_eq!(partition_number("a1b2.pt"), Some(1));
        assert_eq!(partition_number("99999999999999999999999.pt"), None);
        let mut p = parts(&["10.pt", "2.pt", "1.pt"]);
        sort_partitions(&mut p);
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["1.pt", "2.pt", "10.pt"]);
    }

    #[test]
    fn gaps_are_warned() {
        let w = numbering_gaps(&parts(&["1.pt", "2.pt", "5.pt"]));
        assert_eq!(
            w,
            vec!["gap in partition numbering: missing 3, 4".to_string()]
        );
        assert!(numbering_gaps(&parts(&["1.pt", "2.pt"])).is_empty());
    }

    #[test]
    fn plan_from_the_originals_payload() {
        let payload = Payload::from_json(
            "p",
            br#"{"bucket":"b","file_limit":"3","batch_size":64,"object_type":"folder",
                "S3_object_name":"code","script":"s.py","result_path":"res/1",
                "data_bucket":"d","data_prefix":"25MB","world_size":2}"#,
        )
        .unwrap();
        let req = PlanRequest {
            data: "s3://d/25MB".into(),
            results: "s3://b/res/1".into(),
            model: "m.safetensors".into(),
            payload: Some(payload),
            ..Default::default()
        };
        let plan = make_plan(&req, parts(&["4.pt", "1.pt", "2.pt", "3.pt"])).unwrap();
        assert_eq!(plan.partitions.len(), 3);
        assert_eq!(plan.ranks, vec![vec![0, 1], vec![2]]);
        assert_eq!(plan.batch_size, 64);
        let item = serde_json::to_value(&plan.items[0]).unwrap();
        for key in [
            "S3_BUCKET",
            "S3_OBJECT_NAME",
            "SCRIPT",
            "S3_OBJECT_TYPE",
            "WORLD_SIZE",
            "RANK",
            "DATA_BUCKET",
            "DATA_PREFIX",
            "DATA_PATH",
            "RESULT_PATH",
            "BATCH_SIZE",
        ] {
            assert!(item.get(key).is_some(), "missing {key}");
        }
        assert_eq!(
            item["DATA_PATH"],
            serde_json::json!(["25MB/1.pt", "25MB/2.pt"])
        );
        assert_eq!(plan.items[1].data_path, "25MB/3.pt");
        let back = Plan::from_json("plan.json", &serde_json::to_vec(&plan).unwrap()).unwrap();
        assert_eq!(back, plan);
        let pj = plan.payload_json();
        assert_eq!(pj["files"]["1"], "25MB/3.pt");
    }

    #[test]
    fn bindings_and_labels_come_from_flags_else_the_payload() {
        let payload = Payload::from_json(
            "p",
            br#"{"bind": {"images": "cube"}, "label": "kind", "extra": 1}"#,
        )
        .unwrap();
        let mut req = PlanRequest {
            payload: Some(payload),
            ..Default::default()
        };
        let plan = make_plan(&req, parts(&["1.pt"])).unwrap();
        assert_eq!(plan.binds, [("images".into(), "cube".into())]);
        assert_eq!(plan.label.as_deref(), Some("kind"));
        req.binds = vec![("images".into(), "x".into())];
        req.label = Some("y".into());
        let plan = make_plan(&req, parts(&["1.pt"])).unwrap();
        assert_eq!(plan.binds, [("images".into(), "x".into())]);
        assert_eq!(plan.label.as_deref(), Some("y"));
        let bad = Payload::from_json("p", br#"{"bind": ["images=cube"]}"#).unwrap_err();
        assert!(bad.to_string().contains("bind"), "{bad}");
    }

    #[test]
    fn more_ranks_than_files_get_none() {
        let req = PlanRequest {
            world_size: Some(4),
            ..Default::default()
        };
        let plan = make_plan(&req, parts(&["1.pt", "2.pt"])).unwrap();
        assert_eq!(plan.ranks, vec![vec![0], vec![1], vec![], vec![]]);
        assert!(plan.warnings.iter().any(|w| w.contains("get none")));
    }

    #[test]
    fn empty_data_is_an_error() {
        assert!(make_plan(&PlanRequest::default(), vec![]).is_err());
    }
}
