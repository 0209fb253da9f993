"""Measure WDM against the image-space 3D DDPM and PyWavelets; write a Markdown report, a PNG and the raw JSON.

Runs from the repository root without installing the package::

    python scripts/benchmark.py                         # full run: docs/performance.md, docs/images/performance.png
    python scripts/benchmark.py --quick --output_dir /tmp/bench   # harness check: tiny sizes, about a minute

Every time is the median of repeated runs; every ratio compares two numbers measured in the same
run on the same machine. Sections: wavelet transform speed, training step (time, memory) of WDM
vs the image-space DDPM with the same U-Net, per-sample sampling time per sampler, peak memory of
a denoising step (fp32, bf16 autocast) and of a training step with activation checkpointing off
and on, and sample quality of few-step samplers against DDPM-1000 on the demo data.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # repo root, for `wdm_bundle`

import fire  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from wdm_bundle import perf  # noqa: E402
from wdm_bundle.utils import as_bool, atomic_write  # noqa: E402

logger = logging.getLogger("benchmark")

#: (sampler, steps) rows of the sampling-time table; None = all T steps.
SAMPLERS = [("ddpm", None), ("ddim", 100), ("ddim", 50), ("ddim", 10), ("rflow", 30)]

FULL = {
    "wavelet_sizes": [128, 256], "train_sizes": [32, 64, 128], "train_net": "demo", "sampling_size": 32,
    "sampling_net": "demo", "memory_sizes": [128, 256], "checkpointing_size": 128, "repeats": 5,
    "num_train_timesteps": 1000, "quality_iterations": 1000, "quality_samples": 8, "demo_cases": 40,
    "demo_size": 32,
}
#: On a GPU the paper's own setting is within reach: paper U-Net, 128^3 sampling, 256^3 training memory.
GPU = {"train_net": "paper128", "sampling_net": "paper128", "sampling_size": 128, "checkpointing_size": 256}
QUICK = {
    "wavelet_sizes": [16, 32], "train_sizes": [16, 32], "train_net": "tiny", "sampling_size": 16,
    "sampling_net": "tiny", "memory_sizes": [16, 32], "checkpointing_size": 32, "repeats": 2,
    "num_train_timesteps": 50, "quality_iterations": 6, "quality_samples": 3, "demo_cases": 8, "demo_size": 32,
}


def _label(sampler: str, steps: int | None, T: int) -> str:
    return f"{sampler.upper() if sampler != 'rflow' else 'RFlow'}-{steps or T}"


def _memory_net(size: int, quick: bool) -> str:
    if quick:
        return "tiny"
    return "paper256" if size >= 256 else "paper128"


# ---------------------------------------------------------------- sections
def run_wavelet(cfg: dict, device: str) -> list[dict]:
    rows = []
    for size in cfg["wavelet_sizes"]:
        logger.info(f"wavelet transform at {size}^3")
        rows.append({"size": size, **perf.wavelet_speed(size, device, cfg["repeats"])})
    return rows


def run_training(cfg: dict, device: str) -> list[dict]:
    rows = []
    for size in cfg["train_sizes"]:
        row: dict = {"size": size, "net": cfg["train_net"], "batch": 1}
        for space in ("wavelet", "image"):
            logger.info(f"training step, {space} space, {size}^3")
            net = perf.build_network(cfg["train_net"], space)
            m = perf.training_step(net, size, device, batch=1, repeats=max(2, cfg["repeats"] - 2))
            row[f"{space}_time"], row[f"{space}_memory"] = m["time"], m["peak_memory"]
            del net
        rows.append(row)
    return rows


def run_sampling(cfg: dict, device: str) -> list[dict]:
    T, size = cfg["num_train_timesteps"], cfg["sampling_size"]
    chosen: dict[str, tuple[str, int | None]] = {}
    for sampler, steps in SAMPLERS:
        steps = None if steps is None else min(steps, T)
        chosen.setdefault(_label(sampler, steps, T), (sampler, steps))  # e.g. no DDIM-100 when T = 50 (quick)
    logger.info(f"sampling time at {size}^3, {', '.join(chosen)} taking turns")
    net = perf.build_network(cfg["sampling_net"])
    seconds = perf.sampling_times(net, size, list(chosen.values()), device, rounds=min(3, cfg["repeats"]),
                                  num_train_timesteps=T)
    return [{"sampler": label, "steps": steps or T, "size": size, "net": cfg["sampling_net"], "time": t}
            for (label, (_, steps)), t in zip(chosen.items(), seconds)]


def run_memory(cfg: dict, device: str, quick: bool) -> dict:
    native = perf.native_low_precision(device)
    inference = []
    for size in cfg["memory_sizes"]:
        net_name = _memory_net(size, quick)
        for space in ("wavelet", "image") if size <= 128 else ("wavelet",):
            net = perf.build_network(net_name, space)
            row = {"size": size, "net": net_name, "space": space}
            logger.info(f"denoising-step memory, {space} space, {size}^3, fp32")
            row["fp32"] = perf.denoising_step_memory(net, size, device)
            # bf16 without native support is ~200x slower: only the smallest quick size then, to test the harness
            if space == "wavelet" and (native or (quick and size == min(cfg["memory_sizes"]))):
                logger.info(f"denoising-step memory, {size}^3, bf16 autocast")
                row["bf16"] = perf.denoising_step_memory(net, size, device, torch.bfloat16)
            inference.append(row)
            del net
    size = cfg["checkpointing_size"]
    net_name = _memory_net(size, quick)
    training = {"size": size, "net": net_name, "batch": 1}
    for flag in (False, True):
        logger.info(f"training-step memory at {size}^3, activation checkpointing {flag}")
        key = "checkpointing" if flag else "plain"
        net = perf.build_network(net_name, activation_checkpointing=flag)
        start = time.perf_counter()
        try:
            m = perf.training_step_memory(net, size, device, breakdown=True)
            training[key], training["static"] = m["total"], m["static"]
        except torch.cuda.OutOfMemoryError:
            training[key] = None  # the point of checkpointing: the plain step may not fit
            torch.cuda.empty_cache()
        training[key + "_time"] = time.perf_counter() - start  # one profiled step
        del net
    return {"native_bf16": native, "inference": inference, "training": training}


def _held_out_images(data_dir: Path, out_dir: Path) -> Path:
    """Preprocess the demo test split exactly as training does and write it as NIfTI (the 'real' set)."""
    from monai.bundle import ConfigParser
    from monai.data import NibabelWriter

    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / "train.json"), str(REPO / "configs" / "demo.json")])
    parser.update({"dataset_dir": str(data_dir), "split": "test", "bundle_root": str(out_dir)})
    out_dir.mkdir(parents=True, exist_ok=True)
    preprocessing = parser.get_parsed_content("train#preprocessing")
    for i, item in enumerate(parser.get_parsed_content("train#datalist")):
        writer = NibabelWriter(output_dtype=np.float32)
        writer.set_data_array(preprocessing(item)["image"], channel_dim=0, squeeze_end_dims=True)
        writer.set_metadata({"affine": np.eye(4), "original_affine": np.eye(4)}, resample=False)
        writer.write(str(out_dir / f"real_{i:04d}.nii.gz"), verbose=False)
    return out_dir


def _workflow(configs: list[str], workflow_type: str, **override):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=[str(REPO / "configs" / c) for c in configs],
                        meta_file=str(REPO / "configs" / "metadata.json"), workflow_type=workflow_type, **override)
    wf.initialize()
    return wf


def _distances(fake_dir: Path, real_dir: Path) -> dict:
    """Mean-image RMSE and intensity-histogram W1 of samples vs held-out volumes (the demo learning check)."""
    import nibabel as nib
    from scipy.stats import wasserstein_distance

    def load(d: Path) -> np.ndarray:
        return np.stack([nib.load(str(f)).get_fdata(dtype=np.float32) for f in sorted(d.glob("*.nii.gz"))])

    fake, real = load(fake_dir), load(real_dir)
    return {"mean_image_rmse": float(np.sqrt(((fake.mean(0) - real.mean(0)) ** 2).mean())),
            "histogram_w1": float(wasserstein_distance(fake.ravel()[::7], real.ravel()[::7]))}


#: (sampler, steps, model) of the quality section; models by training objective (`--diffusion`)
QUALITY_RUNS = [("ddpm", None, "ddpm"), ("ddim", 50, "ddpm"), ("ddim", 10, "ddpm"), ("rflow", 30, "rflow"),
                ("rflow", 30, "rflow_x0")]


def quality_name(row: dict) -> str:
    """A quality row's name: the sampler, with the model when the sampler has more than one (``RFlow-30 (rflow_x0)``)."""
    model = row.get("model", "ddpm")
    return row["sampler"] if model in ("ddpm", "rflow") else f"{row['sampler']} ({model})"


