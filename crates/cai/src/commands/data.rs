//! `cai synth` and `cai partition`.

use std::sync::Arc;

use anyhow::{Context, Result};
use cai_core::layout::MANIFEST;
use cai_core::StorageUrl;
use cai_data::partition::{parse_size, FileFormat};
use cai_data::TensorInfo;
use cai_engine::partition::{open_input, partition_input, write_synthetic};

use crate::cli::{PartitionArgs, PartitionFormat, SynthArgs};
use crate::printer::Printer;
use crate::progress::Progress;
use crate::Outcome;

/// `cai synth`: stream a synthetic dataset to a file, with a progress bar.
pub async fn synth(a: SynthArgs, printer: &Printer) -> Result<Outcome> {
    write_synthetic(&a.out, a.galaxies, a.seed, Some(printer))
        .await
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    printer.finish();
    printer.note(format!(
        "wrote {} galaxies (seed {}) to {}",
        a.galaxies,
        a.seed,
        a.out.display()
    ));
    Ok(Outcome::Ok)
}

/// `cai partition`: cut an input file (a dataset, `.pt`, `.npy`, `.npz` or safetensors of any
/// tensors) into partitions, `manifest.json` last, with a progress bar; `--names` renames
/// the tensors of a `.pt`, `.npy` or `.npz`.
pub async fn partition(a: PartitionArgs, printer: &Printer) -> Result<Outcome> {
    let format = match a.format {
        PartitionFormat::Native => FileFormat::Native,
        PartitionFormat::Pt => FileFormat::Torch,
    };
    let (input, names) = (a.input.clone(), a.names.clone());
    let source = tokio::task::spawn_blocking(move || {
        open_input(&input, names.as_deref()).map_err(anyhow::Error::from)
    })
    .await?
    .with_context(|| format!("cannot read the input {}", a.input.display()))?;
    let progress = Arc::new(Progress::new(
        "partition",
        source.galaxies(),
        "galaxies",
        printer.quiet(),
    ));
    let p2 = progress.clone();
    let (size, dest) = (parse_size(&a.size)?, StorageUrl::parse(&a.out)?);
    let done = partition_input(
        source,
        size,
        &dest,
        format,
        Some(Arc::new(move |n| p2.inc(n))),
    );
    let made = done.await;
    progress.finish();
    let (s, tensors) = made?;
    printer.note(format!(
        "wrote {} partitions ({} galaxies) and {MANIFEST} to {}",
        s.partitions, s.galaxies, a.out
    ));
    let list: Vec<String> = tensors.iter().map(TensorInfo::describe).collect();
    printer.note(format!("tensors: {}", list.join(", ")));
    Ok(Outcome::Ok)
}
