//! `write_tensor_dataset`: round trips through our reader, and through real PyTorch when
//! `CAI_PARITY_PYTHON` names a Python that has torch (see scripts/parity/setup_venv.sh).

use cai_torch::{is_torch_zip, read_tensor_dataset, write_tensor_dataset, DType, TorchTensor};
use proptest::prelude::*;

fn galaxies(n: usize) -> Vec<TorchTensor> {
    let img: Vec<f32> = (0..n * 5 * 32 * 32)
        .map(|i| (i % 977) as f32 * 0.25 - 7.0)
        .collect();
    let mag: Vec<f64> = (0..n * 5).map(|i| 15.0 + i as f64 / 7.0).collect();
    let z: Vec<f32> = (0..n).map(|i| i as f32 / 100.0).collect();
    vec![
        TorchTensor::from_f32(vec![n, 5, 32, 32], &img).unwrap(),
        TorchTensor::from_f64(vec![n, 5], &mag).unwrap(),
        TorchTensor::from_f32(vec![n], &z).unwrap(),
    ]
}

#[test]
fn round_trip_partition() {
    let ts = galaxies(3);
    let bytes = write_tensor_dataset(&ts).unwrap();
    assert!(is_torch_zip(&bytes));
    assert_eq!(read_tensor_dataset("1.pt", &bytes).unwrap(), ts);
    // Not a checkpoint, and nothing else is a torch zip.
    assert!(cai_torch::read_checkpoint("1.pt", &bytes).is_err());
    assert!(!is_torch_zip(b"PK\x03\x04 but not really"));
    assert!(!is_torch_zip(b""));
}

#[test]
fn data_entries_are_64_byte_aligned_and_stored() {
    let bytes = write_tensor_dataset(&galaxies(2)).unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
    let names: Vec<String> = z.file_names().map(|n| n.unwrap().to_string()).collect();
    assert!(names.contains(&"archive/data.pkl".to_string()));
    assert!(names.contains(&"archive/version".to_string()));
    for i in 0..3 {
        let f = z.by_name(&format!("archive/data/{i}")).unwrap();
        assert_eq!(f.compression(), zip::CompressionMethod::Stored);
        assert_eq!(f.data_start().unwrap() % 64, 0, "data/{i}");
    }
}

#[test]
fn mismatched_data_length_is_refused() {
    let t = TorchTensor {
        dtype: DType::F32,
        shape: vec![2, 2],
        data: vec![0; 15],
    };
    assert!(matches!(
        write_tensor_dataset(&[t]),
        Err(cai_torch::Error::InvalidTensor { .. })
    ));
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F64),
        Just(DType::F16),
        Just(DType::BF16),
        Just(DType::I64),
        Just(DType::I32),
        Just(DType::I16),
        Just(DType::I8),
        Just(DType::U8),
        Just(DType::Bool),
    ]
}

fn tensor() -> impl Strategy<Value = TorchTensor> {
    (dtype(), prop::collection::vec(0usize..5, 0..4)).prop_flat_map(|(dtype, shape)| {
        let n = shape.iter().product::<usize>() * dtype.size();
        prop::collection::vec(any::<u8>(), n).prop_map(move |data| TorchTensor {
            dtype,
            shape: shape.clone(),
            data,
        })
    })
}

proptest! {
    #[test]
    fn any_tensors_round_trip(ts in prop::collection::vec(tensor(), 0..5)) {
        let bytes = write_tensor_dataset(&ts).unwrap();
        prop_assert_eq!(read_tensor_dataset("p.pt", &bytes).unwrap(), ts);
    }
}

/// Real PyTorch reads what we write, and we read what it writes.
#[test]
fn torch_load_reads_our_partitions() {
    let Some(python) = std::env::var_os("CAI_PARITY_PYTHON") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI is set but CAI_PARITY_PYTHON is not (.ci/run sets up the parity venv)"
        );
        eprintln!("skipped: set CAI_PARITY_PYTHON to a python with torch");
        return;
    };
    let dir = std::env::temp_dir().join(format!("cai-torch-writer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ts = galaxies(4);
    let ours = dir.join("ours.pt");
    std::fs::write(&ours, write_tensor_dataset(&ts).unwrap()).unwrap();
    let theirs = dir.join("theirs.pt");
    let script = r#"
import sys, torch
from torch.utils.data import TensorDataset
ds = torch.load(sys.argv[1], weights_only=False)
assert type(ds) is TensorDataset, type(ds)
img, mag, z = ds.tensors
assert img.dtype == torch.float32 and tuple(img.shape) == (4, 5, 32, 32)
assert mag.dtype == torch.float64 and tuple(mag.shape) == (4, 5)
assert img.is_contiguous()
print(float(img.double().sum()), float(mag.sum()), float(z.double().sum()))
# Write one back: a non-contiguous view, f16, i64, bool, a 0-d tensor.
x = torch.arange(8, dtype=torch.float32).reshape(4, 2).t()
torch.save(TensorDataset(x, torch.tensor([1.5, -2.0], dtype=torch.float16),
                         torch.tensor([[7, -8], [9, 10]]), torch.tensor([True, False])), sys.argv[2])
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&ours)
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sums: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let want: Vec<f64> = ts
        .iter()
        .map(|t| t.to_f64().unwrap().iter().sum())
        .collect();
    for (g, w) in sums.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
    }
    let back = read_tensor_dataset("theirs.pt", &std::fs::read(&theirs).unwrap()).unwrap();
    assert_eq!(back[0].shape, vec![2, 4]);
    assert_eq!(
        back[0].to_f32().unwrap(),
        vec![0., 2., 4., 6., 1., 3., 5., 7.]
    );
    assert_eq!(back[1].to_f32().unwrap(), vec![1.5, -2.0]);
    assert_eq!(
        (back[2].dtype, back[2].shape.clone()),
        (DType::I64, vec![2, 2])
    );
    assert_eq!(back[3].to_f32().unwrap(), vec![1.0, 0.0]);
    std::fs::remove_dir_all(&dir).unwrap();
}
