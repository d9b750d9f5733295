"""CAI-rs from Python: AstroMAE photometric redshifts on NumPy arrays, runs and results.

The computing is CAI-rs's Rust library (the same code as the ``cai`` command), called
directly: no subprocess, no PyTorch.

>>> import cai
>>> model = cai.Model.load("astromae.safetensors")          # doctest: +SKIP
>>> z = model.predict(images, magnitudes)                     # doctest: +SKIP
>>> summary = cai.run("parts/", "results/", "astromae.safetensors")  # doctest: +SKIP
>>> df = cai.read_predictions("results/")                     # doctest: +SKIP

Errors from the Rust side are raised as :class:`CaiError` with the error chain in the
message (the file, key or shape at fault); wrong arguments raise ``ValueError`` or
``TypeError`` naming the argument. Ctrl-C interrupts :func:`run` and :meth:`Model.predict`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from typing import Any, Dict, Optional, Sequence, Union

from . import _native
from ._native import CaiError, Model, init_model, kernel_tier, predict, read_partition, synth

__version__: str = _native.__version__

__all__ = [
    "CaiError",
    "Model",
    "init_model",
    "kernel_tier",
    "partition",
    "predict",
    "read_partition",
    "read_predictions",
    "read_summary",
    "report",
    "run",
    "stats",
    "synth",
]

_PathLike = Union[str, "os.PathLike[str]"]


class _ProgressLine:
    """A one-line progress display on stderr, redrawn in place with a carriage return.

    Works on a terminal and in Jupyter (whose output areas honour ``\\r``)."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self.last = ""

    def __call__(self, done: int, total: int) -> None:
        secs = max(time.monotonic() - self.start, 1e-9)
        rate = done / secs
        if total > 0:
            frac = min(done / total, 1.0)
            width = 30
            filled = int(frac * width)
            bar = "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1)
            eta = (total - done) / rate if rate > 0 else float("nan")
            eta_s = f"{eta:.0f} s" if eta == eta else "?"
            line = f"{self.label} [{bar[:width]}] {done}/{total} galaxies · {rate:.0f}/s · ETA {eta_s}"
        else:
            line = f"{self.label} {done} galaxies · {rate:.0f}/s"
        if line != self.last:
            self.stream.write("\r" + line)
            self.stream.flush()
            self.last = line

    def close(self) -> None:
        if self.last:
            self.stream.write("\n")
            self.stream.flush()


