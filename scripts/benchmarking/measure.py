"""The benchmark's sections: run each measurement of `scripts/benchmark.py` and return its rows (plain dicts).

Sizes and repeats come from a settings dict (`FULL`, `GPU`, `QUICK`); the quality section trains demo models
through the bundle configs, samples them and scores the samples.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import timing

__all__ = [
    "SAMPLERS",
    "FULL",
    "GPU",
    "QUICK",
    "QUALITY_RUNS",
    "SECTIONS",
    "quality_name",
    "run_wavelet",
    "run_training",
    "run_sampling",
    "run_memory",
    "run_quality",
    "score_samples",
    "parse_sections",
    "run_sections",
]

logger = logging.getLogger("benchmark")

#: the repository root: the bundle configs of the quality section
REPO = Path(__file__).resolve().parents[2]
#: the sections, in the order they run
SECTIONS = ("wavelet", "training", "sampling", "memory", "efficiency", "objectives", "quality", "fewstep", "levels")

#: (sampler, steps) rows of the sampling-time table; None = all T steps.
SAMPLERS = [("ddpm", None), ("ddim", 100), ("ddim", 50), ("ddim", 10), ("rflow", 30)]

FULL = {
    "wavelet_sizes": [128, 256],
    "train_sizes": [32, 64, 128],
    "train_net": "demo",
    "sampling_size": 32,
    "sampling_net": "demo",
    "memory_sizes": [128, 256],
    "checkpointing_size": 128,
    "repeats": 5,
    "num_train_timesteps": 1000,
    "quality_iterations": 1000,
    "quality_samples": 8,
    "demo_cases": 40,
    "demo_size": 32,
    # (size, wavelet levels) of extra denoising-step memory rows, with the 256^3 network
    "memory_levels": [[512, 2]],
    # training-step memory with checkpointing only (without it these do not fit this machine's RAM)
    "checkpointing_only_sizes": [256],
    "efficiency_net": "paper128",
    "efficiency_size": 128,
    "objective_stages": [250, 500, 750, 1000, 1500],
    "objective_reference": 1500,
    "objective_cap": 750,
    "objective_options": None,
    "study_samples": 8,
    "fewstep_seeds": [1, 2, 3],
    "fewstep_runs": None,
    "levels_size": 64,
    "levels_cases": 40,
    "levels_iterations": 300,
    "levels_batch_size": 2,
}
#: On a GPU the paper's own setting is within reach: paper U-Net, 128^3 sampling, 256^3 training memory.
GPU = {
    "train_net": "paper128",
    "sampling_net": "paper128",
    "sampling_size": 128,
    "checkpointing_size": 256,
    "checkpointing_only_sizes": [],
}
QUICK = {
    "wavelet_sizes": [16, 32],
    "train_sizes": [16, 32],
    "train_net": "tiny",
    "sampling_size": 16,
    "sampling_net": "tiny",
    "memory_sizes": [16, 32],
    "checkpointing_size": 32,
    "repeats": 2,
    "num_train_timesteps": 50,
    "quality_iterations": 6,
    "quality_samples": 3,
    "demo_cases": 8,
    "demo_size": 32,
    "memory_levels": [[64, 2]],
    "checkpointing_only_sizes": [16],
    "efficiency_net": "tiny",
    "efficiency_size": 16,
    "objective_stages": [3, 6],
    "objective_reference": 6,
    "objective_cap": 3,
    "objective_options": 2,
    "study_samples": 2,
    "fewstep_seeds": [1],
    "fewstep_runs": 3,
    "levels_size": 32,
    "levels_cases": 8,
    "levels_iterations": 3,
    "levels_batch_size": 2,
}


def _label(sampler: str, steps: int | None, num_t: int) -> str:
    return f"{sampler.upper() if sampler != 'rflow' else 'RFlow'}-{steps or num_t}"


def _memory_net(size: int, quick: bool) -> str:
    if quick:
        return "tiny"
    return "paper256" if size >= 256 else "paper128"


# ---------------------------------------------------------------- sections
def run_wavelet(cfg: dict, device: str) -> list[dict]:
    rows = []
    for size in cfg["wavelet_sizes"]:
        logger.info(f"wavelet transform at {size}^3")
        rows.append({"size": size, **timing.wavelet_speed(size, device, cfg["repeats"])})
    return rows


def run_training(cfg: dict, device: str) -> list[dict]:
    rows = []
    for size in cfg["train_sizes"]:
        row: dict = {"size": size, "net": cfg["train_net"], "batch": 1}
        for space in ("wavelet", "image"):
            logger.info(f"training step, {space} space, {size}^3")
            net = timing.build_network(cfg["train_net"], space)
            m = timing.training_step(net, size, device, batch=1, repeats=max(2, cfg["repeats"] - 2))
            row[f"{space}_time"], row[f"{space}_memory"] = m["time"], m["peak_memory"]
            del net
        rows.append(row)
    return rows


def run_sampling(cfg: dict, device: str) -> list[dict]:
    num_t, size = cfg["num_train_timesteps"], cfg["sampling_size"]
    chosen: dict[str, tuple[str, int | None]] = {}
    for sampler, steps in SAMPLERS:
        steps = None if steps is None else min(steps, num_t)
        chosen.setdefault(_label(sampler, steps, num_t), (sampler, steps))  # e.g. no DDIM-100 when T = 50 (quick)
    logger.info(f"sampling time at {size}^3, {', '.join(chosen)} taking turns")
    net = timing.build_network(cfg["sampling_net"])
    seconds = timing.sampling_times(
        net, size, list(chosen.values()), device, rounds=min(3, cfg["repeats"]), num_train_timesteps=num_t
    )
    return [
        {"sampler": label, "steps": steps or num_t, "size": size, "net": cfg["sampling_net"], "time": t}
        for (label, (_, steps)), t in zip(chosen.items(), seconds)
    ]


def run_memory(cfg: dict, device: str, quick: bool) -> dict:
    native = timing.native_low_precision(device)
    inference = []
    for size in cfg["memory_sizes"]:
        net_name = _memory_net(size, quick)
        for space in ("wavelet", "image") if size <= 128 else ("wavelet",):
            net = timing.build_network(net_name, space)
            row = {"size": size, "net": net_name, "space": space}
            logger.info(f"denoising-step memory, {space} space, {size}^3, fp32")
            row["fp32"] = timing.denoising_step_memory(net, size, device)
            # bf16 without native support is ~200x slower: only the smallest quick size then, to test the harness
            if space == "wavelet" and (native or (quick and size == min(cfg["memory_sizes"]))):
                logger.info(f"denoising-step memory, {size}^3, bf16 autocast")
                row["bf16"] = timing.denoising_step_memory(net, size, device, torch.bfloat16)
            inference.append(row)
            del net
    for size, levels in cfg["memory_levels"]:
        net_name = "tiny" if quick else "paper256"  # level 2 at 512^3: the coefficients of a level-1 256^3 volume
        logger.info(f"denoising-step memory, {size}^3 at wavelet level {levels}, fp32")
        net = timing.build_network(net_name, wavelet_levels=levels)
        row = {"size": size, "net": net_name, "space": "wavelet", "levels": levels}
        row["fp32"] = timing.denoising_step_memory(net, size, device)
        inference.append(row)
        del net
    size = cfg["checkpointing_size"]
    net_name = _memory_net(size, quick)
    training = {"size": size, "net": net_name, "batch": 1}
    for flag in (False, True):
        logger.info(f"training-step memory at {size}^3, activation checkpointing {flag}")
        key = "checkpointing" if flag else "plain"
        net = timing.build_network(net_name, activation_checkpointing=flag)
        start = time.perf_counter()
        try:
            m = timing.training_step_memory(net, size, device, breakdown=True)
            training[key], training["static"] = m["total"], m["static"]
        except torch.cuda.OutOfMemoryError:
            training[key] = None  # the point of checkpointing: the plain step may not fit
            torch.cuda.empty_cache()
        training[key + "_time"] = time.perf_counter() - start  # one profiled step
        del net
    return {
        "native_bf16": native,
        "inference": inference,
        "training": training,
        "checkpointed_training": [
            _checkpointed_training(size, device, quick) for size in cfg["checkpointing_only_sizes"]
        ],
    }


def _checkpointed_training(size: int, device: str, quick: bool) -> dict:
    """Peak memory of one training step with activation checkpointing at ``size``^3 (the step without it would
    not fit this machine's RAM)."""
    net_name = _memory_net(size, quick)
    logger.info(f"training-step memory at {size}^3, activation checkpointing on")
    net = timing.build_network(net_name, activation_checkpointing=True)
    start = time.perf_counter()
    m = timing.training_step_memory(net, size, device, breakdown=True)
    return {"size": size, "net": net_name, "batch": 1, **m, "seconds": time.perf_counter() - start}


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

    wf = ConfigWorkflow(
        config_file=[str(REPO / "configs" / c) for c in configs],
        meta_file=str(REPO / "configs" / "metadata.json"),
        workflow_type=workflow_type,
        **override,
    )
    wf.initialize()
    return wf


def _distances(fake_dir: Path, real_dir: Path) -> dict:
    """Mean-image RMSE and intensity-histogram W1 of samples vs held-out volumes (the demo learning check)."""
    import nibabel as nib
    from scipy.stats import wasserstein_distance

    def load(d: Path) -> np.ndarray:
        return np.stack([nib.load(str(f)).get_fdata(dtype=np.float32) for f in sorted(d.glob("*.nii.gz"))])

    fake, real = load(fake_dir), load(real_dir)
    return {
        "mean_image_rmse": float(np.sqrt(((fake.mean(0) - real.mean(0)) ** 2).mean())),
        "histogram_w1": float(wasserstein_distance(fake.ravel()[::7], real.ravel()[::7])),
    }


#: (sampler, steps, model) of the quality section; models by training objective (`--diffusion`)
QUALITY_RUNS = [
    ("ddpm", None, "ddpm"),
    ("ddim", 50, "ddpm"),
    ("ddim", 10, "ddpm"),
    ("rflow", 30, "rflow"),
    ("rflow", 30, "rflow_x0"),
]


def quality_name(row: dict) -> str:
    """A quality row's name: the sampler, with the model when the sampler has more than one (``RFlow-30 (rflow_x0)``)."""
    model = row.get("model", "ddpm")
    return row["sampler"] if model in ("ddpm", "rflow") else f"{row['sampler']} ({model})"


def _demo_data(cfg: dict, work_dir: Path, demo_data: str | None) -> str:
    """The demo data folder of the quality section: ``demo_data``, else made once in ``work_dir``."""
    from wdm_bundle.data.demo import make_demo_dataset

    if demo_data is not None:
        return demo_data
    made = str(work_dir / "demo_data")
    if not (Path(made) / "datalist.json").exists():
        logger.info("making demo data")
        num_test = max(2, cfg["demo_cases"] // 5)
        make_demo_dataset(
            made, num_cases=cfg["demo_cases"], size=cfg["demo_size"], num_test=num_test, seed=0, progress=False
        )
    return made


def _train_models(cfg: dict, work_dir: Path, common: dict, bundles_given: dict[str, str | None]):
    """{objective: bundle root} of every model of `QUALITY_RUNS`, training the missing ones with the same budget;
    and {objective: seconds} of those trained now."""
    iters = cfg["quality_iterations"]
    bundles, train_seconds = {}, {}
    for diffusion in dict.fromkeys(model for _, _, model in QUALITY_RUNS):
        given = bundles_given.get(diffusion)
        root = Path(given) if given else work_dir / f"train_{diffusion}"
        if not (root / "models" / "model.pt").exists():
            logger.info(f"training the {diffusion} demo model for {iters} iterations")
            budget = {"num_iterations": iters, "preview_every": 0, "log_every": max(1, iters // 10)}
            options = {"bundle_root": str(root), "diffusion": diffusion, "overwrite": True, **budget, **common}
            wf = _workflow(["train.json", "demo.json"], "train", **options)
            start = time.perf_counter()
            wf.run()
            train_seconds[diffusion] = time.perf_counter() - start
            wf.finalize()
        bundles[diffusion] = root
    return bundles, train_seconds


def score_samples(
    root: Path,
    name: str,
    sampling: dict,
    common: dict,
    work_dir: Path,
    real_dir: Path,
    med3d_weights: str | None = None,
) -> dict:
    """Sample the demo model in bundle ``root`` with ``sampling`` (`inference.json` overrides: ``num_samples``,
    ``sampler``, ``num_inference_steps``, ``seed``, ...) into ``work_dir/samples/<name>`` and score the samples
    against ``real_dir``: {time, num_samples, ms_ssim_fake, ms_ssim_real, fid, mean_image_rmse, histogram_w1}."""
    from wdm_bundle.reports import GenerationEvaluator

    out = work_dir / "samples" / name
    shutil.rmtree(out, ignore_errors=True)
    logger.info(f"sampling {sampling['num_samples']} volumes: {name}")
    options = {"bundle_root": str(root), "output_dir": str(out), "progress": False, "save_png": False, **common}
    wf = _workflow(["inference.json", "demo.json"], "infer", **sampling, **options)
    start = time.perf_counter()
    wf.run()
    seconds = time.perf_counter() - start
    metrics = GenerationEvaluator(
        real_dir,
        out,
        work_dir / "metrics" / name,
        data_range=(-1, 1),
        med3d_weights=med3d_weights,
        device=common["device"],
        progress=False,
        num_preview=2,
    ).run()
    values = {k: metrics[k].get("value") for k in ("ms_ssim_fake", "ms_ssim_real", "fid")}
    return {"time": seconds, "num_samples": sampling["num_samples"], **values, **_distances(out, real_dir)}


def _sample_and_score(
    run: tuple, root: Path, cfg: dict, common: dict, work_dir: Path, real_dir: Path, med3d_weights: str | None
) -> dict:
    """One quality row: sample ``cfg["quality_samples"]`` volumes with ``run`` = (sampler, steps, model) and score
    them against ``real_dir``."""
    (sampler, steps, model), num_t, n = run, cfg["num_train_timesteps"], cfg["quality_samples"]
    steps = None if steps is None else min(steps, num_t)
    label = _label(sampler, steps, num_t)
    name = quality_name({"sampler": label, "model": model})
    sampling = {"num_samples": n, "batch_size": n, "sampler": sampler, "num_inference_steps": steps, "seed": 1}
    scores = score_samples(root, name, sampling, common, work_dir, real_dir, med3d_weights)
    return {"sampler": label, "model": model, **scores}


def run_quality(
    cfg: dict,
    device: str,
    work_dir: Path,
    demo_data: str,
    real_dir: Path,
    bundles_given: dict[str, str | None],
    med3d_weights: str | None,
) -> dict:
    """Train demo models with the same budget (DDPM x0; RFlow velocity and RFlow x0 output), sample each way, score
    against held-out data. ``bundles_given``: {objective: bundle root of an already trained model, or None}."""
    common = {"dataset_dir": demo_data, "num_train_timesteps": cfg["num_train_timesteps"], "device": device}
    bundles, train_seconds = _train_models(cfg, work_dir, common, bundles_given)
    rows = [
        _sample_and_score(run, bundles[run[2]], cfg, common, work_dir, real_dir, med3d_weights) for run in QUALITY_RUNS
    ]
    return {
        "iterations": cfg["quality_iterations"],
        "train_seconds": train_seconds,
        "demo_data": demo_data,
        "rows": rows,
        "med3d_weights": med3d_weights,
        "bundles": {k: str(v) for k, v in bundles.items()},
    }


def parse_sections(sections: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"wavelet,sampling"`` (or a list, as ``fire`` passes ``a,b``) -> the section names; unknown names raise."""
    chosen = [s.strip() for s in (sections.split(",") if isinstance(sections, str) else sections) if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}.")
    return chosen


def run_sections(
    chosen: list[str],
    cfg: dict,
    device: str,
    quick: bool,
    work_dir: str | None = None,
    demo_data: str | None = None,
    bundles_given: dict[str, str | None] | None = None,
    med3d_weights: str | None = None,
) -> dict:
    """{section: rows} of each section in ``chosen`` (in `SECTIONS` order); the sections that train and sample do
    so in ``work_dir`` (default: a temporary folder, removed afterwards)."""
    from . import efficiency, fewstep, studies

    scratch = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="wdm_benchmark_"))
    bundles_given = dict(bundles_given or {})
    demo: dict = {}

    def data() -> tuple[str, Path]:
        if not demo:
            demo["dir"] = _demo_data(cfg, scratch, demo_data)
            demo["real"] = _held_out_images(Path(demo["dir"]), scratch / "real")
        return demo["dir"], demo["real"]

    def fast(results: dict) -> list[dict]:
        quality = results.get("quality") or run_quality(cfg, device, scratch, *data(), bundles_given, med3d_weights)
        root = Path(quality["bundles"]["ddpm"])
        runs = fewstep.FEWSTEP_RUNS[: cfg["fewstep_runs"]]
        return fewstep.run_fewstep(root, *data(), scratch, device, cfg, quality["rows"][0], runs=runs)

    runs = {
        "wavelet": lambda _: run_wavelet(cfg, device),
        "training": lambda _: run_training(cfg, device),
        "sampling": lambda _: run_sampling(cfg, device),
        "memory": lambda _: run_memory(cfg, device, quick),
        "efficiency": lambda _: efficiency.run_efficiency(cfg, device),
        "objectives": lambda _: studies.run_objectives(cfg, device, scratch, *data()),
        "quality": lambda _: run_quality(cfg, device, scratch, *data(), bundles_given, med3d_weights),
        "fewstep": fast,
        "levels": lambda _: studies.run_levels(cfg, device, scratch),
    }
    results: dict = {}
    try:
        for name in SECTIONS:
            if name in chosen:
                start = time.perf_counter()
                try:
                    results[name] = runs[name](results)
                except Exception as e:  # one failed section must not lose the others' minutes of measuring
                    logger.exception(f"section '{name}' failed")
                    results.setdefault("failed", {})[name] = f"{type(e).__name__}: {e}"
                results.setdefault("section_seconds", {})[name] = time.perf_counter() - start
        return results
    finally:
        if not work_dir:
            shutil.rmtree(scratch, ignore_errors=True)
