//! GEMM throughput of each precision on the ViT block shapes (65 tokens x 4 galaxies):
//! `cargo run --release -p cai-model --example gemm_speed` (`GEMM_M=66` for another row count). Prints GFLOP/s (2 per
//! multiply-add) per shape over repeated calls on one thread, timed by the thread's CPU
//! clock (`cai_model::clock`, so other load on the machine does not count).

fn cpu_seconds() -> f64 {
    cai_model::clock::thread_cpu_seconds().unwrap_or(0.0)
}

use cai_model::kernels::{ops, Epilogue, PackedB};

fn main() {
    let ops = ops();
    let m: usize = std::env::var("GEMM_M")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(260);
    for (name, k, n, epi) in [
        ("qkv", 192, 576, Epilogue::PLAIN),
        ("proj", 192, 192, Epilogue::RESIDUAL),
        ("fc1", 192, 768, Epilogue::GELU),
        ("fc1-plain", 192, 768, Epilogue::PLAIN),
        ("fc2", 768, 192, Epilogue::RESIDUAL),
    ] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729) % 997) as f32 * 1e-3 - 0.5)
            .collect();
        let bias = vec![0.1f32; n];
        let f = PackedB::pack_nk(&w, n, k, k, Some(&bias));
        let mut q = f.clone();
        q.quantize_int8();
        let mut q16 = f.clone();
        q16.quantize_int16();
        let mut h = f.clone();
        h.round_bf16();
        let mut c = vec![0.0f32; m * n];
        let mut line = format!("{name:>10} m{m} k{k} n{n}:");
        for (label, b) in [("f32", &f), ("bf16", &h), ("int8", &q), ("int16", &q16)] {
            let mut reps = 0u64;
            let t = cpu_seconds();
            while cpu_seconds() - t < 0.5 {
                ops.gemm(m, &a, k, b, &mut c, n, epi);
                reps += 1;
            }
            let gf = (2 * m * k * n) as f64 * reps as f64 / (cpu_seconds() - t) / 1e9;
            line += &format!(" {label} {gf:6.1} GFLOP/s");
        }
        println!("{line}");
    }
}
