//! Integration tests of cai-data: robustness of the readers against
//! arbitrary bytes, and the whole synth → dataset → partitions path.
#![allow(clippy::unwrap_used)] // integration tests may unwrap (clippy.toml covers #[test] fns only)

mod robustness {
    use cai_data::{generate, read_partition, write_partition, DatasetReader, SynthConfig};
    use proptest::prelude::*;

    fn valid_file() -> Vec<u8> {
        let cfg = SynthConfig {
            galaxies: 3,
            seed: 1,
            size: 8,
        };
        write_partition(&generate(&cfg, 0, 3)).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_partition("random", &bytes);
        }

        #[test]
        fn random_bytes_with_plausible_prefix_never_panic(
            len in 0u64..400,
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend_from_slice(&body);
            let _ = read_partition("prefixed", &bytes);
        }

        #[test]
        fn truncated_files_fail_cleanly(cut in 0usize..100_000) {
            let good = valid_file();
            let cut = cut % good.len();
            let e = read_partition("cut.safetensors", &good[..cut]).unwrap_err();
            prop_assert!(e.to_string().contains("cut.safetensors"));
        }

        #[test]
        fn bit_flips_never_panic(flips in proptest::collection::vec((0usize..100_000, 0u8..8), 1..6)) {
            let mut bytes = valid_file();
            let len = bytes.len();
            // Bias half of the flips into the header, where they matter most.
            for (k, (pos, bit)) in flips.into_iter().enumerate() {
                let hl = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()).min(600) as usize;
                let at = if k % 2 == 0 { pos % hl.min(len) } else { pos % len };
                bytes[at] ^= 1 << bit;
            }
            if let Ok(p) = read_partition("flipped", &bytes) {
                prop_assert!(p.validate().is_ok());
            }
        }

        #[test]
        fn header_json_mutations_never_panic(
            n in 0usize..5,
            shape in proptest::collection::vec(0usize..40, 0..6),
            start in 0usize..5000,
            len in 0usize..5000,
            dtype in prop_oneof![Just("F32"), Just("F64"), Just("I64"), Just("I32"), Just("U8"), Just("BF16"), Just("X")],
        ) {
            let shape = format!("{shape:?}");
            let json = format!(
                r#"{{"images":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{start},{}]}},"magnitudes":{{"dtype":"F32","shape":[{n},5],"data_offsets":[0,{}]}}}}"#,
                start + len,
                n * 20
            );
            let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(json.as_bytes());
            bytes.resize(bytes.len() + 2000, 0);
            if let Ok(p) = read_partition("mut", &bytes) {
                prop_assert!(p.validate().is_ok());
            }
        }
    }

    #[test]
    fn corrupted_files_fail_in_the_streaming_reader_too() {
        let dir = tempfile::tempdir().unwrap();
        let good = valid_file();
        for (k, bytes) in [
            good[..good.len() / 2].to_vec(),
            {
                let mut b = good.clone();
                b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                b
            },
            {
                let mut b = good.clone();
                b[8] = b'[';
                b
            },
            Vec::new(),
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.path().join(format!("bad{k}.safetensors"));
            std::fs::write(&path, &bytes).unwrap();
            let e = DatasetReader::open(&path).unwrap_err().to_string();
            assert!(e.contains(&format!("bad{k}.safetensors")), "{e}");
        }
    }
}

mod pipeline {
    use cai_data::{
        generate, partition_dataset, read_partition, write_dataset, DatasetReader, Manifest,
        SynthConfig,
    };

