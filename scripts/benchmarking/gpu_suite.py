"""`scripts/benchmark.py --suite gpu`: the paper's settings on one GPU within a time budget, beside the paper's
A100 figures; writes ``performance_gpu.md`` and ``performance_gpu.json``.

Rows: per-sample time and peak memory of DDPM-1000, DDIM-50 and RFlow-30 at 128^3 / 256^3 (paper128 / paper256)
in fp32, bf16 autocast and torch.compile; the image-space DDPM at 128^3; a training step (fwd + bwd + Adam) with
and without activation checkpointing; one denoising step at 512^3 with 2 DWT levels. Sampling times are
extrapolated: the median of ``timed_steps`` consecutive denoising steps times the sampler's number of steps, plus
the per-sample costs (initial noise, final IDWT and clamp). Rows left when the budget runs out are reported as
skipped. ``--quick`` runs the same plan with the tiny net at 16^3 / 32^3 on the CPU (the numbers mean nothing).
"""

from __future__ import annotations

import gc
import json
import logging
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from wdm_bundle.utils import atomic_write

from . import timing
from .units import gb as _gb
from .units import seconds

__all__ = ["PAPER", "FULL", "QUICK", "SAMPLERS", "PRECISIONS", "plan", "run_gpu_suite", "markdown_gpu"]

logger = logging.getLogger("benchmark")

#: the paper's A100 40GB figures: DDPM-1000 per sample (memory in GB, seconds)
PAPER = {
    ("wavelet", 128): {"memory_gb": 2.55, "seconds": 35.0},
    ("wavelet", 256): {"memory_gb": 7.27, "seconds": 240.0},
    ("image", 128): {"memory_gb": 6.51, "seconds": 235.0},
}
#: (sampler, steps) of the per-sample rows
SAMPLERS = [("ddpm", 1000), ("ddim", 50), ("rflow", 30)]
PRECISIONS = ("fp32", "bf16", "compile")

FULL = {
    # (size, net) of the sampling and training rows
    "settings": [[128, "paper128"], [256, "paper256"]],
    # (size, net) of image-space DDPM-1000 rows (fp32)
    "image_settings": [[128, "paper128"]],
    # (size, wavelet levels, net) of the multi-level rows
    "levels": [[512, 2, "paper256"]],
    "timed_steps": 20,
    "warmup_steps": 2,
    "train_repeats": 3,
    "compile_backend": "inductor",
}
#: CPU harness check for CI: the same rows on the tiny net (torch.compile with the "eager" backend: dynamo without
#: code generation, which would take minutes on a CPU)
QUICK = {
    "settings": [[16, "tiny"], [32, "tiny"]],
    "image_settings": [[16, "tiny"]],
    "levels": [[32, 2, "tiny"]],
    "timed_steps": 2,
    "warmup_steps": 1,
    "train_repeats": 1,
    "compile_backend": "eager",
}


def _label(sampler: str, steps: int) -> str:
    return f"{'RFlow' if sampler == 'rflow' else sampler.upper()}-{steps}"


def plan(cfg: dict) -> list[dict]:
    """Every row the suite measures, in run order (cheap and most wanted first), without results."""
    rows = []
    for precision in PRECISIONS:
        for size, net in cfg["settings"]:
            for sampler, steps in SAMPLERS:
                rows.append(
                    {"kind": "sampling", "space": "wavelet", "size": size, "net": net, "precision": precision}
                    | {"sampler": _label(sampler, steps), "steps": steps, "levels": 1}
                )
        if precision == "fp32":
            for size, net in cfg["image_settings"]:
                rows.append(
                    {"kind": "sampling", "space": "image", "size": size, "net": net, "precision": "fp32"}
                    | {"sampler": "DDPM-1000", "steps": 1000, "levels": 1}
                )
            for size, net in cfg["settings"]:
                for ckpt in (False, True):
                    rows.append({"kind": "training", "size": size, "net": net, "checkpointing": ckpt})
            for size, levels, net in cfg["levels"]:
                for sampler, steps in SAMPLERS[1:]:
                    rows.append(
                        {"kind": "sampling", "space": "wavelet", "size": size, "net": net, "precision": "fp32"}
                        | {"sampler": _label(sampler, steps), "steps": steps, "levels": levels}
                    )
    return rows


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _nbytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


