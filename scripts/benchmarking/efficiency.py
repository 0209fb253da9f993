"""How close to the machine the denoiser runs: its convolutions' speed inside the network vs in isolation, and the
share of a denoising step spent outside the network (wavelet transforms, clamp, scheduler step).

`conv_efficiency`: every Conv3d call of one forward is recorded with forward hooks; FLOPs = 2 * Cin/groups * k^3 *
Cout * output voxels per call; the network forward and each distinct conv shape alone (``F.conv3d`` on fresh
random tensors) are timed in turns (medians); fraction = sum of the isolated conv times / forward time (= achieved conv
FLOP/s of the network over that of the isolated convs). `wrapper_share`: one DDIM step as
`WaveletDiffusionInferer.denoise_step` runs it, split into the network forward and the rest.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from . import timing

__all__ = [
    "CONV_TARGET",
    "WRAPPER_TARGET",
    "conv_flops",
    "record_convs",
    "conv_efficiency",
    "wrapper_share",
    "run_efficiency",
    "efficiency_targets",
    "markdown_efficiency",
]

#: targets: isolated-conv time / network forward time at least this, wrapper share of a step at most this
CONV_TARGET = 0.8
WRAPPER_TARGET = 0.05

# profiler op / CUDA kernel names (lower case) that are convolutions: their self time is the conv work itself
_CONV_OPS = ("conv", "fprop", "implicit_gemm", "winograd", "nnpack")


def conv_flops(weight_shape, output_shape) -> int:
    """FLOPs of one convolution: 2 * (Cin/groups * k^3) * Cout * output voxels * batch.

    Args:
        weight_shape: (Cout, Cin/groups, k, k, k).
        output_shape: (B, Cout, d, h, w).
    """
    return 2 * math.prod(weight_shape) * output_shape[0] * math.prod(output_shape[2:])


def _inputs(net: nn.Module, size: int, device, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (batch, in_channels, coefficient grid) for ``net`` at a ``size``^3 image, and mid-schedule timesteps."""
    g = torch.Generator().manual_seed(0)
    shape = net.wavelet.coefficient_shape((net.image_channels, size, size, size))
    x = torch.randn(batch, net.in_channels, *shape[1:], generator=g).to(device)
    return x, torch.full((batch,), 500, dtype=torch.long, device=device)


def record_convs(net: nn.Module, x: torch.Tensor, timesteps: torch.Tensor) -> list[dict]:
    """Every Conv3d call of one no-grad forward of ``net(x, timesteps=timesteps)``, in call order.

    Returns:
        ``{"input", "weight", "output", "stride", "padding", "dilation", "groups", "bias", "contiguous",
        "flops"}`` per call (shapes as tuples; ``contiguous``: the input is in the default memory format).
    """
    calls: list[dict] = []

    def hook(module: nn.Conv3d, args, out) -> None:
        inp = args[0]
        calls.append(
            {
                "input": tuple(inp.shape),
                "weight": tuple(module.weight.shape),
                "output": tuple(out.shape),
                "stride": tuple(module.stride),
                "padding": tuple(module.padding) if not isinstance(module.padding, str) else module.padding,
                "dilation": tuple(module.dilation),
                "groups": module.groups,
                "bias": module.bias is not None,
                "contiguous": inp.is_contiguous(),
                "flops": conv_flops(module.weight.shape, out.shape),
            }
        )

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv3d)]
    try:
        with torch.no_grad():
            net(x, timesteps=timesteps)
    finally:
        for h in handles:
            h.remove()
    return calls


def _interleaved(fns: dict, repeats: int, device, warmup: int = 2) -> dict:
    """Median seconds of each of ``fns``, timed in turns (``repeats`` rounds after ``warmup`` untimed ones), so a
    drift of a shared machine's speed affects every part alike."""
    times: dict = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for k, fn in fns.items():
            timing.sync(device)
            start = time.perf_counter()
            fn()
            timing.sync(device)
            if r >= warmup:
                times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _conv_key(call: dict) -> tuple:
    return tuple(call[k] for k in ("input", "weight", "stride", "padding", "dilation", "groups", "bias"))


def _isolated_conv(key: tuple, device):
    """``F.conv3d`` alone on fresh random tensors of one recorded shape, as a no-argument callable."""
    inp, weight, stride, padding, dilation, groups, bias = key
    g = torch.Generator().manual_seed(1)
    x = torch.randn(inp, generator=g).to(device)
    w = torch.randn(weight, generator=g).to(device) * 0.05
    b = torch.randn(weight[0], generator=g).to(device) if bias else None
    return lambda: F.conv3d(x, w, b, stride, padding, dilation, groups)