    #[test]
    fn synth_dataset_partitions_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("synth.safetensors");
        let cfg = SynthConfig {
            galaxies: 50,
            seed: 42,
            size: 32,
        };
        write_dataset(&path, &cfg, &mut |_| {}).unwrap();
        let reader = DatasetReader::open(&path).unwrap();
        assert_eq!(reader.len(), 50);
        assert_eq!(reader.image_shape(), [5, 32, 32]);
        assert!(reader.has_redshift());
        // 16 galaxies per partition: 4 partitions (16, 16, 16, 2).
        let size = 16 * cai_data::partition::bytes_per_galaxy([5, 32, 32]);
        let out = dir.path().join("parts");
        std::fs::create_dir(&out).unwrap();
        let manifest = partition_dataset(&reader, size, |f| {
            std::fs::write(out.join(&f.key), &f.bytes).map_err(|e| cai_data::Error::Io {
                op: "write",
                path: out.join(&f.key),
                source: e,
            })
        })
        .unwrap();
        std::fs::write(out.join("manifest.json"), manifest.to_json()).unwrap();
        let m = Manifest::from_json(
            "manifest.json",
            &std::fs::read(out.join("manifest.json")).unwrap(),
        )
        .unwrap();
        let counts: Vec<u64> = m.partitions.iter().map(|e| e.galaxies).collect();
        assert_eq!(counts, [16, 16, 16, 2]);
        assert!(m.labelled);
        let whole = generate(&cfg, 0, 50);
        for e in &m.partitions {
            let bytes = std::fs::read(out.join(&e.key)).unwrap();
            e.verify(&bytes).unwrap();
            let p = read_partition(&e.key, &bytes).unwrap();
            assert_eq!(p, whole.slice(e.first_galaxy as usize, e.galaxies as usize));
        }
        let mut damaged = std::fs::read(out.join("00002.safetensors")).unwrap();
        damaged[1000] ^= 1;
        let err = m.partitions[1].verify(&damaged).unwrap_err().to_string();
        assert!(
            err.contains("00002.safetensors") && err.contains("sha256"),
            "{err}"
        );
    }
}

/// Files NumPy itself wrote (scripts/data/make_numpy_fixtures.py), read by
/// `read_tensors`: every array's dtype, shape and values as NumPy saw them.
mod numpy_files {
    use cai_data::{read_tensors, NamedTensor, TensorValues};
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/numpy")
    }

    fn expected(key: &str) -> (String, Vec<usize>, Vec<f64>) {
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir().join("values.json")).unwrap()).unwrap();
        let e = &doc[key];
        let shape = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let values = e["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        (e["dtype"].as_str().unwrap().to_string(), shape, values)
    }

    /// `t` holds NumPy's array `key` (f32 values compared as NumPy's cast to f32).
    fn check(t: &NamedTensor, n: usize, key: &str) {
        let (_, shape, want) = expected(key);
        assert_eq!(shape[0], n, "{key}");
        assert_eq!(t.shape, shape[1..], "{key}");
        match &t.values {
            TensorValues::F32(v) => {
                let want: Vec<f32> = want.iter().map(|&x| x as f32).collect();
                assert_eq!(v, &want, "{key}");
            }
            TensorValues::I64(v) => {
                let want: Vec<i64> = want.iter().map(|&x| x as i64).collect();
                assert_eq!(v, &want, "{key}");
            }
        }
    }

    #[test]
    fn npy_files_numpy_wrote_read_with_their_values() {
        for (file, dtype) in [
            ("flux.npy", "F32"),
            ("cube_fortran.npy", "F64"),
            ("flux_bigendian.npy", "F32"),
            ("half.npy", "F16"),
        ] {
            let bytes = std::fs::read(dir().join(file)).unwrap();
            let set = read_tensors(&format!("fixtures/{file}"), &bytes, None).unwrap();
            assert_eq!(set.tensors.len(), 1);
            let t = &set.tensors[0];
            assert_eq!(t.name, file.trim_end_matches(".npy"));
            assert_eq!(t.dtype.name(), dtype, "{file}");
            check(t, set.n, file);
        }
    }

    #[test]
    fn npz_archives_numpy_wrote_read_member_by_member() {
        let bytes = std::fs::read(dir().join("members.npz")).unwrap();
        let set = read_tensors("members.npz", &bytes, None).unwrap();
        assert_eq!(set.names(), ["flux", "ids", "mask"]);
        check(set.get("flux").unwrap(), 4, "flux.npy");
        check(set.get("ids").unwrap(), 4, "ids");
        check(set.get("mask").unwrap(), 4, "mask");
        assert_eq!(set.get("ids").unwrap().dtype.name(), "I64");
        assert_eq!(set.get("mask").unwrap().dtype.name(), "BOOL");
        let bytes = std::fs::read(dir().join("members_compressed.npz")).unwrap();
        let names = ["a".to_string(), "b".into(), "c".into()];
        let set = read_tensors("c.npz", &bytes, Some(&names)).unwrap();
        assert_eq!(set.names(), ["a", "b", "c"]);
        check(&set.tensors[0], 4, "flux.npy");
        check(&set.tensors[1], 4, "cube");
        check(&set.tensors[2], 4, "half.npy");
        // Cut and written back as native partitions, the values survive.
        let bytes = cai_data::write_tensors(&set).unwrap();
        let back = read_tensors("c.safetensors", &bytes, None).unwrap();
        assert_eq!(back.get("b").unwrap().values, set.tensors[1].values);
    }
}
