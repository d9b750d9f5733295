//! `cai synth` and `cai partition`.

use std::sync::Arc;

use anyhow::{Context, Result};
use cai_core::layout::MANIFEST;
use cai_core::StorageUrl;
use cai_data::partition::{parse_size, FileFormat};
use cai_data::SynthConfig;
use cai_engine::partition::{open_dataset, partition_source, PartitionSummary};

use crate::cli::{PartitionArgs, PartitionFormat, SynthArgs};
use crate::printer::Printer;
use crate::progress::Progress;
use crate::Outcome;

/// `cai synth`: stream a synthetic dataset to a file.
pub async fn synth(a: SynthArgs, printer: &Printer) -> Result<Outcome> {
    let cfg = SynthConfig {
        galaxies: a.galaxies,
        seed: a.seed,
        ..Default::default()
    };
    let path = a.out.clone();
    let progress = Progress::new("synth", a.galaxies, "galaxies", printer.quiet());
    tokio::task::spawn_blocking(move || {
        let mut last = 0;
        let res = cai_data::write_dataset(&path, &cfg, &mut |written| {
            progress.inc(written - last);
            last = written;
        });
        progress.finish();
        res
    })
    .await?
    .with_context(|| format!("cannot write {}", a.out.display()))?;
    printer.note(format!(
        "wrote {} galaxies (seed {}) to {}",
        a.galaxies,
        a.seed,
        a.out.display()
    ));
    Ok(Outcome::Ok)
}

/// Cut a dataset file into partitions of `size` under `out` in `format`, `manifest.json`
/// last, with a progress bar.
pub async fn partition_to(
    input: &std::path::Path,
    size: &str,
    out: &str,
    format: FileFormat,
    printer: &Printer,
) -> Result<PartitionSummary> {
    let size_bytes = parse_size(size)?;
    let input2 = input.to_path_buf();
    let reader =
        tokio::task::spawn_blocking(move || open_dataset(&input2).map_err(anyhow::Error::from))
            .await?
            .with_context(|| format!("cannot open the dataset {}", input.display()))?;
    let dest = StorageUrl::parse(out)?;
    let progress = Arc::new(Progress::new(
        "partition",
        reader.len(),
        "galaxies",
        printer.quiet(),
    ));
    let p2 = progress.clone();
    let s = partition_source(
        reader,
        size_bytes,
        &dest,
        format,
        Some(Arc::new(move |n| p2.inc(n))),
    )
    .await;
    progress.finish();
    Ok(s?)
}

/// `cai partition`.
pub async fn partition(a: PartitionArgs, printer: &Printer) -> Result<Outcome> {
    let format = match a.format {
        PartitionFormat::Native => FileFormat::Native,
        PartitionFormat::Pt => FileFormat::Torch,
    };
    let s = partition_to(&a.input, &a.size, &a.out, format, printer).await?;
    printer.note(format!(
        "wrote {} partitions ({} galaxies) and {MANIFEST} to {}",
        s.partitions, s.galaxies, a.out
    ));
    Ok(Outcome::Ok)
}
