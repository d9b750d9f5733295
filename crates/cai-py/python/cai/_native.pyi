"""Type stubs for the Rust extension module ``cai._native`` (see ``cai/__init__.py``)."""

import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str
PREDICTIONS_KEY: str
SUMMARY_KEY: str

class CaiError(RuntimeError):
    """An error from CAI-rs; the message carries the Rust error chain."""

_Float = Union[npt.NDArray[np.float32], npt.NDArray[np.float64]]

class Model:
    """A loaded model (the native AstroMAE, or an ONNX graph run by tract) with its own
    inference thread pool."""

    @staticmethod
    def load(path: str, precision: str = "f32", threads: Optional[int] = None) -> "Model":
        """Load a model file (safetensors, the original's ``.pt`` forms, or ``.onnx``) from
        a path, ``file://`` or ``s3://`` URL. ``precision``: ``f32``, ``bf16``, ``int8``,
        ``int16`` (ONNX: ``f32`` only); ``threads``: inference threads (default every
        core)."""
    def predict(
        self, images: _Float, magnitudes: _Float, batch_size: int = 512
    ) -> npt.NDArray[np.float32]:
        """Predicted redshift per galaxy: ``images`` (N, 5, 32, 32), ``magnitudes``
        (N, 5), float32 or float64, any order (float32 C-ordered is read in place).
        Releases the GIL; NaN where an input is not finite. An ONNX model is fed its
        inputs ``images`` / ``magnitudes`` and must give a ``z`` output."""
    def run(
        self,
        inputs: Optional[Dict[str, _Float]] = None,
        *,
        batch_size: int = 512,
        **tensors: _Float,
    ) -> Dict[str, npt.NDArray[np.float32]]:
        """Every output of the model on named arrays (a dict and/or keyword arguments),
        each (N, *the input's per-galaxy shape): ``{output: (N, *shape) float32}``, NaN
        for a galaxy with a non-finite input. Releases the GIL."""
    @property
    def inputs(self) -> Dict[str, Tuple[int, ...]]:
        """``{name: per-galaxy shape}`` of the inputs, in the model's order."""
    @property
    def outputs(self) -> Dict[str, Tuple[int, ...]]:
        """``{name: per-galaxy shape}`` of the outputs (``()``: one value per galaxy)."""
    @property
    def kind(self) -> str:
        """``native AstroMAE`` or ``onnx``."""
    @property
    def input_shape(self) -> Optional[Tuple[int, int, int]]:
        """AstroMAE's ``(channels, height, width)``; ``None`` for an ONNX model."""
    @property
    def path(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def threads(self) -> int: ...

def predict(
        self, images: _Float, magnitudes: _Float, batch_size: int = 512
    ) -> npt.NDArray[np.float32]:
        """Predicted redshift per galaxy: ``images`` (N, 5, 32, 32), ``magnitudes``
        (N, 5), float32 or float64, any order (float32 C-ordered is read in place).
        Releases the GIL; NaN where an input is not finite."""
    @property
    def input_shape(self) -> Tuple[int, int, int]: ...
    @property
    def path(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def threads(self) -> int: ...

def predict(
    model_path: str,
    images: _Float,
    magnitudes: _Float,
    batch_size: int = 512,
    precision: str = "f32",
    threads: Optional[int] = None,
) -> npt.NDArray[np.float32]:
    """``Model.load(model_path, precision, threads).predict(images, magnitudes, batch_size)``."""

def init_model(out: Union[str, "os.PathLike[str]"], seed: int = 0) -> Any:
    """Write seeded, untrained AstroMAE weights (safetensors) to ``out``, as
    ``cai model init``; returns the path."""

def kernel_tier() -> str:
    """The SIMD kernel tier in use: ``scalar``, ``avx2``, ``avx512`` or ``neon``."""

def synth(
    n: int, seed: int = 1, out: Optional[Union[str, "os.PathLike[str]"]] = None
) -> Any:
    """``n`` synthetic galaxies (seeded, as ``cai synth``): written to ``out`` (returns the
    path) or returned as a dict of arrays ``images``, ``magnitudes``, ``redshift``,
    ``object_id``."""

def partition(input: str, out: str, size: str = "25MB", format: str = "native") -> Dict[str, Any]: ...
def read_partition(location: str) -> Dict[str, npt.NDArray[Any]]:
    """One partition or dataset file (native or ``.pt``) as a dict of arrays."""

def run_local(
    data: Optional[str],
    results: Optional[str],
    model: Optional[str],
    *,
    batch_size: Optional[int] = None,
    file_limit: Optional[int] = None,
    world_size: Optional[int] = None,
    workers: Optional[int] = None,
    threads: Optional[int] = None,
    precision: str = "f32",
    resume: bool = False,
    payload: Optional[str] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> str: ...
def run_slurm(
    data: Optional[str],
    results: Optional[str],
    model: Optional[str],
    *,
    cai_bin: str,
    batch_size: Optional[int] = None,
    file_limit: Optional[int] = None,
    world_size: Optional[int] = None,
    threads: Optional[int] = None,
    precision: str = "f32",
    resume: bool = False,
    payload: Optional[str] = None,
    slurm_partition: Optional[str] = None,
    slurm_account: Optional[str] = None,
    slurm_time: Optional[str] = None,
    slurm_mem: Optional[str] = None,
    cpus_per_task: Optional[int] = None,
    max_running: Optional[int] = None,
    setup: Optional[str] = None,
    job_name: str = "cai",
    retries: int = 0,
    poll: float = 2.0,
    wait: bool = True,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> str: ...
def run_aws(
    data: Optional[str],
    results: Optional[str],
    model: Optional[str],
    *,
    batch_size: Optional[int] = None,
    file_limit: Optional[int] = None,
    world_size: Optional[int] = None,
    precision: str = "f32",
    resume: bool = False,
    payload: Optional[str] = None,
    aws_state_machine: Optional[str] = None,
    aws_stack: str = "cai",
    lambda_memory_mb: int = 10240,
    lambda_arch: str = "x86_64",
    lambda_max_concurrency: int = 1000,
    lambda_tolerated_failure_percentage: float = 0.0,
    lambda_timeout_s: int = 900,
    lambda_log_retention_days: int = 14,
    aws_profile: Optional[str] = None,
    aws_region: Optional[str] = None,
    aws_artifacts: Optional[str] = None,
    lambda_binary: Optional[str] = None,
    poll: float = 5.0,
    wait: bool = True,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> str:
    """Only in builds with the ``aws`` feature (the default)."""
def attach(
    results: str,
    *,
    poll: Optional[float] = None,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> str: ...
def run_status(results: str) -> Optional[str]: ...
def read_object(results: str, key: str) -> bytes: ...
def stats(results: List[str]) -> str: ...
def report(results: List[str], out: str, title: Optional[str] = None) -> int: ...
