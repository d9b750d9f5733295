//! Measures `write_dataset` speed and the partitioner on a synthetic set.
//!
//! `cargo run --release -p cai-data --example synth_speed -- [galaxies] [dir]`
//! (default 2,000 galaxies in a temporary directory; the report used 20,000).

use std::time::Instant;

use cai_data::{parse_size, partition_dataset, write_dataset, DatasetReader, SynthConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let galaxies: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2_000);
    let tmp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("synth.safetensors");
    let cfg = SynthConfig {
        galaxies,
        seed: 2026,
        size: 32,
    };

    let cpu0 = cpu_seconds();
    let t = Instant::now();
    write_dataset(&path, &cfg, &mut |_| {})?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let bytes = std::fs::metadata(&path)?.len();
    eprintln!(
        "write_dataset: {galaxies} galaxies in {secs:.2} s = {:.0} galaxies/s ({} threads); {cpu:.2} CPU-s = {:.0} galaxies per CPU-s; file {bytes} bytes = {:.1} bytes/galaxy",
        galaxies as f64 / secs,
        rayon::current_num_threads(),
        galaxies as f64 / cpu,
        bytes as f64 / galaxies as f64
    );

    let reader = DatasetReader::open(&path)?;
    let size = parse_size("25MB")?;
    let t = Instant::now();
    let mut total = 0u64;
    let manifest = partition_dataset(&reader, size, |f| {
        total += f.bytes.len() as u64;
        Ok(())
    })?;
    eprintln!(
        "partition_dataset 25MB: {} partitions ({} galaxies each) in {:.2} s ({:.0} MB/s, in memory)",
        manifest.partitions.len(),
        manifest.partitions.first().map_or(0, |e| e.galaxies),
        t.elapsed().as_secs_f64(),
        total as f64 / 1e6 / t.elapsed().as_secs_f64()
    );

    // A few sanity statistics of what was generated.
    let p = reader.read_range(0, galaxies.min(5_000) as usize)?;
    let mut z: Vec<f32> = p.redshift.clone().unwrap_or_default();
    z.sort_by(f32::total_cmp);
    let mean = |b: usize| {
        (0..p.n)
            .map(|i| f64::from(p.magnitudes[i * 5 + b]))
            .sum::<f64>()
            / p.n as f64
    };
    eprintln!(
        "sample of {}: z median {:.3}, 95th pct {:.3}, max {:.3}; mean mags u {:.2} g {:.2} r {:.2} i {:.2} z {:.2}; non-finite {}",
        p.n,
        z[z.len() / 2],
        z[z.len() * 95 / 100],
        z[z.len() - 1],
        mean(0),
        mean(1),
        mean(2),
        mean(3),
        mean(4),
        p.nonfinite_count()
    );
    Ok(())
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`;
/// 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which ends with ')'): utime is the
    // 12th and stime the 13th, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}
