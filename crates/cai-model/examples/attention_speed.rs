//! One attention head of AstroMAE's shape (65 tokens, 64 values per head, rows of a fused
//! 576-wide qkv) in f32 ([`Ops::attention`]), with bf16 products
//! ([`Ops::attention_bf16`]) and with int16 ones ([`Ops::attention_int16`]), interleaved rounds on one thread timed by its CPU clock:
//! microseconds per head, best of the rounds.
//! `cargo run --release -p cai-model --example attention_speed [rounds]`
#![allow(clippy::print_stdout)]

use cai_model::kernels::{ops, AttentionScratch, HeadQkv, Ops};

fn cpu_seconds() -> f64 {
    cai_model::clock::thread_cpu_seconds().unwrap_or(0.0)
}

type Run = fn(&Ops, &HeadQkv<'_>, f32, &mut [f32], usize, &mut AttentionScratch);

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let ops = ops();
    let (t, hd, d) = (65, 64, 192);
    let ld = 3 * d;
    let qkv: Vec<f32> = (0..t * ld)
        .map(|i| ((i * 7919) % 1000) as f32 * 2e-3 - 1.0)
        .collect();
    let head = HeadQkv {
        t,
        hd,
        ld,
        q: &qkv,
        k: &qkv[d..],
        v: &qkv[2 * d..],
    };
    let mut out = vec![0.0f32; t * d];
    let mut ws = AttentionScratch::default();
    let kinds: [(&str, Run); 3] = [
        ("f32", |o, h, s, out, ldo, ws| {
            o.attention(h, s, out, ldo, ws)
        }),
        ("bf16", |o, h, s, out, ldo, ws| {
            o.attention_bf16(h, s, out, ldo, ws)
        }),
        ("int16", |o, h, s, out, ldo, ws| {
            o.attention_int16(h, s, out, ldo, ws)
        }),
    ];
    println!(
        "tier {:?}, bf16 attention kernel: {}, int16 attention kernel: {}",
        ops.tier,
        ops.has_bf16_attention(),
        ops.has_int16_attention()
    );
    let mut best = [f64::INFINITY; 3];
    for _ in 0..rounds {
        for (i, (_, run)) in kinds.iter().enumerate() {
            let (t0, mut n) = (cpu_seconds(), 0u32);
            while cpu_seconds() - t0 < 0.2 {
                for _ in 0..100 {
                    run(ops, &head, 0.125, &mut out, d, &mut ws);
                }
                n += 100;
            }
            best[i] = best[i].min((cpu_seconds() - t0) / f64::from(n) * 1e6);
        }
    }
    for ((name, _), us) in kinds.iter().zip(best) {
        println!("{name:>5}: {us:.2} us per head (best of {rounds})");
    }
    println!(
        "bf16 / f32 time: {:.3}, int16 / f32 time: {:.3}",
        best[1] / best[0],
        best[2] / best[0]
    );
}