def run_quality(cfg: dict, device: str, work_dir: Path, demo_data: str | None, bundles_given: dict[str, str | None],
                med3d_weights: str | None) -> dict:
    """Train demo models with the same budget (DDPM x0; RFlow velocity and RFlow x0 output), sample each way, score
    against held-out data. ``bundles_given``: {objective: bundle root of an already trained model, or None}."""
    from wdm_bundle.data.demo import make_demo_dataset
    from wdm_bundle.metrics import GenerationEvaluator

    T, iters, n = cfg["num_train_timesteps"], cfg["quality_iterations"], cfg["quality_samples"]
    if demo_data is None:
        demo_data = str(work_dir / "demo_data")
        if not (Path(demo_data) / "datalist.json").exists():
            logger.info("making demo data")
            make_demo_dataset(demo_data, num_cases=cfg["demo_cases"], size=cfg["demo_size"],
                              num_test=max(2, cfg["demo_cases"] // 5), seed=0, progress=False)
    real_dir = _held_out_images(Path(demo_data), work_dir / "real")
    common = {"dataset_dir": demo_data, "num_train_timesteps": T, "device": device}
    bundles, train_seconds = {}, {}
    for diffusion in dict.fromkeys(model for _, _, model in QUALITY_RUNS):
        given = bundles_given.get(diffusion)
        root = Path(given) if given else work_dir / f"train_{diffusion}"
        if not (root / "models" / "model.pt").exists():
            logger.info(f"training the {diffusion} demo model for {iters} iterations")
            wf = _workflow(["train.json", "demo.json"], "train", bundle_root=str(root), diffusion=diffusion,
                           num_iterations=iters, preview_every=0, log_every=max(1, iters // 10), overwrite=True,
                           **common)
            start = time.perf_counter()
            wf.run()
            train_seconds[diffusion] = time.perf_counter() - start
            wf.finalize()
        bundles[diffusion] = root
    rows = []
    for sampler, steps, model in QUALITY_RUNS:
        steps = None if steps is None else min(steps, T)
        label = _label(sampler, steps, T)
        name = quality_name({"sampler": label, "model": model})
        root = bundles[model]
        out = work_dir / "samples" / name
        shutil.rmtree(out, ignore_errors=True)
        logger.info(f"sampling {n} volumes with {name}")
        wf = _workflow(["inference.json", "demo.json"], "infer", bundle_root=str(root), output_dir=str(out),
                       num_samples=n, batch_size=n, sampler=sampler, num_inference_steps=steps, progress=False,
                       save_png=False, seed=1, **common)
        start = time.perf_counter()
        wf.run()
        seconds = time.perf_counter() - start
        metrics = GenerationEvaluator(real_dir, out, work_dir / "metrics" / name, value_range=(-1, 1),
                                      med3d_weights=med3d_weights, device=device, progress=False,
                                      num_preview=2).run()
        rows.append({"sampler": label, "model": model, "num_samples": n,
                     "time": seconds, "ms_ssim_fake": metrics["ms_ssim_fake"].get("value"),
                     "ms_ssim_real": metrics["ms_ssim_real"].get("value"), "fid": metrics["fid"].get("value"),
                     **_distances(out, real_dir)})
    return {"iterations": iters, "train_seconds": train_seconds, "demo_data": demo_data, "rows": rows,
            "med3d_weights": med3d_weights}


# ---------------------------------------------------------------- report
def _gb(b: float | None) -> str:
    return "–" if b is None else (f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.1f} MB")


def _s(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.2f} s"


#: lower is better for these quality metrics; MS-SSIM (diversity) should match the reference instead
_LOWER_IS_BETTER = ("mean_image_rmse", "histogram_w1", "fid")
QUALITY_NAMES = {"mean_image_rmse": "mean-image RMSE", "histogram_w1": "histogram W1", "fid": "FID",
                 "ms_ssim_fake": "MS-SSIM"}


def quality_deviations(row: dict, ref: dict) -> dict:
    """How much worse than ``ref`` each quality metric of ``row`` is, as a fraction of ``ref``'s value.

    RMSE, W1 and FID: lower is better, so only an increase counts (``max(0, row/ref - 1)``); a
    sampler that beats DDPM-1000 is within any tolerance of it. MS-SSIM measures diversity, where
    neither direction is better, so any change counts (``|row/ref - 1|``).
    """
    devs = {}
    for k in (*_LOWER_IS_BETTER, "ms_ssim_fake"):
        if row.get(k) is None or not ref.get(k):
            continue
        change = row[k] / ref[k] - 1
        devs[k] = max(0.0, change) if k in _LOWER_IS_BETTER else abs(change)
    return devs


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) rows; met is None when the run had no data for it."""
    out = []
    w = results.get("wavelet") or []
    if w:
        big = max(w, key=lambda r: r["size"])
        ratio = big["dwt_idwt"] / big["copy"]
        measured, best = f"{ratio:.1f}× the copy (`clone`)", ratio
        if big.get("copy_alloc") is not None:  # the copy given the same fresh memory as the transforms' outputs
            alloc = big["dwt_idwt"] / big["copy_alloc"]
            measured = f"{measured}; {alloc:.1f}× a copy into memory allocated like the outputs"
            best = min(best, alloc)
        if "dwt_into" in big:  # like for like without fresh memory: both write into existing tensors
            into = (big["dwt_into"] + big["idwt_into"]) / big["copy_into"]
            measured, best = f"{measured}; into existing memory {into:.1f}× a `copy_`", min(best, into)
        out.append((f"DWT+IDWT at {big['size']}³ within 2× of a tensor copy", measured, best <= 2))
        if "pywt_dwt" in big:
            speed = (big["pywt_dwt"] + big["pywt_idwt"]) / (big["dwt"] + big["idwt"])
            out.append((f"DWT+IDWT ≥5× faster than PyWavelets at {big['size']}³", f"{speed:.1f}×", speed >= 5))
    t = results.get("training") or []
    if t:
        big = max(t, key=lambda r: r["size"])
        speed = big["image_time"] / big["wavelet_time"]
        mem = big["wavelet_memory"] / big["image_memory"]
        out.append((f"WDM training step ≥4× faster than image-space DDPM ({big['size']}³)", f"{speed:.1f}×", speed >= 4))
        out.append((f"WDM training peak memory ≤0.4× image-space DDPM ({big['size']}³)", f"{mem:.2f}×", mem <= 0.4))
    # the target: DDIM-50 or RFlow-30, one sampler both >=20x faster and within 10% in quality
    fast_names = ("DDIM-50", "RFlow-30")
    s = {r["sampler"]: r["time"] for r in results.get("sampling") or []}
    ref_label = next((k for k in s if k.startswith("DDPM")), None)
    speed_ok: dict[str, bool] = {}
    for name in fast_names:
        if ref_label and name in s:
            speed = s[ref_label] / s[name]
            speed_ok[name] = speed >= 20
            out.append((f"{name} sampling ≥20× faster than {ref_label}", f"{speed:.1f}×", speed_ok[name]))
    q = (results.get("quality") or {}).get("rows") or []
    quality_ok: dict[str, bool] = {}  # per sampler: does any model sampled with it pass?
    if q:
        ref_row = q[0]
        for r in q[1:]:
            if r["sampler"] not in fast_names:
                continue
            devs = quality_deviations(r, ref_row)
            worst = max(devs, key=devs.get) if devs else None
            measured = (f"worst: {QUALITY_NAMES[worst]} {100 * devs[worst]:.0f}% "
                        f"{'worse' if worst in _LOWER_IS_BETTER else 'apart'}" if worst else "–")
            ok = None if worst is None else devs[worst] <= 0.10
            if ok is not None:
                quality_ok[r["sampler"]] = quality_ok.get(r["sampler"], False) or ok
            out.append((f"{quality_name(r)} quality within 10% of {ref_row['sampler']} on every metric", measured, ok))
    both = [n for n in fast_names if n in speed_ok and n in quality_ok]
    if both:
        good = [n for n in both if speed_ok[n] and quality_ok[n]]
        missed = "; ".join(f"{n} misses {' and '.join(w for w, ok in (('speed', speed_ok[n]), ('quality', quality_ok[n])) if not ok)}"
                           for n in both if n not in good)
        out.append(("DDIM-50 or RFlow-30: one sampler ≥20× faster and within 10% in quality",
                    ", ".join(good) + (f" (the other: {missed})" if good and missed else "") if good else missed,
                    bool(good)))
    m = (results.get("memory") or {}).get("training")
    if m and m["checkpointing"]:
        if m["plain"] is None:
            out.append(("Activation checkpointing cuts training peak memory ≥2×", "without it the step ran out of memory",
                        True))
        else:
            ratio = m["plain"] / m["checkpointing"]
            out.append(("Activation checkpointing cuts training peak memory ≥2×", f"{ratio:.1f}×", ratio >= 2))
    return out


def key_numbers(results: dict) -> dict[str, tuple[float, str]]:
    """{quantity: (value, kind)} of a run for rerun comparisons; kind "time" (s), "ratio" (of two times of
    the same run, as the targets use them), "memory" (bytes) or "quality"."""
    out: dict[str, tuple[float, str]] = {}
    for r in results.get("wavelet") or []:
        for k in ("copy", "dwt", "idwt", "dwt_idwt", "torch_dwt", "torch_idwt", "pywt_dwt", "pywt_idwt", "fill",
                  "copy_into", "dwt_into", "idwt_into", "copy_alloc"):
            if r.get(k) is not None:
                out[f"{k} {r['size']}³"] = (r[k], "time")
        out[f"(DWT+IDWT) / copy {r['size']}³"] = (r["dwt_idwt"] / r["copy"], "ratio")
        if r.get("copy_alloc") is not None:
            out[f"(DWT+IDWT) / copy into like memory {r['size']}³"] = (r["dwt_idwt"] / r["copy_alloc"], "ratio")
        if r.get("dwt_into") is not None:
            out[f"(DWT+IDWT into) / copy_ into {r['size']}³"] = ((r["dwt_into"] + r["idwt_into"]) / r["copy_into"],
                                                                  "ratio")
        if r.get("pywt_dwt") is not None:
            out[f"PyWavelets / ours {r['size']}³"] = ((r["pywt_dwt"] + r["pywt_idwt"]) / (r["dwt"] + r["idwt"]), "ratio")
    for r in results.get("training") or []:
        for space, name in (("wavelet", "WDM"), ("image", "DDPM")):
            out[f"{name} training step {r['size']}³"] = (r[f"{space}_time"], "time")
            out[f"{name} training memory {r['size']}³"] = (r[f"{space}_memory"], "memory")
        out[f"DDPM / WDM training step {r['size']}³"] = (r["image_time"] / r["wavelet_time"], "ratio")
    sampling = results.get("sampling") or []
    for r in sampling:
        out[f"{r['sampler']} sampling"] = (r["time"], "time")
    for r in sampling[1:]:
        out[f"{r['sampler']} speed-up vs {sampling[0]['sampler']}"] = (sampling[0]["time"] / r["time"], "ratio")
    m = results.get("memory") or {}
    for r in m.get("inference") or []:
        out[f"{'WDM' if r['space'] == 'wavelet' else 'DDPM'} denoising step memory {r['size']}³"] = (r["fp32"], "memory")
    t = m.get("training") or {}
    for k, name in (("plain", "without"), ("checkpointing", "with")):
        if t.get(k):
            out[f"training memory {t['size']}³ {name} checkpointing"] = (t[k], "memory")
    for r in (results.get("quality") or {}).get("rows") or []:
        for k in ("mean_image_rmse", "histogram_w1", "ms_ssim_fake", "fid"):
            if r.get(k) is not None:
                out[f"{quality_name(r)} {QUALITY_NAMES[k]}"] = (r[k], "quality")
    return out


def rerun_rows(results: dict, previous: dict) -> list[tuple[str, float, float, str]]:
    """(quantity, previous value, this run's value, kind) for every quantity both runs measured."""
    now, before = key_numbers(results), key_numbers(previous)
    return [(k, before[k][0], v, kind) for k, (v, kind) in now.items() if k in before]


def write_markdown(results: dict, path: Path, png_name: str | None) -> None:
    info, cfg = results["machine"], results["settings"]
    L = ["# Performance: WDM vs image-space 3D DDPM and PyWavelets", ""]
    if results["quick"]:
        L += ["> **Quick mode** (`--quick`): tiny sizes and 1–2 repeats to check the harness. These numbers say "
              "nothing about performance.", ""]
    L += [f"Generated by `{results['command']}` on {results['date']} ({results['seconds'] / 60:.1f} min).", "",
          "**Machine**: " + ", ".join(f"{k} {v}" for k, v in info.items() if v is not None) + ".", "",
          f"Times are medians of {cfg['repeats']} runs (after one warm-up) unless stated; ratios compare numbers "
          "from this same run. Memory is the peak of torch allocations (CUDA: `max_memory_allocated`; CPU: the "
          "allocation trace of `torch.profiler`), weights and optimizer state included; it is deterministic, "
          "times are not.", ""]
    if png_name:
        L += [f"![performance]({png_name})", ""]
    rows = targets(results)
    if rows:
        L += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        L += [f"| {t} | {m} | {'–' if ok is None else ('yes' if ok else '**no**')} |" for t, m, ok in rows] + [""]
    if results.get("wavelet"):
        native = any(r.get("native") for r in results["wavelet"])
        ours = "one-pass C kernel (`wdm_bundle.wavelets.native`)" if native else "PyTorch path (the C kernel did not build)"
        L += ["## Wavelet transform (one level, 3D Haar, float32, batch 1)", "",
              f"DWT and IDWT are what `dwt3d`/`idwt3d` run by default here: the {ours}. PyTorch path: the 8×8 "
              "matrix on gathered 2×2×2 blocks, used on GPUs and for other dtypes.", "",
              "| size | copy | DWT | IDWT | DWT+IDWT | DWT/copy, IDWT/copy, (DWT+IDWT)/copy | PyTorch path DWT / IDWT "
              "| conv3d DWT / conv_transpose3d IDWT | PyWavelets dwtn / idwtn | PyWavelets / ours |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["wavelet"]:
            pw = f"{_s(r.get('pywt_dwt'))} / {_s(r.get('pywt_idwt'))}"
            sp = (f"{(r['pywt_dwt'] + r['pywt_idwt']) / (r['dwt'] + r['idwt']):.1f}×" if "pywt_dwt" in r else "–")
            L.append(f"| {r['size']}³ | {_s(r['copy'])} | {_s(r['dwt'])} | {_s(r['idwt'])} | {_s(r['dwt_idwt'])} | "
                     f"{r['dwt'] / r['copy']:.1f}×, {r['idwt'] / r['copy']:.1f}×, {r['dwt_idwt'] / r['copy']:.1f}× | "
                     f"{_s(r.get('torch_dwt'))} / {_s(r.get('torch_idwt'))} | {_s(r['conv_dwt'])} / {_s(r['conv_idwt'])} | "
                     f"{pw} | {sp} |")
        L += ["", "The copy (`x.clone()`) reads and writes the volume once: the memory-bandwidth floor of any "
              "transform that does the same. Every call allocates its output, so on CPU all of these include the "
              "page faults of fresh memory (most of a 256³ copy's time); DWT+IDWT allocate twice, the copy once. "
              "The C kernel's outputs of 32 MiB and more (a 256³ volume) are advised as transparent huge pages "
              "(`native.empty`), which makes their first touch several times cheaper; `clone()` uses 4 KiB pages. "
              "The like-for-like floors are in the next table. At 128³ (8 MB, about a millisecond each) times vary "
              "several-fold between runs; the 256³ row is the meaningful one.", ""]
        into = [r for r in results["wavelet"] if "dwt_into" in r]
        if into:
            L += ["What fresh memory costs, and the kernel without it: `fill` writes zeros into a new tensor (4 KiB "
                  "page faults and one write, no reads); *copy, like memory* copies into a fresh tensor allocated "
                  "as the transforms allocate their outputs (same page faults as DWT and IDWT); `copy_`, DWT and "
                  "IDWT *into existing* write into existing tensors (`dwt3d_native(x, out=...)`), so they measure "
                  "reading and writing the volume only.", "",
                  "| size | fill a fresh tensor | fill / copy | copy, like memory | (DWT+IDWT) / copy, like memory "
                  "| copy_ into existing | DWT into existing | IDWT into existing "
                  "| DWT/copy_, IDWT/copy_, (DWT+IDWT)/copy_ |", "|---|---|---|---|---|---|---|---|---|"]
            for r in into:
                c, a = r["copy_into"], r.get("copy_alloc")
                like = f"{r['dwt_idwt'] / a:.1f}×" if a else "–"
                L.append(f"| {r['size']}³ | {_s(r['fill'])} | {r['fill'] / r['copy']:.2f} | {_s(a)} | {like} | "
                         f"{_s(c)} | {_s(r['dwt_into'])} | {_s(r['idwt_into'])} | {r['dwt_into'] / c:.1f}×, "
                         f"{r['idwt_into'] / c:.1f}×, {(r['dwt_into'] + r['idwt_into']) / c:.1f}× |")
            L.append("")
    if results.get("training"):
        L += ["## Training step: WDM vs image-space 3D DDPM, same U-Net", "",
              "One iteration as in `train.json` (DWT on the device, noising, forward, MSE, backward, Adam), batch 1.", "",
              "| size | U-Net | WDM time | DDPM time | speed-up | WDM peak memory | DDPM peak memory | memory ratio |",
              "|---|---|---|---|---|---|---|---|"]
        for r in results["training"]:
            L.append(f"| {r['size']}³ | {r['net']} {perf.NETWORKS[r['net']]['channels']} | {_s(r['wavelet_time'])} | "
                     f"{_s(r['image_time'])} | {r['image_time'] / r['wavelet_time']:.1f}× | {_gb(r['wavelet_memory'])} | "
                     f"{_gb(r['image_memory'])} | {r['wavelet_memory'] / r['image_memory']:.2f}× |")
        L.append("")
    if results.get("sampling"):
        ref = results["sampling"][0]["time"]
        r0 = results["sampling"][0]
        L += [f"## Sampling time per volume ({r0['size']}³ images, U-Net {r0['net']} "
              f"{perf.NETWORKS[r0['net']]['channels']}, batch 1)", "",
              f"The samplers take turns: {min(3, cfg['repeats'])} rounds, each sampling once with every sampler "
              "(after one warm-up call of the cheapest), so a drift of the machine's speed affects all alike; "
              "medians over the rounds. DDIM-50 makes 1/20 of DDPM-1000's network calls and the same work per "
              "call, so its speed-up is at most about 20× (costs per sample only lower it): measured values "
              "above or below 20× are drift of the machine between the rounds, and the ≥20× target can only "
              "be met robustly by a sampler with fewer calls (RFlow-30).", "",
              "| sampler | network calls | time per sample | speed-up vs " + r0["sampler"] + " |", "|---|---|---|---|"]
        L += [f"| {r['sampler']} | {r['steps']} | {_s(r['time'])} | {ref / r['time']:.1f}× |" for r in results["sampling"]]
        L.append("")
    mem = results.get("memory")
    if mem:
        L += ["## Peak memory", "", "One denoising step (network forward, image-space x0 clamp, DDIM update), batch 1:", "",
              "| size | U-Net | space | fp32 | bf16 autocast |", "|---|---|---|---|---|"]
        for r in mem["inference"]:
            bf = _gb(r["bf16"]) if "bf16" in r else ("not measured: no native bf16 on this CPU" if r["space"] == "wavelet" else "–")
            L.append(f"| {r['size']}³ | {r['net']} | {'WDM' if r['space'] == 'wavelet' else 'image-space DDPM'} | "
                     f"{_gb(r['fp32'])} | {bf} |")
        t = mem["training"]
        L += ["", f"One WDM training step at {t['size']}³ (U-Net {t['net']}, batch 1, Adam; weights, gradients and "
              f"Adam state: {_gb(t.get('static'))}, the rest is activations and temporaries):", "",
              "| activation checkpointing | peak memory | wall time of the step (under the memory profiler, 1 run) |", "|---|---|---|",
              f"| off | {_gb(t['plain']) if t['plain'] else 'out of memory'} | {_s(t['plain_time'])} |",
              f"| on | {_gb(t['checkpointing']) if t['checkpointing'] else 'out of memory'} | "
              f"{_s(t['checkpointing_time'])} |", ""]
        if t["plain"] and t["checkpointing"]:
            act = (t["plain"] - t["static"]) / (t["checkpointing"] - t["static"])
            L += [f"Reduction: {t['plain'] / t['checkpointing']:.1f}× of the peak, {act:.1f}× of the part above the "
                  "weights and optimizer state.", ""]
        if not mem["native_bf16"]:
            L += ["This CPU has no native bf16 (no AVX512-BF16/AMX): a bf16 conv3d runs about 200× slower than fp32 "
                  "here, so bf16 autocast is for GPUs and recent CPUs only.", ""]
    q = results.get("quality")
    if q:
        L += ["## Sample quality of fast samplers (demo data)", "",
              f"Demo models (`configs/demo.json`) trained with the same budget of {q['iterations']} iterations: "
              "x0 prediction (`--diffusion ddpm`) sampled with DDPM and DDIM; rectified flow sampled with RFlow, "
              "the network predicting the velocity (`--diffusion rflow`, as MAISI) or x0 (`--diffusion rflow_x0`: "
              "the same velocity loss, computed from the predicted x0); both rectified-flow models draw training "
              "timesteps logit-normally (the configs' default). "
              f"{q['rows'][0]['num_samples']} samples each, compared with the held-out demo test "
              "volumes. Lower is better for RMSE, W1 and FID; MS-SSIM (diversity) should be close to the real set's.", "",
              "| sampler | model | time for all samples | mean-image RMSE | histogram W1 | MS-SSIM (real: {}) | FID |".format(
                  f"{q['rows'][0]['ms_ssim_real']:.3f}" if q["rows"][0]["ms_ssim_real"] is not None else "–"),
              "|---|---|---|---|---|---|---|"]
        for r in q["rows"]:
            fid = "skipped (no --med3d_weights)" if r["fid"] is None else f"{r['fid']:.2f}"
            ms = "–" if r["ms_ssim_fake"] is None else f"{r['ms_ssim_fake']:.3f}"
            L.append(f"| {r['sampler']} | {r['model']} | {_s(r['time'])} | {r['mean_image_rmse']:.3f} | "
                     f"{r['histogram_w1']:.3f} | {ms} | {fid} |")
        L += ["", f"'Within 10% of {q['rows'][0]['sampler']}' (Targets): RMSE, W1 and FID at most 10% higher (lower is "
              "better, so beating it passes); MS-SSIM within 10% either way. With this few samples the metrics vary "
              "from run to run; compare the rerun table when there is one.", ""]
    prev = results.get("previous")
    if prev:
        rows = rerun_rows(results, prev)
        L += ["## Consistency with the previous run", "",
              f"This run against `{prev['json_name']}` of {prev['date']} (`{prev['command']}`), same machine kind. "
              "Changes are this run / previous − 1. Quantities whose code changed between the two runs differ by "
              "design (see the git log of `wdm_bundle/`); the rest show the run-to-run spread: memory and the "
              "quality metrics are deterministic, times are not. A shared or throttled machine changes all times "
              "of a run together; the ratios within a run (what the targets compare) cancel most of that.", ""]
        for kind, title in (("time", "Times"), ("ratio", "Ratios within a run"), ("memory", "Peak memory"),
                            ("quality", "Sample quality")):
            ch = [abs(v / p - 1) for _, p, v, k in rows if k == kind and p]
            if ch:
                L.append(f"- {title}: {len(ch)} quantities, median change {100 * float(np.median(ch)):.1f}%, "
                         f"largest {100 * max(ch):.1f}%.")
        fmt = {"time": _s, "ratio": lambda v: f"{v:.2f}×", "memory": _gb, "quality": lambda v: f"{v:.3f}"}
        L += ["", "| quantity | previous | this run | change |", "|---|---|---|---|"]
        L += [f"| {q} | {fmt[k](p)} | {fmt[k](v)} | {100 * (v / p - 1):+.1f}% |" for q, p, v, k in rows if p]
        L.append("")
    L += ["## Reproduce", "", f"```bash\n{results['command']}\n```", "",
          "Raw numbers: `" + results["json_name"] + "` next to this file.", ""]
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(L)))


def write_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    ax = axes[0]
    w = results.get("wavelet") or []
    if w:
        names = [("copy", "copy (clone)"), ("copy_alloc", "copy, like memory"), ("dwt", "DWT"), ("idwt", "IDWT"),
                 ("torch_dwt", "PyTorch-path DWT"), ("torch_idwt", "PyTorch-path IDWT"),
                 ("pywt_dwt", "PyWavelets DWT"), ("pywt_idwt", "PyWavelets IDWT")]
        shown = [n for n in names if w[0].get(n[0]) is not None]
        x, width = np.arange(len(w)), 0.85 / len(shown)
        for i, (k, label) in enumerate(shown):
            ax.bar(x + i * width, [r[k] * 1e3 for r in w], width, label=label)
        ax.set_xticks(x + width * (len(shown) - 1) / 2, [f"{r['size']}³" for r in w])
        ax.set_yscale("log")
        ax.set_ylabel("ms (median)")
        ax.set_title("Haar wavelet transform")
        ax.legend(fontsize=7)
    ax = axes[1]
    t = results.get("training") or []
    if t:
        sizes = [f"{r['size']}³" for r in t]
        x = np.arange(len(t))
        ax.bar(x - 0.2, [r["wavelet_time"] for r in t], 0.4, label="WDM")
        ax.bar(x + 0.2, [r["image_time"] for r in t], 0.4, label="image-space DDPM")
        ax.set_xticks(x, sizes)
        ax.set_yscale("log")
        ax.set_ylabel("s per training step")
        ax2 = ax.twinx()
        ax2.plot(x, [r["image_memory"] / r["wavelet_memory"] for r in t], "k.-", label="memory DDPM / WDM")
        ax2.set_ylabel("memory ratio DDPM / WDM")
        ax.set_title("Training step, same U-Net")
        ax.legend(fontsize=7, loc="upper left")
        ax2.legend(fontsize=7, loc="lower right")
    ax = axes[2]
    s = results.get("sampling") or []
    if s:
        ax.bar([r["sampler"] for r in s], [r["time"] for r in s], color="tab:green")
        ax.set_yscale("log")
        ax.set_ylabel("s per sample")
        ax.set_title(f"Sampling at {s[0]['size']}³")
        ax.tick_params(axis="x", labelsize=8)
    ax = axes[3]
    m = results.get("memory")
    if m:
        labels, values = [], []
        for r in m["inference"]:
            tag = "WDM" if r["space"] == "wavelet" else "DDPM"
            labels.append(f"{tag} {r['size']}³ fp32")
            values.append(r["fp32"])
            if "bf16" in r:
                labels.append(f"{tag} {r['size']}³ bf16")
                values.append(r["bf16"])
        tr = m["training"]
        labels += [f"train {tr['size']}³", f"train {tr['size']}³ ckpt"]
        values += [tr["plain"] or 0, tr["checkpointing"] or 0]
        ax.barh(labels, [v / 1e9 for v in values], color="tab:purple")
        ax.set_xlabel("peak GB")
        ax.set_title("Peak memory")
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(("QUICK MODE (harness check) – " if results["quick"] else "") + results["machine"].get("cpu", "")
                 + (f" / {results['machine']['gpu']}" if "gpu" in results["machine"] else ""))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


# ---------------------------------------------------------------- command line
def benchmark(
    quick: bool = False,
    output_dir: str | None = None,
    device: str | None = None,
    sections: str = "wavelet,training,sampling,memory,quality",
    demo_data: str | None = None,
    ddpm_bundle: str | None = None,
    rflow_bundle: str | None = None,
    rflow_x0_bundle: str | None = None,
    quality_iterations: int | None = None,
    med3d_weights: str | None = None,
    work_dir: str | None = None,
    threads: int | None = None,
    overwrite: bool = True,
    previous: str | None = None,
    report_from: str | None = None,
) -> str:
    """Run the benchmark and write ``performance.md``, ``images/performance.png`` and ``performance.json``.

    Example::

        python scripts/benchmark.py                                  # full run on this machine, into docs/
        python scripts/benchmark.py --quick --output_dir /tmp/bench  # harness check, about a minute
        python scripts/benchmark.py --sections wavelet,sampling      # some sections only
        python scripts/benchmark.py --ddpm_bundle runs/ddpm --rflow_bundle runs/rflow  # reuse trained demo models
        python scripts/benchmark.py --report_from docs/performance.json  # rewrite the report, measure nothing

    Args:
        quick: tiny sizes and few repeats (checks the harness; the numbers mean nothing).
        output_dir: folder of the Markdown and JSON (the PNG goes to ``<output_dir>/images``);
            default ``docs`` (full) or ``eval/benchmark_quick`` (quick).
        device: torch device; default CUDA if available, else CPU.
        sections: comma-separated subset of wavelet, training, sampling, memory, quality.
        demo_data: demo data folder for the quality section (default: made in ``work_dir``).
        ddpm_bundle, rflow_bundle, rflow_x0_bundle: bundle roots holding ``models/model.pt`` of demo
            models trained with ``--diffusion ddpm`` / ``rflow`` / ``rflow_x0``; missing ones are
            trained (same budget for all).
        quality_iterations: training iterations of each quality model (full default 1000).
        med3d_weights: MedicalNet resnet_50.pth for FID in the quality section.
        work_dir: scratch folder for trained models and samples (default: a temporary folder).
        threads: torch CPU threads (default: torch's choice).
        overwrite: replace an existing report in ``output_dir``.
        previous: ``performance.json`` of an earlier run to compare with (section "Consistency with
            the previous run"); default: the one being replaced in ``output_dir``, if any.
        report_from: ``performance.json`` of a run: rewrite its Markdown, plot and targets with this
            version of the script (into ``output_dir``, default the JSON's folder) without measuring.

    Returns:
        Path of the written Markdown file.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if report_from:
        return _rewrite_report(Path(report_from), Path(output_dir) if output_dir else None)
    quick = as_bool(quick, "quick")
    if threads:
        torch.set_num_threads(int(threads))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = dict(QUICK) if quick else {**FULL, **(GPU if torch.device(device).type == "cuda" else {})}
    if quality_iterations is not None:
        cfg["quality_iterations"] = int(quality_iterations)
    chosen = [s.strip() for s in (sections.split(",") if isinstance(sections, str) else sections) if s.strip()]
    unknown = sorted(set(chosen) - {"wavelet", "training", "sampling", "memory", "quality"})
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from wavelet, training, sampling, memory, quality.")
    out = Path(output_dir or (REPO / ("eval/benchmark_quick" if quick else "docs")))
    md_path, json_path = out / "performance.md", out / "performance.json"
    if md_path.exists() and not as_bool(overwrite, "overwrite"):
        raise FileExistsError(f"'{md_path}' exists; pass --overwrite true or another --output_dir.")
    command = "python scripts/benchmark.py" + " ".join(f" {a}" for a in sys.argv[1:]) if sys.argv[0].endswith(
        "benchmark.py") else f"benchmark(quick={quick}, sections={sections!r})"
    results: dict = {"quick": quick, "machine": perf.machine_info(device), "settings": cfg, "command": command,
                     "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "sections": chosen,
                     "json_name": json_path.name}
    prev_path = Path(previous) if previous else json_path
    if previous and not prev_path.is_file():
        raise FileNotFoundError(f"--previous '{previous}' is not a file.")
    if prev_path.is_file():
        prev = json.loads(prev_path.read_text())
        if prev.get("quick") == quick:
            prev.pop("previous", None)  # compare with that run only, not with its own predecessor
            results["previous"] = prev
    start = time.perf_counter()
    scratch = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="wdm_benchmark_"))
    try:
        if "wavelet" in chosen:
            results["wavelet"] = run_wavelet(cfg, device)
        if "training" in chosen:
            results["training"] = run_training(cfg, device)
        if "sampling" in chosen:
            results["sampling"] = run_sampling(cfg, device)
        if "memory" in chosen:
            results["memory"] = run_memory(cfg, device, quick)
        if "quality" in chosen:
            results["quality"] = run_quality(cfg, device, scratch, demo_data,
                                             {"ddpm": ddpm_bundle, "rflow": rflow_bundle, "rflow_x0": rflow_x0_bundle},
                                             med3d_weights)
    finally:
        if not work_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    results["seconds"] = time.perf_counter() - start
    _write_report(results, out)
    logger.info(f"wrote {out / 'performance.md'}, its plot and JSON in {results['seconds'] / 60:.1f} min")
    return str(md_path)


def _write_report(results: dict, out: Path) -> None:
    md_path, json_path, png_path = out / "performance.md", out / "performance.json", out / "images" / "performance.png"
    results["targets"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in targets(results)]
    out.mkdir(parents=True, exist_ok=True)
    write_plot(results, png_path)
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))
    write_markdown(results, md_path, str(png_path.relative_to(out)))


def _rewrite_report(json_path: Path, out: Path | None) -> str:
    if not json_path.is_file():
        raise FileNotFoundError(f"--report_from '{json_path}' is not a file.")
    try:
        results = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--report_from '{json_path}' is not valid JSON: {e}") from e
    if "machine" not in results or "date" not in results:
        raise ValueError(f"--report_from '{json_path}' is not a performance.json written by this script.")
    out = out or json_path.parent
    _write_report(results, out)
    logger.info(f"rewrote {out / 'performance.md'} from {json_path} (measured {results['date']})")
    return str(out / "performance.md")


if __name__ == "__main__":
    fire.Fire(benchmark)
