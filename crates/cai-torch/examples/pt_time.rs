//! Times reading a `.pt` file: `cargo run --release -p cai-torch --example pt_time -- FILE`.

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: pt_time FILE.pt");
        std::process::exit(2);
    };
    let t0 = std::time::Instant::now();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            std::process::exit(2);
        }
    };
    let t1 = std::time::Instant::now();
    let (what, n) = match cai_torch::read_tensor_dataset(&path, &bytes) {
        Ok(ts) => (
            "tensor dataset",
            ts.iter().map(|t| t.data.len()).sum::<usize>(),
        ),
        Err(_) => match cai_torch::read_checkpoint(&path, &bytes) {
            Ok(c) => (
                "checkpoint",
                c.tensors.iter().map(|(_, t)| t.data.len()).sum(),
            ),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        },
    };
    let t2 = std::time::Instant::now();
    println!(
        "{path}: {what}, {:.1} MB of tensors; file read {:.1} ms, parse+materialise {:.1} ms ({:.2} GB/s)",
        n as f64 / 1e6,
        (t1 - t0).as_secs_f64() * 1e3,
        (t2 - t1).as_secs_f64() * 1e3,
        n as f64 / (t2 - t1).as_secs_f64() / 1e9
    );
}
