"""Measuring time and memory for `scripts/benchmark.py`: medians of repeated runs, peak memory, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["peak_memory", "median_time", "machine_info", "sync"]


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, device: str | torch.device = "cpu") -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; return seconds as a dict.

    Returns:
        ``{"median": s, "min": s, "max": s, "repeats": n}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    for _ in range(max(0, warmup)):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "repeats": repeats}


def peak_memory(fn: Callable[[], Any], device: str | torch.device = "cpu") -> int:
    """Peak bytes allocated by torch while ``fn`` runs, above what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: torch has no peak counter for
    its CPU allocator (and ``tracemalloc`` does not see it), so every allocation and free inside
    ``fn`` is recorded with ``torch.profiler`` (``profile_memory=True``) and the running total's
    maximum is returned. Both count tensors only (not the Python heap or library workspaces
    outside torch's allocator) and are deterministic for deterministic code, unlike the process RSS.
    """
    device = torch.device(device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return int(peak)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def machine_info(device: str | torch.device = "cpu") -> dict:
    """What the numbers were measured on: CPU, cores, threads, RAM, GPU, library versions."""
    import monai

    device = torch.device(device)
    info = {
        "device": str(device),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(_memory_gb(), 1) if _memory_gb() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "os": f"{platform.system()} {platform.release()}",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 1e9, 1)
    try:
        import pywt

        info["pywavelets"] = pywt.__version__
    except ImportError:
        pass
    return info
