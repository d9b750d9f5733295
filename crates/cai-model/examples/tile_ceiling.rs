//! How close the f32 GEMM comes to the FMA probe: one 16-column weight panel (in L1 at k 192)
//! over 44 strips of `A` (in L2), which is the register tile's loop with nothing else around
//! it, beside the ViT block's GEMMs at the sizes `vit.rs` runs them: first with one weight
//! matrix called again and again (it stays in L2), then taking 12 weight matrices of the same
//! shape in turn (5-7 MB, past L2), as the model's 12 blocks take theirs (21 MB of f32
//! weights), so each call finds its weights in L3 or memory.
//! `cargo run --release -p cai-model --example tile_ceiling [rounds]`
//!
//! Each round times the FMA probe, then every shape for 50 ms of the thread's CPU clock;
//! the shares compare sums over all rounds, so drift of the machine hits both sides alike.

use cai_model::kernels::{ops, Epilogue, PackedB};

fn cpu_seconds() -> f64 {
    cai_model::clock::thread_cpu_seconds().unwrap_or(0.0)
}

struct Case {
    what: &'static str,
    m: usize,
    a: Vec<f32>,
    /// Weight matrices of the same shape, used in turn.
    b: Vec<PackedB>,
    c: Vec<f32>,
    flops: f64,
    seconds: f64,
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(1);
    let ops = ops();
    let mut cases: Vec<Case> = [
        ("one panel", 264, 192, 16, 1),
        ("one panel, long k", 264, 768, 16, 1),
        // The ViT block's GEMMs as `vit.rs` calls them: qkv per galaxy (65 tokens), proj
        // over a chunk of 8 galaxies, the MLP per block of 66 rows.
        ("qkv, one galaxy", 65, 192, 576, 1),
        ("proj, one chunk", 520, 192, 192, 1),
        ("fc1, one MLP block", 66, 192, 768, 1),
        ("fc2, one MLP block", 66, 768, 192, 1),
        ("qkv, 12 weights", 65, 192, 576, 12),
        ("proj, 12 weights", 520, 192, 192, 12),
        ("fc1, 12 weights", 66, 192, 768, 12),
        ("fc2, 12 weights", 66, 768, 192, 12),
    ]
    .into_iter()
    .map(|(what, m, k, n, sets)| {
        let a = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let b = (0..sets)
            .map(|s| {
                let w: Vec<f32> = (0..n * k)
                    .map(|i| (((i + s) * 104729) % 997) as f32 * 1e-3 - 0.5)
                    .collect();
                PackedB::pack_nk(&w, n, k, k, Some(&vec![0.1; n]))
            })
            .collect();
        Case {
            what,
            m,
            a,
            b,
            c: vec![0.0; m * n],
            flops: 0.0,
            seconds: 0.0,
        }
    })
    .collect();
    let (mut probe_flops, mut probe_seconds) = (0.0f64, 0.0f64);
    for _ in 0..rounds {
        let t = cpu_seconds();
        let (_, f) = ops.fma_probe(2_000_000);
        probe_seconds += cpu_seconds() - t;
        probe_flops += f as f64;
        for case in &mut cases {
            let (k, n) = (case.b[0].k(), case.b[0].n());
            let t = cpu_seconds();
            while cpu_seconds() - t < 0.05 {
                for b in case.b.iter().cycle().take(12) {
                    ops.gemm(case.m, &case.a, k, b, &mut case.c, n, Epilogue::PLAIN);
                }
                case.flops += 12.0 * (2 * case.m * k * n) as f64;
            }
            case.seconds += cpu_seconds() - t;
        }
    }
    let probe = probe_flops / probe_seconds / 1e9;
    println!(
        "FMA probe {probe:.1} GFLOP/s ({:?} kernels, {rounds} alternating rounds)",
        ops.tier
    );
    for case in &cases {
        let g = case.flops / case.seconds / 1e9;
        println!(
            "{:>24}  m{:<5} k{:<4} n{:<4} {g:6.1} GFLOP/s = {:5.1}% of the probe",
            case.what,
            case.m,
            case.b[0].k(),
            case.b[0].n(),
            100.0 * g / probe
        );
    }
}
