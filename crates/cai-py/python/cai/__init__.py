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
import shutil
import sys
import time
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Union

from . import _native
from ._native import CaiError, Model, init_model, kernel_tier, predict, read_partition, synth

__version__: str = _native.__version__

__all__ = [
    "CaiError",
    "Model",
    "Run",
    "attach",
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
    "status",
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

    def __call__(self, done: int, total: int, unit: str = "galaxies") -> None:
        secs = max(time.monotonic() - self.start, 1e-9)
        rate = done / secs
        if total > 0:
            frac = min(done / total, 1.0)
            width = 30
            filled = int(frac * width)
            bar = "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1)
            eta = (total - done) / rate if rate > 0 else float("nan")
            eta_s = f"{eta:.0f} s" if eta == eta else "?"
            line = f"{self.label} [{bar[:width]}] {done}/{total} {unit} · {rate:.0f}/s · ETA {eta_s}"
        else:
            line = f"{self.label} {done} {unit} · {rate:.0f}/s"
        if line != self.last:
            self.stream.write("\r" + line)
            self.stream.flush()
            self.last = line

    def close(self) -> None:
        if self.last:
            self.stream.write("\n")
            self.stream.flush()


class Run:
    """A run that goes on while Python does other things (``cai.run(..., wait=False)``).

    ``status()`` reads how far it is from its results location (as ``cai status``);
    ``wait()`` blocks until it ends and returns its summary, as ``cai.run`` does when it
    waits. A Slurm run's jobs live on the cluster, an AWS run's execution in Step
    Functions: another process (or a new notebook kernel) follows them with
    ``cai.attach(results)``."""

    def __init__(self, results: str, engine: str, thread: Any = None) -> None:
        self.results = results
        self.engine = engine
        self._thread = thread
        self._outcome: Dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"cai.Run(results={self.results!r}, engine={self.engine!r})"

    def status(self) -> Dict[str, Any]:
        """``{"results", "world_size", "done", "failed", "without_result",
        "summary_written"}``: ranks
        done, failed (their numbers), without a result yet, and whether ``summary.json``
        is written. Raises :class:`CaiError` when no run was planned there (yet)."""
        return status(self.results)

    def done(self) -> bool:
        """Whether the run has ended (its summary is written, or its thread is over)."""
        if self._thread is not None:
            return not self._thread.is_alive()
        st = _native.run_status(self.results)
        return st is not None and bool(json.loads(st)["summary_written"])

    def wait(self, progress: bool = True, poll: Optional[float] = None) -> Dict[str, Any]:
        """Block until the run ends; its summary (``summary.json`` as a dict)."""
        if self._thread is not None:
            self._thread.join()
            if "error" in self._outcome:
                raise self._outcome["error"]
            return _checked(self._outcome["summary"])
        return attach(self.results, progress=progress, poll=poll)


def status(results: _PathLike) -> Dict[str, Any]:
    """How far the run at ``results`` is, as ``cai status`` prints it:
    ``{"results", "world_size", "done", "failed", "without_result", "summary_written"}``."""
    text = _native.run_status(os.fspath(results))
    if text is None:
        raise CaiError(f"no plan.json under {os.fspath(results)}: no run was started there")
    out: Dict[str, Any] = json.loads(text)
    return out


def attach(
    results: _PathLike, progress: bool = True, poll: Optional[float] = None
) -> Dict[str, Any]:
    """Follow the run whose work is recorded at ``results`` (Slurm jobs, or an AWS Step
    Functions execution; started with ``wait=False``, by ``cai run --detach``, or by
    another process) until it ends; returns its summary. ``poll``: seconds between looks
    (default 2 for Slurm, 5 for AWS). Ctrl-C stops following; the jobs go on."""
    text = _with_progress(
        "ranks", progress, lambda line: _native.attach(os.fspath(results), poll=poll, progress=line)
    )
    return _summary_of(text)


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
    wait: bool = True,
    cai_bin: Optional[_PathLike] = None,
    slurm_partition: Optional[str] = None,
    slurm_account: Optional[str] = None,
    slurm_time: Optional[str] = None,
    slurm_mem: Optional[str] = None,
    cpus_per_task: Optional[int] = None,
    max_running: Optional[int] = None,
    setup: Optional[str] = None,
    job_name: str = "cai",
    retries: int = 0,
    poll: Optional[float] = None,
    aws_state_machine: Optional[str] = None,
    aws_stack: str = "cai",
    lambda_memory_mb: int = 10_240,
    lambda_arch: str = "x86_64",
    lambda_max_concurrency: int = 1000,
    lambda_tolerated_failure_percentage: float = 0.0,
    lambda_timeout_s: int = 900,
    lambda_log_retention_days: int = 14,
    aws_profile: Optional[str] = None,
    aws_region: Optional[str] = None,
    aws_artifacts: Optional[str] = None,
    lambda_binary: Optional[_PathLike] = None,
) -> Any:
    """Run the model over every partition under ``data``, as ``cai run`` does.

    ``data`` is where ``partition`` wrote the partitions and ``results`` where the run
    writes ``plan.json``, one ``<rank>.json`` and ``predictions/<rank>.parquet`` per rank,
    then ``predictions.parquet`` and ``summary.json`` (paths, ``file://`` or ``s3://``).
    The options and defaults are the CLI's: ``batch_size`` (the payload's, else 512),
    ``file_limit`` (first N partitions), ``world_size`` (ranks; one per partition),
    ``workers`` and ``threads`` (fit the cores), ``precision`` (``f32``, ``bf16``,
    ``int8``, ``int16``), ``resume`` (run only the ranks without a result), ``payload``
    (the original's ``payload.json``). ``progress`` draws a progress line on stderr.

    ``engine="local"`` runs on this machine; ``engine="slurm"`` submits a job array of
    ``cai worker`` tasks and a summarize job (``cai run --engine slurm``): ``cai_bin`` is
    the ``cai`` binary the tasks run (default: ``$CAI_SLURM_BIN``, else ``cai`` on PATH;
    it must be on a file system the nodes mount), ``slurm_partition``, ``slurm_account``,
    ``slurm_time``, ``slurm_mem``, ``cpus_per_task``, ``max_running``, ``setup``,
    ``job_name``, ``retries`` and ``poll`` (seconds between looks at the queue; default 2)
    are the CLI's ``--slurm-*`` options.

    ``engine="aws"`` runs on Step Functions over Lambda (``cai run --engine aws``; ``data``,
    ``results`` and ``model`` are ``s3://`` URLs, or ``model`` a local file to upload). It
    deploys the stack ``aws_stack`` unless ``aws_state_machine`` (an ARN) is given; the
    ``lambda_*`` options are the CLI's ``--lambda-*`` flags with the same defaults, and
    ``lambda_binary`` is the ``cai`` binary deployed (default: ``cai`` on PATH).
    ``aws_profile``, ``aws_region``: the account (default: the usual ``AWS_*`` variables
    and ``~/.aws`` files; ``AWS_ENDPOINT_URL`` for a test endpoint); ``aws_artifacts``:
    where the zip and a local model go; ``poll``: seconds between looks (default 5).

    With ``wait=True`` (the default) blocks and returns the run summary (``summary.json``
    as a dict); with ``wait=False`` returns a :class:`Run` at once, whose ``status()`` and
    ``wait()`` follow it. A rank that fails is recorded and the others go on: the summary
    lists it under ``failed`` and a warning is issued. Ctrl-C stops a local run at the next
    batch and raises ``KeyboardInterrupt`` (``resume=True`` then runs the rest); on Slurm
    it stops following, and the jobs go on.
    """
    if engine == "slurm":
        return _run_slurm(locals())
    if engine == "aws":
        return _run_aws(locals())
    if engine != "local":
        raise ValueError(f'engine: expected "local", "slurm" or "aws", got {engine!r}')
    args = (_str(data), _str(results), _str(model))
    kwargs: Dict[str, Any] = dict(
        batch_size=batch_size,
        file_limit=file_limit,
        world_size=world_size,
        workers=workers,
        threads=threads,
        precision=precision,
        resume=resume,
        payload=_str(payload),
    )
    if not wait:
        import threading

        if results is None:
            raise ValueError("results: wait=False needs the results location to follow")
        handle = Run(os.fspath(results), "local")

        def work() -> None:
            try:
                handle._outcome["summary"] = _native.run_local(*args, progress=None, **kwargs)
            except BaseException as e:  # handed to wait()
                handle._outcome["error"] = e

        handle._thread = threading.Thread(target=work, name="cai-run", daemon=True)
        handle._thread.start()
        return handle
    text = _with_progress(
        "infer", progress, lambda line: _native.run_local(*args, progress=line, **kwargs)
    )
    return _checked(text)


