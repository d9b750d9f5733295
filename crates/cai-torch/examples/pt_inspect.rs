//! Prints what cai-torch reads from any `.pt` file (a checkpoint of any model, or a
//! `TensorDataset`), tensor by tensor, and how long reading and decoding took:
//! `cargo run --release -p cai-torch --example pt_inspect -- FILE`.
//!
//! `cai model inspect` describes AstroMAE checkpoints; this lists any checkpoint's or
//! dataset's tensors. `cargo test` runs it on a small dataset it writes.

use std::process::ExitCode;
use std::time::Instant;

/// What a `.pt` file holds, one line per fact, and the bytes of tensor data decoded.
fn describe(path: &str, bytes: &[u8]) -> Result<(String, usize), String> {
    let mut out = String::new();
    match cai_torch::read_checkpoint(path, bytes) {
        Ok(c) => {
            out.push_str(&format!("form: {:?}\n", c.form));
            out.push_str(&format!("classes: {:?}\n", c.classes));
            out.push_str(&format!("locations: {:?}\n", c.locations));
            for (k, t) in &c.tensors {
                out.push_str(&format!("{k}: {:?} {:?}\n", t.dtype, t.shape));
            }
            let n = c.tensors.iter().map(|(_, t)| t.data.len()).sum();
            return Ok((out, n));
        }
        Err(e) => out.push_str(&format!("not a checkpoint: {e}\n")),
    }
    let ts = cai_torch::read_tensor_dataset(path, bytes).map_err(|e| e.to_string())?;
    for (i, t) in ts.iter().enumerate() {
        out.push_str(&format!("tensors[{i}]: {:?} {:?}\n", t.dtype, t.shape));
    }
    Ok((out, ts.iter().map(|t| t.data.len()).sum()))
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: pt_inspect FILE.pt");
        return ExitCode::from(2);
    };
    let t0 = Instant::now();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let t1 = Instant::now();
    match describe(&path, &bytes) {
        Ok((text, n)) => {
            let t2 = Instant::now();
            print!("{text}");
            eprintln!(
                "{path}: {:.1} MB of tensors; file read {:.1} ms, parse+materialise {:.1} ms ({:.2} GB/s)",
                n as f64 / 1e6,
                (t1 - t0).as_secs_f64() * 1e3,
                (t2 - t1).as_secs_f64() * 1e3,
                n as f64 / (t2 - t1).as_secs_f64() / 1e9
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use cai_torch::TorchTensor;

    #[test]
    fn a_written_dataset_is_listed_tensor_by_tensor() {
        let images = TorchTensor::from_f32(vec![2, 5, 4, 4], &[0.5; 160]).unwrap();
        let z = TorchTensor::from_f32(vec![2], &[0.1, 0.2]).unwrap();
        let bytes = cai_torch::write_tensor_dataset(&[images, z]).unwrap();
        let (text, n) = super::describe("t.pt", &bytes).unwrap();
        assert!(text.contains("not a checkpoint"), "{text}");
        assert!(text.contains("tensors[0]: F32 [2, 5, 4, 4]"), "{text}");
        assert!(text.contains("tensors[1]: F32 [2]"), "{text}");
        assert_eq!(n, 162 * 4);
        assert!(super::describe("x.pt", b"not a zip").is_err());
    }
}
