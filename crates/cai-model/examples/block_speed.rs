//! The ViT's transformer blocks alone (about 95% of AstroMAE's FLOPs) on one thread, in
//! GFLOP per CPU-second, for each precision: `cargo run --release -p cai-model --example
//! block_speed [seconds] [f32,bf16,int8]`. Timed by the thread's CPU clock,
//! so other load on the machine counts less; rounds alternate between precisions so drift
//! in the machine's speed hits each alike. `cai bench` prints the same figure beside the
//! measured FMA peak.

use cai_model::kernels::Precision;
use cai_model::{init, AstroMae, Config};

fn cpu_seconds() -> f64 {
    cai_model::clock::thread_cpu_seconds().unwrap_or(0.0)
}

fn main() -> Result<(), cai_model::Error> {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let wanted: Vec<Precision> = match std::env::args().nth(2) {
        Some(list) => list.split(',').filter_map(Precision::parse).collect(),
        None => Precision::ALL.to_vec(),
    };
    let w = init::astromae_weights(0, &Config::astromae());
    let f32_model = AstroMae::load(&w, "seeded")?;
    let mut models = Vec::new();
    for p in wanted {
        let mut m = f32_model.clone();
        m.set_precision(p)?;
        m.time_vit_blocks(1, &cpu_seconds);
        models.push((p, m, 0.0f64, 0u64));
    }
    let rounds = 5;
    for _ in 0..rounds {
        for (_, m, secs, flops) in models.iter_mut() {
            let mut reps = 1;
            loop {
                let (s, f) = m.time_vit_blocks(reps, &cpu_seconds);
                if s >= seconds / rounds as f64 {
                    *secs += s;
                    *flops += f;
                    break;
                }
                reps *= 2;
            }
        }
    }
    for (p, m, secs, flops) in &models {
        let b = m.measure_vit_blocks(seconds / rounds as f64);
        println!(
            "{:>5}: {:6.1} GFLOP per CPU-s in the ViT blocks; {:.1}% of the FMA probe in alternating rounds",
            p.name(),
            *flops as f64 / secs / 1e9,
            100.0 * b.peak_share()
        );
    }
    Ok(())
}
