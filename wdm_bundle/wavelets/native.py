"""One-pass CPU kernels for the 3D Haar DWT/IDWT, compiled on first use.

Why our own kernel: in eager PyTorch the transform needs a strided gather plus a matmul (about
3 passes over memory); ``haar_kernel.c`` reads and writes each voxel once, like a copy
(docs/performance.md). It is plain C (no torch headers), built with the system C compiler
into a per-user cache (``$WDM_BUNDLE_CACHE`` or ``~/.cache/wdm_bundle``) and called through
ctypes on the tensors' memory, split over ``torch.get_num_threads()`` Python threads (ctypes
releases the GIL). When no compiler is found, the build fails, or ``WDM_BUNDLE_NATIVE_HAAR=0``,
`available` returns False and `wdm_bundle.wavelets.functional` uses its PyTorch path.

Large outputs (≥ 32 MiB, e.g. one 256³ float32 volume) are advised to the kernel as transparent
huge pages on Linux: first-touching fresh 4 KiB pages cost several times the transform itself
(docs/acceleration.md). ``WDM_BUNDLE_HUGEPAGES=0`` turns that off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import torch

__all__ = ["available", "dwt3d_native", "empty", "idwt3d_native", "supports"]

logger = logging.getLogger(__name__)

_SOURCE = "haar_kernel.c"
_FLAGS = ["-O3", "-fPIC", "-shared", "-std=c99"]
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
#: below this many voxels one thread is faster than handing work to a pool
_PARALLEL_MIN_VOXELS = 1 << 18
#: outputs this large normally get their own fresh mapping from glibc (its mmap threshold is at most
#: 32 MiB); where the advice reaches other memory it only makes that eligible for huge pages too
_HUGEPAGE_MIN_BYTES = 32 << 20
_HUGEPAGE = 2 << 20
_MADV_HUGEPAGE = 14

_lock = threading.Lock()
_state: dict = {}


def _cache_dir() -> Path:
    root = os.environ.get("WDM_BUNDLE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wdm_bundle")
    return Path(root)


def _switched_off(variable: str) -> bool:
    return os.environ.get(variable, "1").strip().lower() in ("0", "false", "no", "off")


def _build() -> ctypes.CDLL | None:
    if _switched_off("WDM_BUNDLE_NATIVE_HAAR"):
        return None
    if not sys.platform.startswith(("linux", "darwin")):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        logger.info("no C compiler found: the Haar DWT uses its PyTorch path (slower on CPU).")
        return None
    source = resources.files("wdm_bundle.wavelets").joinpath(_SOURCE).read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *_FLAGS, sys.platform]).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"haar_kernel_{key}.so"
    try:
        if not lib.exists():
            lib.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
                src, out = Path(tmp) / _SOURCE, Path(tmp) / lib.name
                src.write_bytes(source)
                subprocess.run([compiler, *_FLAGS, str(src), "-o", str(out)], check=True, capture_output=True,
                               timeout=120)
                os.replace(out, lib)  # atomic: concurrent processes never load a half-written library
        cdll = ctypes.CDLL(str(lib))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        logger.warning(f"could not build the native Haar kernel ({e}; {detail.decode(errors='replace')[:500]}); "
                       "using the PyTorch path.")
        return None
    for suffix in _DTYPES.values():
        for name in (f"haar_dwt3d_{suffix}", f"haar_idwt3d_{suffix}"):
            fn = getattr(cdll, name)
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_long] * 5
    return cdll


def _lib() -> ctypes.CDLL | None:
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"] = _build()
    return _state["lib"]


def available() -> bool:
    """True when the compiled kernel can be used in this process (built now if needed)."""
    return _lib() is not None


def supports(x: torch.Tensor) -> bool:
    """Whether `x` can go through the native kernel: a CPU float32/float64 tensor, and the kernel builds."""
    return x.device.type == "cpu" and x.dtype in _DTYPES and available()


def _pool(workers: int) -> ThreadPoolExecutor:
    # a pool inherited through fork (e.g. by a DataLoader worker) has no threads: make a new one
    key = (workers, os.getpid())
    if _state.get("pool_key") != key:
        with _lock:
            if _state.get("pool_key") != key:
                _state["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="wdm-haar")
                _state["pool_key"] = key
    return _state["pool"]


def _run(fn, src: torch.Tensor, dst: torch.Tensor, n: int, d: int, h: int, w: int) -> None:
    slabs = n * d
    workers = min(torch.get_num_threads(), slabs)
    args = (src.data_ptr(), dst.data_ptr(), d, h, w)
    if workers <= 1 or src.numel() < _PARALLEL_MIN_VOXELS:
        fn(*args, 0, slabs)
        return
    bounds = [slabs * k // workers for k in range(workers + 1)]
    jobs = [_pool(workers).submit(fn, *args, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    for job in jobs:
        job.result()


def _madvise():
    """libc's ``madvise``, or None (not Linux, or ``WDM_BUNDLE_HUGEPAGES=0``)."""
    if "madvise" not in _state:
        fn = None
        if sys.platform.startswith("linux") and not _switched_off("WDM_BUNDLE_HUGEPAGES"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).madvise
                fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
            except (OSError, AttributeError):
                fn = None
        _state["madvise"] = fn
    return _state["madvise"]