def _with_progress(label: str, show: bool, call: Callable[[Any], str]) -> str:
    """``call(progress)`` with a progress line on stderr when ``show`` (else ``None``)."""
    line = _ProgressLine(label) if show else None
    try:
        return call(line)
    finally:
        if line is not None:
            line.close()


def _submit(native: Callable[..., str], engine: str, a: Dict[str, Any], **extra: Any) -> Any:
    """Start a run on an engine whose work outlives this process (``_native.run_slurm`` or
    ``run_aws``) with ``run``'s arguments ``a`` and the engine's own ``extra``; a
    :class:`Run` when not waiting, else the summary."""
    text = _with_progress(
        "ranks",
        a["progress"] and a["wait"],
        lambda line: native(
            _str(a["data"]),
            _str(a["results"]),
            _str(a["model"]),
            batch_size=a["batch_size"],
            file_limit=a["file_limit"],
            world_size=a["world_size"],
            precision=a["precision"],
            resume=a["resume"],
            payload=_str(a["payload"]),
            wait=a["wait"],
            progress=line,
            **extra,
        ),
    )
    if not a["wait"]:
        return Run(json.loads(text)["results"], engine)
    return _summary_of(text)


def _run_slurm(a: Dict[str, Any]) -> Any:
    """``run(engine="slurm", ...)``; ``a`` is ``run``'s arguments."""
    if a["workers"] is not None:
        raise ValueError("workers: a Slurm run has one task per rank; give world_size")
    cai_bin = a["cai_bin"] or os.environ.get("CAI_SLURM_BIN") or shutil.which("cai")
    if cai_bin is None:
        raise ValueError(
            "cai_bin: the Slurm tasks run the `cai` binary; give cai_bin=... (or set "
            "CAI_SLURM_BIN, or put cai on PATH)"
        )
    slurm = (
        "slurm_partition",
        "slurm_account",
        "slurm_time",
        "slurm_mem",
        "cpus_per_task",
        "max_running",
        "setup",
        "job_name",
        "retries",
        "threads",
    )
    return _submit(
        _native.run_slurm,
        "slurm",
        a,
        cai_bin=os.fspath(cai_bin),
        poll=2.0 if a["poll"] is None else a["poll"],
        **{k: a[k] for k in slurm},
    )


