//! `cai synth` and `cai partition`.

use std::sync::Arc;

use anyhow::{Context, Result};
use cai_core::layout::MANIFEST;
use cai_core::StorageUrl;
use cai_data::partition::{parse_size, FileFormat};
use cai_data::{SynthConfig, TensorInfo};
use cai_engine::partition::{open_input, partition_input, PartitionInput, PartitionSummary};

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

/// Cut an input file (a dataset, `.pt`, `.npy`, `.npz` or safetensors of any tensors) into
/// partitions of `size` under `out` in `format`, `manifest.json` last, with a progress bar;
/// `names` renames the tensors of a `.pt`, `.npy` or `.npz`. Returns what was made and the
/// tensors each partition holds.
pub async fn partition_to(
    input: &std::path::Path,
    names: Option<Vec<String>>,
    size: &str,
    out: &str,
    format: FileFormat,
    printer: &Printer,
) -> Result<(PartitionSummary, Vec<TensorInfo>)> {
    let size_bytes = parse_size(size)?;
    let input2 = input.to_path_buf();
    let source = tokio::task::spawn_blocking(move || {
        open_input(&input2, names.as_deref()).map_err(anyhow::Error::from)
    })
    .await?
    .with_context(|| format!("cannot read the input {}", input.display()))?;
    let dest = StorageUrl::parse(out)?;
    let galaxies = match &source {
        PartitionInput::Galaxies(g) => g.len(),
        PartitionInput::Tensors(t) => t.n as u64,
    };
    let progress = Arc::new(Progress::new(
        "partition",
        galaxies,
        "galaxies",
        printer.quiet(),
    ));
    let p2 = progress.clone();
    let s = partition_input(
        source,
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
    let (s, tensors) =
        partition_to(&a.input, a.names.clone(), &a.size, &a.out, format, printer).await?;
    printer.note(format!(
        "wrote {} partitions ({} galaxies) and {MANIFEST} to {}",
        s.partitions, s.galaxies, a.out
    ));
    let list: Vec<String> = tensors.iter().map(TensorInfo::describe).collect();
    printer.note(format!("tensors: {}", list.join(", ")));
    Ok(Outcome::Ok)
}
