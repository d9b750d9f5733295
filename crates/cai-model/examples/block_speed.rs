//! The ViT's transformer blocks alone (about 95% of AstroMAE's FLOPs) on one thread, in
//! GFLOP per CPU-second, for each precision: `cargo run --release -p cai-model --example
//! block_speed [seconds] [f32,bf16,int8,int16]`. Each precision runs
//! [`AstroMae::measure_vit_blocks`]: the blocks in rounds alternating with the FMA probe,
//! timed by the thread's CPU clock, so the share of the probe compares like with like (the
//! figure `cai bench` prints). Also a steady target for `perf record`.

use cai_model::kernels::Precision;
use cai_model::{init, AstroMae, Config};

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
    for p in wanted {
        let mut m = f32_model.clone();
        m.set_precision(p)?;
        let b = m.measure_vit_blocks(seconds);
        println!(
            "{:>5}: {:6.1} GFLOP per CPU-s in the ViT blocks; {:.1}% of the FMA probe's {:.1} in the same {} alternating rounds",
            p.name(),
            b.block_gflops(),
            100.0 * b.peak_share(),
            b.probe_gflops(),
            b.rounds
        );
    }
    Ok(())
}