def _top_non_conv(net: nn.Module, x: torch.Tensor, timesteps: torch.Tensor, device, top: int = 5) -> dict:
    """One profiled forward: the ``top`` non-conv ops by self time (device time on CUDA) and the conv share of it."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        net(x, timesteps=timesteps)
        timing.sync(device)
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = [(e.key, getattr(e, attr, 0.0) / 1e6, e.count) for e in prof.key_averages()]
    rows = [r for r in rows if r[1] > 0]
    total = sum(r[1] for r in rows)
    conv = [r for r in rows if any(c in r[0].lower() for c in _CONV_OPS)]
    others = sorted((r for r in rows if r not in conv), key=lambda r: -r[1])
    return {
        "profiled_seconds": total,
        "conv_share_profiled": sum(r[1] for r in conv) / total if total else None,
        "top_non_conv": [{"op": k, "seconds": s, "calls": n, "share": s / total} for k, s, n in others[:top]],
    }


def conv_efficiency(
    net_name: str = "paper128",
    size: int = 128,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    profile_ops: bool = True,
    net: nn.Module | None = None,
) -> dict:
    """Achieved conv FLOP/s of one fp32 no-grad forward (batch 1, a ``size``^3 image) vs the same convs alone.

    Returns:
        ``{"net", "size", "conv_calls", "conv_shapes", "non_contiguous_inputs", "other_modules", "conv_gflop",
        "forward_seconds", "isolated_conv_seconds", "fraction", "network_gflops", "isolated_gflops",
        ["profiled_seconds", "conv_share_profiled", "top_non_conv"]}``; ``fraction`` = isolated / forward
        (1 = the network runs its convs as fast as PyTorch alone and adds nothing).
    """
    net = (net if net is not None else timing.build_network(net_name)).to(device).eval()
    x, t = _inputs(net, size, device)
    calls = record_convs(net, x, t)
    counts = Counter(_conv_key(c) for c in calls)
    keys = list(counts)
    fns = {"forward": lambda: net(x, timesteps=t), **{i: _isolated_conv(k, device) for i, k in enumerate(keys)}}
    with torch.no_grad():  # forward and convs in turns: a shared machine's drift affects both alike
        medians = _interleaved(fns, repeats, device, warmup=1)
    forward = medians["forward"]
    isolated = sum(counts[k] * medians[i] for i, k in enumerate(keys))
    flops = sum(c["flops"] for c in calls)
    kinds = Counter(type(m).__name__ for m in net.modules() if not list(m.children()))
    out = {
        "net": net_name,
        "size": size,
        "device": str(device),
        "conv_calls": len(calls),
        "conv_shapes": len(counts),
        "non_contiguous_inputs": sum(not c["contiguous"] for c in calls),
        "other_modules": {k: n for k, n in sorted(kinds.items()) if k != "Conv3d"},
        "conv_gflop": flops / 1e9,
        "forward_seconds": forward,
        "isolated_conv_seconds": isolated,
        "fraction": isolated / forward,
        "network_gflops": flops / 1e9 / forward,
        "isolated_gflops": flops / 1e9 / isolated,
    }
    if profile_ops:
        out.update(_top_non_conv(net, x, t, device))
    return out


def wrapper_share(
    net_name: str = "paper128",
    size: int = 128,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    net: nn.Module | None = None,
    steps: int = 50,
) -> dict:
    """One DDIM-``steps`` denoising step at a ``size``^3 image (batch 1, fp32), split as `denoise_step` runs it.

    Parts (median seconds each): ``forward`` = the network; ``clamp`` = IDWT -> clamp -> DWT of x0
    (`WaveletDiffusionInferer.clamp_x0`); ``scheduler`` = the DDIM update. ``step`` = the whole
    `denoise_step`; ``wrapper`` = clamp + scheduler; ``share`` = wrapper / step.
    """
    from wdm_bundle.diffusion import WaveletDiffusionInferer, make_scheduler

    net = (net if net is not None else timing.build_network(net_name)).to(device).eval()
    x, ts = _inputs(net, size, device)
    scheduler = make_scheduler("ddim", steps)
    inferer = WaveletDiffusionInferer(scheduler)
    times = [int(v) for v in scheduler.timesteps]
    i = len(times) // 2  # a mid-schedule step: every part does its full work
    t, t_next = times[i], times[i + 1] if i + 1 < len(times) else 0
    ts = torch.full_like(ts, t)
    with torch.no_grad():
        x0 = net(x, timesteps=ts).float()
        parts = {
            "forward": lambda: net(x, timesteps=ts),
            "clamp": lambda: inferer.clamp_x0(x0, net),
            "scheduler": lambda: scheduler.step(x0, t, x)[0],
            "step": lambda: inferer.denoise_step(x, t, t_next, net, scheduler),
        }
        out = _interleaved(parts, repeats, device, warmup=1)
    out["wrapper"] = out["clamp"] + out["scheduler"]
    return {
        "net": net_name,
        "size": size,
        "device": str(device),
        "sampler": f"DDIM-{steps}",
        **out,
        "share": out["wrapper"] / out["step"],
        "parts_over_step": (out["forward"] + out["wrapper"]) / out["step"],
    }


def run_efficiency(cfg: dict, device: str) -> dict:
    """The section: `conv_efficiency` and `wrapper_share` of ``cfg["efficiency_net"]`` at ``cfg["efficiency_size"]``."""
    name, size, repeats = cfg["efficiency_net"], cfg["efficiency_size"], cfg["repeats"]
    net = timing.build_network(name)
    return {
        "conv": conv_efficiency(name, size, device, repeats, net=net),
        "wrapper": wrapper_share(name, size, device, repeats, net=net),
    }


def efficiency_targets(eff: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) rows of the section."""
    out = []
    if eff.get("conv"):
        c = eff["conv"]
        out.append(
            (
                f"Denoiser forward reaches ≥{CONV_TARGET:.0%} of the FLOP/s of its convolutions alone",
                f"{c['fraction']:.0%} ({c['network_gflops']:.0f} vs {c['isolated_gflops']:.0f} GFLOP/s)",
                c["fraction"] >= CONV_TARGET,
            )
        )
    if eff.get("wrapper"):
        w = eff["wrapper"]
        out.append(
            (
                f"Wavelet transforms, clamp and scheduler ≤{WRAPPER_TARGET:.0%} of a denoising step",
                f"{w['share']:.1%}",
                w["share"] <= WRAPPER_TARGET,
            )
        )
    return out