_AWS_OPTIONS = (
    "aws_state_machine",
    "aws_stack",
    "lambda_memory_mb",
    "lambda_arch",
    "lambda_max_concurrency",
    "lambda_tolerated_failure_percentage",
    "lambda_timeout_s",
    "lambda_log_retention_days",
    "aws_profile",
    "aws_region",
    "aws_artifacts",
)


def _run_aws(a: Dict[str, Any]) -> Any:
    """``run(engine="aws", ...)``; ``a`` is ``run``'s arguments."""
    native = getattr(_native, "run_aws", None)
    if native is None:
        raise NotImplementedError(
            "this build of cai has no AWS engine (built without the `aws` feature); "
            "rebuild it with default features, or use `cai run --engine aws`"
        )
    for name in ("workers", "threads"):
        if a[name] is not None:
            raise ValueError(f"{name}: an AWS run's ranks are Lambda invocations; give world_size")
    binary = a["lambda_binary"]
    if binary is None and a["aws_state_machine"] is None:
        binary = shutil.which("cai")
        if binary is None:
            raise ValueError(
                "lambda_binary: deploying the stack packages the `cai` binary for Lambda; give "
                "lambda_binary=... (or put cai on PATH), or aws_state_machine=ARN of a stack "
                "already deployed"
            )
    return _submit(
        native,
        "aws",
        a,
        lambda_binary=_str(binary),
        poll=5.0 if a["poll"] is None else a["poll"],
        **{k: a[k] for k in _AWS_OPTIONS},
    )


def _summary_of(report_text: str) -> Dict[str, Any]:
    """The summary in an engine report (``_native.run_slurm`` / ``attach``), warned about
    as :func:`run` does; a run that ended without one is a :class:`CaiError`."""
    report = json.loads(report_text)
    if report.get("summary") is None:
        failed = [f.get("rank") for f in report.get("failed", [])]
        raise CaiError(
            f"the run at {report.get('results')} ended without a summary "
            f"(failed ranks: {failed}); cai.status(results) shows what is missing"
        )
    return _checked(json.dumps(report["summary"]))


def _checked(text: str) -> Dict[str, Any]:
    """A run's summary from its JSON, with a warning when ranks failed or are missing."""
    summary: Dict[str, Any] = json.loads(text)
    if summary.get("failed") or summary.get("missing_ranks"):
        warnings.warn(
            f"{len(summary.get('failed', []))} rank(s) failed and "
            f"{len(summary.get('missing_ranks', []))} are missing; fix the named files, then "
            f"cai.run(..., resume=True)",
            RuntimeWarning,
            stacklevel=3,
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