class _Nets:
    """The networks of the rows, built once per (net, space, levels, compiled) and dropped when the key changes."""

    def __init__(self, device: torch.device, backend: str) -> None:
        self.device, self.backend, self.key, self.net = device, backend, None, None
        self.compile_seconds: float | None = None

    def get(self, name: str, space: str, levels: int, size: int, compiled: bool):
        key = (name, space, levels, size, compiled)  # one per size: a compiled net then never sees a second shape
        if key != self.key:
            self.key, self.net, self.compile_seconds = None, None, None
            _free(self.device)
            try:
                net = timing.build_network(name, space, wavelet_levels=levels)
            except TypeError as e:
                if "wavelet_levels" in str(e):
                    raise _Skip("wavelet_levels not available") from e
                raise
            net = net.to(self.device).eval()
            if compiled:
                torch._dynamo.reset()  # else the second size recompiles the same code with dynamic shapes
                net = torch.compile(net, backend=self.backend, dynamic=False)
            self.net, self.key = net, key
        return self.net


class _Skip(Exception):
    pass


def _sampling_row(row: dict, nets: _Nets, cfg: dict, device: torch.device) -> dict:
    """Median seconds of ``timed_steps`` denoising steps from the start of the sampler's schedule, per-sample time
    (x steps + per-sample costs) and peak memory (CUDA: ``max_memory_allocated`` over the steps, weights and live
    tensors included; CPU: the profiler peak of one step + weights + x_t)."""
    from wdm_bundle.diffusion import WaveletDiffusionInferer, make_scheduler

    compiled = row["precision"] == "compile"
    net = nets.get(row["net"], row["space"], row["levels"], row["size"], compiled)
    sampler, steps = row["sampler"].split("-")[0].lower(), row["steps"]
    scheduler = make_scheduler(sampler, steps)
    inferer = WaveletDiffusionInferer(scheduler)
    coder = inferer._coder(net)
    size = row["size"]
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if row["precision"] == "bf16"
        else nullcontext()  # compile runs fp32
    )
    times = [int(t) for t in scheduler.timesteps]
    pairs = list(zip(times, times[1:] + [0]))
    n_warm, n_timed = cfg["warmup_steps"], min(cfg["timed_steps"], len(pairs))
    gen = torch.Generator(device=device).manual_seed(0)

    def noise() -> torch.Tensor:
        shape = coder.coefficient_shape((1, size, size, size))
        return torch.randn(1, *shape, generator=gen, device=device)

    def decode(x: torch.Tensor) -> torch.Tensor:
        return coder.decode(x).clamp(*inferer.data_range)

    x = noise()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), autocast:
        if compiled and nets.compile_seconds is None:  # the first call compiles: reported apart, never in a step
            start = time.perf_counter()
            inferer.denoise_step(x, *pairs[0], net, scheduler)
            timing.sync(device)
            nets.compile_seconds = time.perf_counter() - start
        for t, t_next in pairs[:n_warm]:
            inferer.denoise_step(x, t, t_next, net, scheduler)
        step_times = []
        for t, t_next in pairs[:n_timed]:
            timing.sync(device)
            start = time.perf_counter()
            x = inferer.denoise_step(x, t, t_next, net, scheduler)
            timing.sync(device)
            step_times.append(time.perf_counter() - start)
        per_sample = timing.median_time(lambda: decode(noise()), cfg["train_repeats"] + 2, 1, device)["median"]
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    else:
        with torch.no_grad(), autocast:
            step_peak = timing.peak_memory(lambda: inferer.denoise_step(x, *pairs[0], net, scheduler), device)
        peak = _nbytes(net.parameters()) + _nbytes([x]) + step_peak
    step = statistics.median(step_times)
    out = {
        "step_seconds": step,
        "timed_steps": n_timed,
        "per_sample_costs_seconds": per_sample,
        "sample_seconds": step * steps + per_sample,
        "peak_memory": peak,
    }
    if compiled:
        out["compile_seconds"] = nets.compile_seconds
    return out


def _training_row(row: dict, cfg: dict, device: torch.device) -> dict:
    """`timing.training_step`: median seconds and peak bytes of one fwd + bwd + Adam step (batch 1)."""
    net = timing.build_network(row["net"], activation_checkpointing=row["checkpointing"])
    try:
        m = timing.training_step(net, row["size"], device, repeats=cfg["train_repeats"], memory=True)
        return {"step_seconds": m["time"], "peak_memory": m["peak_memory"]}
    finally:
        del net
        _free(device)