def empty(shape: tuple, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``torch.empty`` on CPU, the way the transforms allocate their outputs: from 32 MiB on (Linux), its
    untouched whole 2 MiB pages are advised as transparent huge pages."""
    y = torch.empty(shape, dtype=dtype, device="cpu")  # explicit: a default device of CUDA must not apply
    nbytes = y.numel() * y.element_size()
    madvise = _madvise() if nbytes >= _HUGEPAGE_MIN_BYTES else None
    if madvise is not None:
        start = -(-y.data_ptr() // _HUGEPAGE) * _HUGEPAGE  # only whole 2 MiB pages inside the tensor
        end = (y.data_ptr() + nbytes) // _HUGEPAGE * _HUGEPAGE
        if end > start:
            madvise(start, end - start, _MADV_HUGEPAGE)  # a hint: on failure (no THP) the pages stay 4 KiB
    return y


def _output(out: torch.Tensor | None, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    if out is None:
        return empty(shape, like.dtype)
    if tuple(out.shape) != tuple(shape) or out.dtype != like.dtype or out.device.type != "cpu" or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous CPU {like.dtype} tensor of shape {tuple(shape)}, got a "
                         f"{'contiguous' if out.is_contiguous() else 'non-contiguous'} {out.device.type} {out.dtype} "
                         f"tensor of shape {tuple(out.shape)}.")
    start, end = like.data_ptr(), like.data_ptr() + like.numel() * like.element_size()
    if out.numel() and out.data_ptr() < end and start < out.data_ptr() + out.numel() * out.element_size():
        raise ValueError("out overlaps the input; the transform cannot run in place.")
    return out


def dwt3d_native(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, D, H, W) CPU float tensor, even sizes -> (B, 8C, D/2, H/2, W/2); no autograd.

    ``out``: an existing contiguous tensor to write into (no allocation, so no page faults of
    fresh memory; used by the benchmark to measure the kernel against ``copy_``).
    """
    b, c, D, H, W = x.shape
    x = x.contiguous()
    y = _output(out, (b, 8 * c, D // 2, H // 2, W // 2), x)
    if x.numel():
        _run(getattr(_lib(), f"haar_dwt3d_{_DTYPES[x.dtype]}"), x, y, b * c, D // 2, H // 2, W // 2)
    return y


def idwt3d_native(y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 8C, d, h, w) CPU float tensor -> (B, C, 2d, 2h, 2w); no autograd; ``out`` as in `dwt3d_native`."""
    b, c8, d, h, w = y.shape
    y = y.contiguous()
    x = _output(out, (b, c8 // 8, 2 * d, 2 * h, 2 * w), y)
    if y.numel():
        _run(getattr(_lib(), f"haar_idwt3d_{_DTYPES[y.dtype]}"), y, x, b * c8 // 8, d, h, w)
    return x
