//! GEMM throughput of the active kernel tier on the ViT's shapes (single thread).
//!
//! `cargo run --release -p cai-model --example bench_gemm`
#![allow(clippy::print_stdout)]
use cai_model::kernels::{ops, Epilogue, PackedB};
use std::time::Instant;

fn main() {
    let o = ops();
    println!("tier {:?}", o.tier);
    for (m, k, n, epi, name) in [
        (120usize, 192usize, 16usize, Epilogue::PLAIN, "L1 panel"),
        (120, 192, 576, Epilogue::PLAIN, "L2 120 rows"),
        (260, 192, 576, Epilogue::PLAIN, "qkv"),
        (260, 192, 192, Epilogue::RESIDUAL, "proj"),
        (260, 192, 768, Epilogue::GELU, "fc1+gelu"),
        (260, 192, 768, Epilogue::PLAIN, "fc1"),
        (260, 768, 192, Epilogue::RESIDUAL, "fc2"),
        (65, 64, 65, Epilogue::PLAIN, "qk^T"),
        (65, 65, 64, Epilogue::PLAIN, "pv"),
        (64, 3216, 1024, Epilogue::RELU, "head"),
    ] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let b = PackedB::pack_nk(&w, n, k, k, Some(&vec![0.1; n]));
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let reps = ((2e9 / flops) as usize).max(1);
        let t = Instant::now();
        for _ in 0..reps {
            o.gemm(m, &a, k, &b, &mut c, n, epi);
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "{name:10} m{m} k{k} n{n}: {:.1} GFLOP/s",
            flops * reps as f64 / s / 1e9
        );
    }
}
