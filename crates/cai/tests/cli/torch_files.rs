//! The original's files through the CLI: `.pt` partitions (written by `cai partition
//! --format pt`, read by `predict` and `run`), model files of every form, and hostile
//! `.pt` files (the cai-torch corpus), which must be a named error with exit code 2.

use std::path::PathBuf;

use crate::util::{fixtures, manifest_dir, Dir};

fn hostile_dir() -> PathBuf {
    manifest_dir().join("../cai-torch/tests/hostile")
}

fn hostile_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(hostile_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pt"))
        .collect();
    v.sort();
    assert!(v.len() >= 50, "hostile corpus not found");
    v
}

/// Exit code 2, the file's name in stderr, no panic.
fn assert_named_error(out: &std::process::Output, file: &std::path::Path, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = file.file_name().unwrap().to_string_lossy();
    assert_eq!(out.status.code(), Some(2), "{what} {name}: {stderr}");
    assert!(stderr.contains(&*name), "{what} {name}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what} {name}: {stderr}");
}

#[test]
fn hostile_model_files_are_named_errors() {
    let d = Dir::new();
    for f in hostile_files() {
        let s = f.display().to_string();
        assert_named_error(&d.cai(&["model", "inspect", &s]), &f, "model inspect");
        let out = d.s("x.safetensors");
        assert_named_error(
            &d.cai(&["model", "convert", &s, "--out", &out]),
            &f,
            "model convert",
        );
        assert!(!d.path("x.safetensors").exists());
    }
}

#[test]
fn hostile_partitions_are_named_errors() {
    let d = Dir::new();
    let model = fixtures().model.display().to_string();
    // Every file as a partition and as a dataset to partition; predict loads the model
    // first, so it runs on a sample of the corpus to keep the test short.
    for (i, f) in hostile_files().iter().enumerate() {
        let s = f.display().to_string();
        let parts = d.s(&format!("parts{i}"));
        assert_named_error(
            &d.cai(&[
                "partition",
                "--input",
                &s,
                "--out",
                &parts,
                "--format",
                "pt",
            ]),
            f,
            "partition",
        );
        if i % 5 == 0 {
            let csv = d.s("p.csv");
            assert_named_error(
                &d.cai(&["predict", "--model", &model, "--input", &s, "--out", &csv]),
                f,
                "predict",
            );
        }
    }
}