def _ms(s: float) -> str:
    return f"{1e3 * s:.1f} ms" if s < 1 else f"{s:.2f} s"


def markdown_efficiency(eff: dict) -> list[str]:
    """The report section "How close to the machine" of `run_efficiency`'s result, as Markdown lines."""
    lines = ["## How close to the machine", ""]
    c, w = eff.get("conv"), eff.get("wrapper")
    if c:
        lines += [
            f"The denoiser ({c['net']}, a {c['size']}³ image, batch 1, fp32, no grad) against PyTorch's own "
            f"`conv3d` on the same shapes: every Conv3d call of one forward is recorded with hooks "
            f"({c['conv_calls']} calls, {c['conv_shapes']} distinct shapes); each shape is timed alone on fresh "
            f"tensors and multiplied by how often it occurs. FLOPs count convolutions only "
            f"(2·Cin/groups·k³·Cout per output voxel); the network also runs "
            + ", ".join(f"{n} {k}" for k, n in c["other_modules"].items())
            + ".",
            "",
            "| quantity | value |",
            "|---|---|",
            f"| conv work per forward | {c['conv_gflop']:.1f} GFLOP |",
            f"| network forward | {_ms(c['forward_seconds'])} ({c['network_gflops']:.0f} GFLOP/s of conv work) |",
            f"| its convolutions alone | {_ms(c['isolated_conv_seconds'])} ({c['isolated_gflops']:.0f} GFLOP/s) |",
            f"| fraction (alone / in the network) | {c['fraction']:.0%} (target ≥{CONV_TARGET:.0%}) |",
            f"| conv inputs not contiguous | {c['non_contiguous_inputs']} of {c['conv_calls']} |",
        ]
        if c.get("conv_share_profiled") is not None:
            lines.append(f"| conv share of profiled self time | {c['conv_share_profiled']:.0%} |")
        lines.append("")
        if c.get("top_non_conv"):
            lines += [
                "What the network adds besides its convolutions (one profiled forward, self time):",
                "",
                "| op | calls | self time | share |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| `{r['op']}` | {r['calls']} | {_ms(r['seconds'])} | {r['share']:.1%} |" for r in c["top_non_conv"]
            ]
            lines.append("")
    if w:
        lines += [
            f"One {w['sampler']} denoising step ({w['net']}, {w['size']}³, fp32) as `denoise_step` runs it; "
            f"wrapper = IDWT → clamp → DWT of x0 plus the scheduler update (medians; parts timed separately).",
            "",
            "| part | time | share of the step |",
            "|---|---|---|",
        ]
        for key, label in (("forward", "network forward"), ("clamp", "IDWT, clamp, DWT"), ("scheduler", "DDIM update")):
            lines.append(f"| {label} | {_ms(w[key])} | {w[key] / w['step']:.1%} |")
        lines += [
            f"| wrapper (clamp + update) | {_ms(w['wrapper'])} | {w['share']:.1%} (target ≤{WRAPPER_TARGET:.0%}) |",
            f"| whole step | {_ms(w['step'])} | 100% (parts sum to {w['parts_over_step']:.0%}) |",
            "",
        ]
    return lines
