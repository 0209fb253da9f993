"""Measuring time and memory for `scripts/benchmark.py`: medians of repeated runs, peak memory, machine facts,
and the workloads it times (wavelet transforms, training steps, sampling, denoising steps)."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "peak_memory",
    "median_time",
    "machine_info",
    "sync",
    "NETWORKS",
    "build_network",
    "native_low_precision",
    "wavelet_speed",
    "pywavelets_speed",
    "training_step",
    "sampling_times",
    "denoising_step_memory",
    "training_step_memory",
]


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
    outside torch's allocator) and repeat to within a few hundred kB (one-time allocations of
    the first calls in a process), unlike the process RSS.
    """
    device = torch.device(device)
    gc.collect()  # garbage of earlier work must not be freed (uncounted) inside the measurement
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
    events = [
        e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    ]
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


#: U-Net sizes used by the benchmark: the demo net, the paper's nets for 128^3 and 256^3 volumes, a tiny one.
NETWORKS = {
    "tiny": {"channels": (8, 8), "num_res_blocks": 1, "norm_num_groups": 8},
    "demo": {"channels": (16, 32, 32), "num_res_blocks": 1, "norm_num_groups": 8},
    "paper128": {"channels": (64, 128, 128, 256, 256), "num_res_blocks": 2, "norm_num_groups": 32},
    "paper256": {"channels": (64, 128, 128, 256, 256, 256), "num_res_blocks": 2, "norm_num_groups": 32},
}


def build_network(
    name: str, space: str = "wavelet", activation_checkpointing: bool = False, seed: int = 0, wavelet_levels: int = 1
):
    """`WaveletDiffusionUNet` of preset ``name`` (see `NETWORKS`) in ``space`` ("wavelet" = WDM, "image" = 3D DDPM),
    with ``wavelet_levels`` DWT levels (wavelet space)."""
    from wdm_bundle.networks import WaveletDiffusionUNet

    if name not in NETWORKS:
        raise ValueError(f"unknown network preset '{name}'; choose one of {sorted(NETWORKS)}.")
    torch.manual_seed(seed)
    levels = {"wavelet_levels": wavelet_levels} if wavelet_levels != 1 else {}
    net = WaveletDiffusionUNet(
        space=space, activation_checkpointing=activation_checkpointing, **levels, **NETWORKS[name]
    )
    with torch.no_grad():  # the output conv is zero-initialised; real weights make the work realistic
        for p in net.backbone.out.parameters():
            p.normal_(0, 0.02)
    return net


def native_low_precision(device: str | torch.device) -> bool:
    """Whether bf16 autocast runs at full speed: any CUDA device, or a CPU with AVX512-BF16 / AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _nbytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def _conv_dwt(x: torch.Tensor) -> torch.Tensor:
    """The previous DWT: stride-2 conv3d with the 8 Haar filters (for comparison only)."""
    from wdm_bundle.wavelets import haar_filters

    b, c, *spatial = x.shape
    y = F.conv3d(x.reshape(b * c, 1, *spatial), haar_filters(x.dtype, x.device), stride=2)
    return y.reshape(b, 8 * c, *y.shape[2:])


def _conv_idwt(y: torch.Tensor) -> torch.Tensor:
    from wdm_bundle.wavelets import haar_filters

    b, c8, *spatial = y.shape
    x = F.conv_transpose3d(y.reshape(b * c8 // 8, 8, *spatial), haar_filters(y.dtype, y.device), stride=2)
    return x.reshape(b, c8 // 8, *x.shape[2:])


def wavelet_speed(size: int, device: str | torch.device = "cpu", repeats: int = 5) -> dict:
    """Median seconds of a (1, 1, size^3) float32 volume's DWT and IDWT and of their alternatives.

    ``dwt``/``idwt``: `dwt3d`/`idwt3d`; ``conv_*``: stride-2 conv3d / conv_transpose3d;
    ``pywt_*``: PyWavelets; ``copy``: ``x.clone()``; ``fill``: writing zeros into a fresh tensor
    (the cost of fresh memory alone).
    """
    from wdm_bundle.wavelets import dwt3d, idwt3d

    x = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    y = dwt3d(x)
    timed = {
        "copy": lambda: x.clone(),
        "fill": lambda: torch.empty_like(x).zero_(),
        "dwt": lambda: dwt3d(x),
        "idwt": lambda: idwt3d(y),
        "dwt_idwt": lambda: idwt3d(dwt3d(x)),
        "conv_dwt": lambda: _conv_dwt(x),
        "conv_idwt": lambda: _conv_idwt(y),
    }
    out = {name: median_time(fn, repeats, 1, device)["median"] for name, fn in timed.items()}
    out.update(pywavelets_speed(x[0, 0].cpu().numpy(), repeats))
    return out


def pywavelets_speed(volume, repeats: int = 5) -> dict:
    """Median seconds of PyWavelets' ``dwtn``/``idwtn`` ("haar") of a 3D numpy array; empty without PyWavelets."""
    try:
        import pywt
    except ImportError:
        return {}
    coeffs = pywt.dwtn(volume, "haar")
    return {
        "pywt_dwt": median_time(lambda: pywt.dwtn(volume, "haar"), repeats, 1)["median"],
        "pywt_idwt": median_time(lambda: pywt.idwtn(coeffs, "haar"), repeats, 1)["median"],
    }