fn z_pred(csv: &str) -> Vec<f32> {
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn pt_partitions_work_like_native_ones() {
    let d = Dir::new();
    let f = fixtures();
    let (model, data) = (
        f.model.display().to_string(),
        f.dataset.display().to_string(),
    );
    d.ok(&[
        "partition",
        "--input",
        &data,
        "--size",
        "200KB",
        "--out",
        "pt",
        "--format",
        "pt",
    ]);
    d.ok(&[
        "partition",
        "--input",
        &data,
        "--size",
        "200KB",
        "--out",
        "native",
    ]);
    assert!(d.path("pt/1.pt").exists() && d.path("pt/manifest.json").exists());
    let n_pt = std::fs::read_dir(d.path("pt")).unwrap().count();
    let n_native = std::fs::read_dir(d.path("native")).unwrap().count();
    assert_eq!(n_pt, n_native);
    // Re-partitioning the .pt partition as a whole dataset gives the same galaxies.
    d.ok(&[
        "partition",
        "--input",
        &d.s("pt/2.pt"),
        "--size",
        "1MB",
        "--out",
        "again",
        "--format",
        "pt",
    ]);
    assert_eq!(
        std::fs::read(d.path("again/1.pt")).unwrap(),
        std::fs::read(d.path("pt/2.pt")).unwrap()
    );
    d.ok(&[
        "predict",
        "--model",
        &model,
        "--input",
        &d.s("pt/2.pt"),
        "--out",
        "a.csv",
    ]);
    d.ok(&[
        "predict",
        "--model",
        &model,
        "--input",
        &d.s("native/00002.safetensors"),
        "--out",
        "b.csv",
    ]);
    let a = std::fs::read_to_string(d.path("a.csv")).unwrap();
    let b = std::fs::read_to_string(d.path("b.csv")).unwrap();
    assert_eq!(z_pred(&a), z_pred(&b));
    assert!(!z_pred(&a).is_empty());
    // A prefix of 1.pt … N.pt with no manifest, as the original's splitter leaves it.
    std::fs::remove_file(d.path("pt/manifest.json")).unwrap();
    let out = d.ok(&[
        "run",
        "--data",
        &d.s("pt"),
        "--results",
        &d.s("res"),
        "--model",
        &model,
        "--file-limit",
        "2",
        "--batch-size",
        "16",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["ranks_done"], 2, "{out}");
    assert_eq!(summary["failed"].as_array().unwrap().len(), 0, "{out}");
    // The model in the original's form, converted and inspected.
    d.ok(&["model", "convert", &model, "--out", "m2.safetensors"]);
    let js = d.ok(&["model", "inspect", "--json", &d.s("m2.safetensors")]);
    let info: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(info["depth"], 12);
    assert_eq!(info["patch"], 4);
    assert_eq!(info["heads"], 3);
    assert_eq!(info["parameters"], 15_764_649);
}

/// With `CAI_PARITY_DIR` (scripts/parity/make_fixtures.py output): `cai predict` on the
/// original-structure checkpoints and the f64-magnitude `1.pt` gives PyTorch's numbers.
#[test]
fn parity_predict_csv_matches_pytorch() {
    let Some(dir) = std::env::var_os("CAI_PARITY_DIR").map(PathBuf::from) else {
        crate::util::unavailable(
            "the PyTorch parity test",
            "CAI_PARITY_DIR (scripts/parity/make_fixtures.py)",
        );
        return;
    };
    let exp = cai_torch::read_checkpoint(
        "expected.pt",
        &std::fs::read(dir.join("expected.pt")).unwrap(),
    )
    .unwrap();
    let expected = exp.get("output").unwrap().to_f32().unwrap();
    let d = Dir::new();
    let input = dir.join("1.pt").display().to_string();
    for m in [
        "model_dp.pt",
        "model_dp_cuda_tagged.pt",
        "state_dict.pt",
        "state_dict_module_prefix.pt",
    ] {
        let model = dir.join(m).display().to_string();
        d.ok(&[
            "predict", "--model", &model, "--input", &input, "--out", "p.csv",
        ]);
        let got = z_pred(&std::fs::read_to_string(d.path("p.csv")).unwrap());
        let delta = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .fold(0.0, f64::max);
        println!("cai predict --model {m} --input 1.pt (f64 magnitudes): max |Δ| {delta:.3e}");
        assert_eq!(got.len(), expected.len());
        assert!(delta <= 1e-4, "{m}: {delta:e}");
    }
}

/// `{"epoch": 3, key: {prefix + name: tensor}, "optimizer_state_dict": {"state": {},
/// "param_groups": []}}` as `torch.save` pickles a training loop's checkpoint (protocol 2,
/// stored entries), from the weights of a safetensors model.
fn wrapped_checkpoint(weights: &cai_model::Weights, key: &str, prefix: &str) -> Vec<u8> {
    use std::io::Write;
    let s = |p: &mut Vec<u8>, t: &str| {
        p.push(b'X');
        p.extend((t.len() as u32).to_le_bytes());
        p.extend(t.as_bytes());
    };
    let int = |p: &mut Vec<u8>, v: usize| {
        p.push(b'J');
        p.extend((v as u32).to_le_bytes());
    };
    let mut p = vec![0x80, 2, b'}', b'('];
    s(&mut p, "epoch");
    int(&mut p, 3);
    s(&mut p, key);
    p.extend(b"ccollections\nOrderedDict\n)R(");
    let mut storages: Vec<Vec<u8>> = Vec::new();
    for (k, t) in weights.iter() {
        s(&mut p, &format!("{prefix}{k}"));
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        s(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        s(&mut p, &storages.len().to_string());
        s(&mut p, "cpu");
        int(&mut p, t.data.len());
        p.extend(b"tQ");
        int(&mut p, 0);
        p.push(b'(');
        for &d in &t.shape {
            int(&mut p, d);
        }
        p.extend(b"t(");
        let mut stride = vec![1usize; t.shape.len()];
        for i in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * t.shape[i + 1];
        }
        for d in stride {
            int(&mut p, d);
        }
        p.extend(b"t\x89ccollections\nOrderedDict\n)RtR");
        storages.push(t.data.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    p.push(b'u');
    s(&mut p, "optimizer_state_dict");
    p.extend(b"}(");
    s(&mut p, "state");
    p.push(b'}');
    s(&mut p, "param_groups");
    p.extend(b"]uu.");
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    let mut put = |name: String, b: &[u8]| {
        z.start_file(name, o).unwrap();
        z.write_all(b).unwrap();
    };
    put("ckpt/data.pkl".into(), &p);
    put("ckpt/byteorder".into(), b"little");
    for (i, b) in storages.iter().enumerate() {
        put(format!("ckpt/data/{i}"), b);
    }
    put("ckpt/version".into(), b"3\n");
    z.finish().unwrap().into_inner()
}

/// A training loop's and a Lightning checkpoint load, and `cai model inspect` names the
/// key the model came from.
#[test]
fn wrapped_checkpoints_load_and_inspect_names_the_key() {
    let d = Dir::new();
    let st = std::fs::read(&fixtures().model).unwrap();
    let weights = cai_model::Weights::from_safetensors("model.safetensors", &st).unwrap();
    for (file, key, prefix) in [
        ("train.pt", "model_state_dict", ""),
        ("lightning.pt", "state_dict", "model."),
    ] {
        std::fs::write(d.path(file), wrapped_checkpoint(&weights, key, prefix)).unwrap();
        let js = d.ok(&["model", "inspect", "--json", &d.s(file)]);
        let info: serde_json::Value = serde_json::from_str(&js).unwrap();
        let form = info["form"].as_str().unwrap();
        assert!(
            form.contains(&format!("under key `{key}`")),
            "{file}: {form}"
        );
        assert_eq!(
            form.contains("`model.` removed"),
            !prefix.is_empty(),
            "{form}"
        );
        assert_eq!(info["parameters"], 15_764_649, "{file}");
        let text = d.ok(&["model", "inspect", &d.s(file)]);
        assert!(text.contains(&format!("`{key}`")), "{text}");
    }
}

/// Real torch.save outputs whose stems are 15–27 characters long open (the zip layer);
/// they hold `{"w": 4 floats}`, so the model load then names the missing AstroMAE key.
#[test]
fn torch_files_of_every_stem_length_open() {
    let d = Dir::new();
    for n in 15..=27 {
        let dir = manifest_dir().join(format!("../cai-torch/tests/torch_files/stem_{n}"));
        let f = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        // Storage locations refuse `..` segments.
        let f = f.canonicalize().unwrap();
        let out = d.cai(&["model", "inspect", &f.display().to_string()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(!stderr.contains("zip archive"), "stem of {n}: {stderr}");
        assert!(stderr.contains("patch_embed"), "stem of {n}: {stderr}");
    }
}