def run(
    data: Optional[_PathLike],
    results: Optional[_PathLike],
    model: Optional[_PathLike],
    engine: str = "local",
    *,
    batch_size: Optional[int] = None,
    file_limit: Optional[int] = None,
    world_size: Optional[int] = None,
    workers: Optional[int] = None,
    threads: Optional[int] = None,
    precision: str = "f32",
    resume: bool = False,
    payload: Optional[_PathLike] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Run the model over every partition under ``data``, as ``cai run`` does; blocks.

    ``data`` is where ``partition`` wrote the partitions and ``results`` where the run
    writes ``plan.json``, one ``<rank>.json`` and ``predictions/<rank>.parquet`` per rank,
    then ``predictions.parquet`` and ``summary.json`` (paths, ``file://`` or ``s3://``).
    The options and defaults are the CLI's: ``batch_size`` (the payload's, else 512),
    ``file_limit`` (first N partitions), ``world_size`` (ranks; one per partition),
    ``workers`` and ``threads`` (fit the cores), ``precision`` (``f32``, ``bf16``,
    ``int8``, ``int16``), ``resume`` (run only the ranks without a result), ``payload``
    (the original's ``payload.json``). ``progress`` draws a progress line on stderr.

    Returns the run summary (``summary.json`` as a dict). A rank that fails is recorded
    and the others go on: the summary lists it under ``failed`` and a warning is issued.
    Ctrl-C stops the run at the next batch and raises ``KeyboardInterrupt``; ``resume=True``
    then runs the rest. Only ``engine="local"`` runs from Python for now.
    """
    if engine != "local":
        if engine in ("slurm", "aws"):
            raise NotImplementedError(
                f"engine={engine!r} is not available from Python yet; use the CLI "
                f"(`cai run --engine {engine}`), then cai.read_predictions(results)"
            )
        raise ValueError(f'engine: expected "local", "slurm" or "aws", got {engine!r}')
    line = _ProgressLine("infer") if progress else None
    try:
        text = _native.run_local(
            _str(data),
            _str(results),
            _str(model),
            batch_size=batch_size,
            file_limit=file_limit,
            world_size=world_size,
            workers=workers,
            threads=threads,
            precision=precision,
            resume=resume,
            payload=_str(payload),
            progress=line,
        )
    finally:
        if line is not None:
            line.close()
    summary: Dict[str, Any] = json.loads(text)
    if summary.get("failed") or summary.get("missing_ranks"):
        warnings.warn(
            f"{len(summary.get('failed', []))} rank(s) failed and "
            f"{len(summary.get('missing_ranks', []))} are missing; fix the named files, then "
            f"cai.run(..., resume=True)",
            RuntimeWarning,
            stacklevel=2,
        )
    return summary


def partition(
    input: _PathLike, out: _PathLike, size: str = "25MB", format: str = "native"
) -> Dict[str, Any]:
    """Cut the dataset file ``input`` (``synth(..., out=...)``'s, or the original's
    ``TensorDataset`` ``.pt``) into partitions of about ``size`` (``"25MB"``, ``"1GiB"``…)
    under ``out`` (a path, ``file://`` or ``s3://`` URL), writing ``manifest.json`` last,
    as ``cai partition`` does. ``format``: ``"native"`` (safetensors) or ``"pt"``.
    Returns ``{"out", "partitions", "galaxies"}``."""
    out_d: Dict[str, Any] = _native.partition(os.fspath(input), os.fspath(out), size, format)
    return out_d


def read_predictions(results: _PathLike, as_arrow: bool = False) -> Any:
    """All predictions of a summarized run: one row per galaxy.

    Columns ``index``, ``partition``, ``row``, ``rank``, ``z_pred``, ``z_true`` (NaN/null
    where the data has no redshift). Returns a ``pandas.DataFrame``, or a
    ``pyarrow.Table`` with ``as_arrow=True``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = _native.read_object(_str(results), _native.PREDICTIONS_KEY)
    table = pq.read_table(pa.BufferReader(raw))
    return table if as_arrow else table.to_pandas()


def read_summary(results: _PathLike) -> Dict[str, Any]:
    """A run's ``summary.json`` as a dict (galaxies, ranks, wall time, accuracy…)."""
    raw = _native.read_object(_str(results), _native.SUMMARY_KEY)
    out: Dict[str, Any] = json.loads(raw)
    return out


def stats(results: Union[_PathLike, Sequence[_PathLike]]) -> Any:
    """The per-run table of ``cai stats`` over one or more result locations, as a
    ``pandas.DataFrame`` (one row per run; times in seconds, memory in MB)."""
    import pandas as pd

    locs = [results] if isinstance(results, (str, os.PathLike)) else list(results)
    cols = json.loads(_native.stats([_str(r) for r in locs]))
    return pd.DataFrame(cols)


def report(
    results: Union[_PathLike, Sequence[_PathLike]], out: _PathLike, title: Optional[str] = None
) -> str:
    """Write the self-contained HTML report of ``cai report`` for one or more result
    locations to ``out``; returns ``out``."""
    locs = [results] if isinstance(results, (str, os.PathLike)) else list(results)
    _native.report([_str(r) for r in locs], os.fspath(out), title)
    return os.fspath(out)


def _str(p: Optional[_PathLike]) -> Optional[str]:
    return None if p is None else os.fspath(p)