def _train_parts(net, device, batch: int, size: int, lr: float = 1e-4):
    from wdm_bundle.diffusion import WaveletDiffusionInferer, make_scheduler
    from wdm_bundle.engines import WaveletPrepareBatch

    net = net.to(device).train()
    inferer = WaveletDiffusionInferer(make_scheduler("ddpm"))
    prepare = WaveletPrepareBatch(1000, net.wavelet)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    images = torch.rand(batch, 1, size, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def step() -> None:
        x0, target, _, kwargs = prepare({"image": images}, device)
        loss = F.mse_loss(inferer(x0, net, **kwargs), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, opt


def _static_bytes(net, opt) -> int:
    params = list(net.parameters())
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return _nbytes(params) + _nbytes(p.grad for p in params if p.grad is not None) + _nbytes(state)


def training_step(
    net, size: int, device: str | torch.device = "cpu", batch: int = 1, repeats: int = 3, memory: bool = True
) -> dict:
    """One training iteration as in ``train.json`` (DWT on device, noise, forward, MSE, backward, Adam step).

    Returns median seconds, and (``memory``) peak bytes = weights, gradients and Adam state plus
    the peak of everything the step allocates (`peak_memory`).
    """
    torch.manual_seed(0)
    step, opt = _train_parts(net, device, batch, size)
    out = {"time": median_time(step, repeats, 1, device)["median"]}
    if memory:
        out["peak_memory"] = _static_bytes(net, opt) + peak_memory(step, device)
    return out


def training_step_memory(
    net, size: int, device: str | torch.device = "cpu", batch: int = 1, breakdown: bool = False
) -> int | dict:
    """Peak bytes of one training iteration, with the Adam state already allocated (as from the second iteration on).

    With ``breakdown``: ``{"total": bytes, "static": bytes of weights, gradients and Adam state}``.
    """
    torch.manual_seed(0)
    step, opt = _train_parts(net, device, batch, size)
    for p in net.parameters():  # an Adam step on zero gradients allocates its state and changes no weight
        p.grad = torch.zeros_like(p)
    opt.step()
    static = _static_bytes(net, opt)
    total = static + peak_memory(step, device)
    return {"total": total, "static": static} if breakdown else total


def sampling_times(
    net,
    size: int,
    samplers: list[tuple[str, int | None]],
    device: str | torch.device = "cpu",
    rounds: int = 3,
    num_train_timesteps: int = 1000,
) -> list[float]:
    """Median seconds to sample one (1, size^3) volume with each ``(sampler, steps)`` (net in eval mode).

    The samplers take turns: each of ``rounds`` rounds samples once with every sampler, after one
    warm-up call of the cheapest. A drift of the machine's speed during the minutes a DDPM-1000
    run takes then affects all samplers alike, so their ratios stay fair.
    """
    from wdm_bundle.diffusion import WaveletDiffusionInferer, make_scheduler

    net = net.to(device).eval()
    noise = torch.randn(
        1, *net.wavelet.coefficient_shape((1, size, size, size)), generator=torch.Generator().manual_seed(0)
    ).to(device)
    inferers = [
        WaveletDiffusionInferer(make_scheduler(sampler, steps, num_train_timesteps=num_train_timesteps))
        for sampler, steps in samplers
    ]
    cheapest = min(inferers, key=lambda inf: len(inf.scheduler.timesteps))
    cheapest.sample(noise, net, verbose=False)
    times: list[list[float]] = [[] for _ in inferers]
    for _ in range(rounds):
        for inferer, record in zip(inferers, times):
            start = time.perf_counter()
            inferer.sample(noise, net, verbose=False)
            sync(device)
            record.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def denoising_step_memory(
    net, size: int, device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None, batch: int = 1
) -> int:
    """Peak bytes of one sampling step (network forward, image-space x0 clamp, DDIM update) on a (batch, 1, size^3)
    volume: weights, the step's input x_t, and everything the step allocates, optionally under
    ``torch.autocast(amp_dtype)``."""
    from wdm_bundle.diffusion import WaveletDiffusionInferer, make_scheduler

    net = net.to(device).eval()
    scheduler = make_scheduler("ddim", 1)
    inferer = WaveletDiffusionInferer(scheduler)
    noise = torch.randn(batch, *net.wavelet.coefficient_shape((1, size, size, size))).to(device)
    device = torch.device(device)

    def step() -> None:
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None),
        ):
            inferer.sample(noise, net, verbose=False, decode=False)

    return _nbytes(net.parameters()) + _nbytes([noise]) + peak_memory(step, device)