def run_gpu_suite(cfg: dict, device: str | torch.device, budget_s: float) -> dict:
    """Measure every row of `plan` until ``budget_s`` seconds have passed; the rest are ``skipped``.

    Returns:
        ``{"rows": [plan row + results, or + "skipped": reason], "budget_s", "seconds"}``.
    """
    device = torch.device(device)
    deadline = time.perf_counter() + float(budget_s)
    start = time.perf_counter()
    nets = _Nets(device, cfg["compile_backend"])
    rows = []
    for row in plan(cfg):
        name = f"{row['kind']} {row['size']}³ " + " ".join(
            str(row[k]) for k in ("space", "sampler", "precision", "levels", "checkpointing") if k in row
        )
        if time.perf_counter() > deadline:
            rows.append({**row, "skipped": "time budget"})
            continue
        logger.info(f"gpu suite: {name}")
        try:
            result = (
                _training_row(row, cfg, device) if row["kind"] == "training" else _sampling_row(row, nets, cfg, device)
            )
        except _Skip as e:
            result = {"skipped": str(e)}
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not _is_oom(e):
                raise
            nets.key, nets.net = None, None
            result = {"skipped": "out of memory"}
        if result.get("skipped") == "out of memory":
            _free(device)  # here, not in the handler: the exception's frames held the step's tensors
        rows.append({**row, **result})
    nets.net = None
    _free(device)
    return {"rows": rows, "budget_s": float(budget_s), "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------- report
def _s(x: float | None) -> str:
    return seconds(x, 1)


def _paper(row: dict) -> str:
    p = PAPER.get((row["space"], row["size"]))
    if p is None or row["sampler"] != "DDPM-1000" or row["precision"] != "fp32" or row["levels"] != 1:
        return ""
    return f"{p['memory_gb']:.2f} GB, {p['seconds']:.0f} s"


def markdown_gpu(results: dict) -> str:
    """``performance_gpu.md`` of a `run_gpu_suite` run with its header fields."""
    info, cfg, rows = results["machine"], results["settings"], results["rows"]
    lines = ["# Performance on a GPU: the paper's settings", ""]
    if results["quick"]:
        lines += [
            "> **Quick mode** (`--suite gpu --quick`): tiny net, 16³–32³, on the CPU, to check the harness. "
            "Quick mode: numbers mean nothing.",
            "",
        ]
    lines += [
        f"Generated by `{results['command']}` on {results['date']} ({results['seconds'] / 60:.1f} min, "
        f"budget {results['budget_s'] / 60:.1f} min).",
        "",
        "**Machine**: " + ", ".join(f"{k} {v}" for k, v in info.items() if v is not None) + ".",
        "",
        f"Method: per-sample times are extrapolated, not sampled end to end: the median of "
        f"{cfg['timed_steps']} consecutive denoising steps from the start of the sampler's schedule (after "
        f"{cfg['warmup_steps']} warm-up steps), each step as `WaveletDiffusionInferer.denoise_step` runs it "
        "(network, IDWT → clamp → DWT of x0, scheduler update), times the sampler's steps, plus the per-sample "
        "costs (initial noise, final IDWT and clamp). Batch 1. Peak memory: CUDA `max_memory_allocated` over "
        "those steps (weights and live tensors included); on a CPU the `torch.profiler` peak of one step plus "
        "weights and x_t. bf16 = `torch.autocast` of the network (clamp, transforms and scheduler stay fp32); "
        f"compile = `torch.compile` (backend `{cfg['compile_backend']}`, fp32), its compile time (the first step) "
        "reported apart and excluded from the step time. Rows not reached within the time budget are marked "
        "skipped. The paper's figures (A100 40GB, DDPM-1000 per sample) stand beside our DDPM-1000 fp32 rows.",
        "",
        "## The paper's figures beside ours",
        "",
        "DDPM-1000 per sample, fp32, batch 1; the paper: A100 40GB.",
        "",
        "| setting | paper: memory | paper: time | ours: memory | ours: time |",
        "|---|---|---|---|---|",
    ]
    for (space, size), p in PAPER.items():
        ours = [
            r
            for r in rows
            if r["kind"] == "sampling"
            and (r["space"], r["size"], r["levels"]) == (space, size, 1)
            and r["sampler"] == "DDPM-1000"
            and r["precision"] == "fp32"
        ]
        if not ours:
            mine = "not measured (quick mode)" if results["quick"] else "not measured"
            mine = f"{mine} | –"
        elif "skipped" in ours[0]:
            mine = f"skipped: {ours[0]['skipped']} | –"
        else:
            mine = f"{_gb(ours[0]['peak_memory'])} | {_s(ours[0]['sample_seconds'])}"
        setting = f"{'WDM' if space == 'wavelet' else 'image-space DDPM'} {size}³"
        lines.append(f"| {setting} | {p['memory_gb']:.2f} GB | {p['seconds']:.0f} s | {mine} |")
    lines += [
        "",
        "## Sampling per volume",
        "",
        "| setting | sampler | precision | per step | per sample | peak memory | compile | paper (A100 40GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["kind"] == "sampling" and r["levels"] == 1):
        setting = f"{'WDM' if r['space'] == 'wavelet' else 'image-space DDPM'} {r['size']}³ ({r['net']})"
        lines.append(_sampling_line(r, setting))
    lines += ["", "## Training step", "", "| setting | checkpointing | time | peak memory |", "|---|---|---|---|"]
    for r in (r for r in rows if r["kind"] == "training"):
        setting = f"WDM {r['size']}³ ({r['net']})"
        if "skipped" in r:
            lines.append(f"| {setting} | {'on' if r['checkpointing'] else 'off'} | {r['skipped']} | – |")
        else:
            lines.append(
                f"| {setting} | {'on' if r['checkpointing'] else 'off'} | {_s(r['step_seconds'])} | "
                f"{_gb(r['peak_memory'])} |"
            )
    lines += [
        "",
        "## Multi-level wavelets",
        "",
        "Two DWT levels (64 sub-bands at 1/4 of the size per axis); per-sample times extrapolated from denoising "
        "steps as above.",
        "",
        "| setting | sampler | precision | per step | per sample | peak memory | compile | paper (A100 40GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["kind"] == "sampling" and r["levels"] != 1):
        lines.append(_sampling_line(r, f"WDM {r['size']}³, {r['levels']} levels ({r['net']})"))
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        "python scripts/benchmark.py --suite gpu                  # this report, into docs/ (about 8 minutes)",
        "python scripts/benchmark.py --suite gpu --quick --output_dir /tmp/gpu  # harness check on a CPU",
        "```",
        "",
    ]
    return "\n".join(lines)


def _sampling_line(r: dict, setting: str) -> str:
    if "skipped" in r:
        return f"| {setting} | {r['sampler']} | {r['precision']} | skipped: {r['skipped']} | – | – | – | {_paper(r)} |"
    compile_s = _s(r.get("compile_seconds")) if r["precision"] == "compile" else ""
    return (
        f"| {setting} | {r['sampler']} | {r['precision']} | {_s(r['step_seconds'])} | {_s(r['sample_seconds'])} | "
        f"{_gb(r['peak_memory'])} | {compile_s} | {_paper(r)} |"
    )


def run(quick: bool, out: Path, device: str, budget_s: float, overwrite: bool, command: str, date: str) -> str:
    """Measure the suite and write ``performance_gpu.md`` and ``performance_gpu.json`` into ``out``."""
    md_path, json_path = out / "performance_gpu.md", out / "performance_gpu.json"
    if md_path.exists() and not overwrite:
        raise FileExistsError(f"'{md_path}' exists; pass --overwrite true or another --output_dir.")
    if torch.device(device).type != "cuda" and not quick:
        logger.warning("gpu suite on a CPU: the paper's sizes take hours here; rows past the budget are skipped")
    cfg = dict(QUICK if quick else FULL)
    results = {
        "suite": "gpu",
        "quick": quick,
        "machine": timing.machine_info(device),
        "settings": cfg,
        "command": command,
        "date": date,
        "paper": [{"space": s, "size": n, **v, "sampler": "DDPM-1000"} for (s, n), v in PAPER.items()],
    }
    results.update(run_gpu_suite(cfg, device, budget_s))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))
    atomic_write(md_path, lambda tmp: Path(tmp).write_text(markdown_gpu(results)))
    return str(md_path)
