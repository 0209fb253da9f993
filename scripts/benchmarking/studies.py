"""Training studies of the benchmark: which objective reaches the paper's quality sooner, and what a second wavelet
level costs in quality.

Both train demo models through the bundle configs (`train.json` + `demo.json`), sample them with a fixed sampler
and seed, and score the samples against held-out demo volumes (mean-image RMSE, histogram W1, MS-SSIM diversity).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from . import measure

__all__ = ["OBJECTIVES", "reached", "run_objectives", "run_levels"]

logger = logging.getLogger("benchmark")

#: (name, train.json overrides) of the objective study; the first is the paper's (x0 target, plain MSE, uniform t).
OBJECTIVES = [
    ("x0, uniform t (paper)", {}),
    ("min-SNR-5 weights", {"loss_weighting": "min_snr"}),
    ("ε-loss weights (SNR, capped)", {"loss_weighting": "eps"}),
    ("v-loss weights (SNR + 1)", {"loss_weighting": "v"}),
    ("logit-normal t", {"ddpm_timestep_draw": "logit-normal"}),
]

#: the sampler every study scores with: DDIM-50 is within 10% of DDPM-1000 on every demo metric at 1/20 the cost
STUDY_SAMPLER = ("ddim", 50)


def _train_to(root: Path, iterations: int, common: dict, overrides: dict) -> float:
    """Train (or resume) the demo model in ``root`` up to ``iterations``; seconds spent."""
    resume = (root / "models" / "model.pt").exists()
    budget = {"num_iterations": iterations, "preview_every": 0, "log_every": max(1, iterations // 5)}
    options = {"bundle_root": str(root), "resume": resume, "overwrite": not resume, **budget, **common, **overrides}
    wf = measure._workflow(["train.json", "demo.json"], "train", **options)
    start = time.perf_counter()
    wf.run()
    seconds = time.perf_counter() - start
    wf.finalize()
    return seconds


def _score(root: Path, name: str, cfg: dict, common: dict, work_dir: Path, real_dir: Path) -> dict:
    sampler, steps = STUDY_SAMPLER
    n = cfg["study_samples"]
    sampling = {"num_samples": n, "batch_size": n, "sampler": sampler, "num_inference_steps": steps, "seed": 1}
    return measure.score_samples(root, name, sampling, common, work_dir, real_dir)


def reached(row: dict, ref: dict) -> bool:
    """Whether samples are as good as ``ref``'s: mean-image RMSE and histogram W1 no higher."""
    return row["mean_image_rmse"] <= ref["mean_image_rmse"] and row["histogram_w1"] <= ref["histogram_w1"]


def run_objectives(cfg: dict, device: str, work_dir: Path, demo_data: str, real_dir: Path) -> dict:
    """Iterations each option of `OBJECTIVES` needs to reach the samples the paper's objective gives after
    ``cfg["objective_reference"]`` iterations.

    The paper's objective trains through all ``cfg["objective_stages"]`` (resuming, which is exact); every other
    option (the first ``cfg["objective_options"]``, None = all) trains stage by stage until its samples are as good
    (`reached`) or ``cfg["objective_cap"]``. The
    reference model's stage at ``cfg["quality_iterations"]`` is kept as the quality section's x0 model
    (``work_dir/train_ddpm``: the same config, seed and iterations, so the same weights).
    """
    stages, ref_iters, cap = cfg["objective_stages"], cfg["objective_reference"], cfg["objective_cap"]
    common = {"dataset_dir": demo_data, "num_train_timesteps": cfg["num_train_timesteps"], "device": device}
    rows, ref = [], None
    for index, (name, overrides) in enumerate(OBJECTIVES[: cfg["objective_options"]]):
        root = work_dir / "objectives" / f"option_{index}"
        shutil.rmtree(root, ignore_errors=True)
        row: dict = {"name": name, "overrides": overrides, "curve": [], "reached_at": None, "train_seconds": 0.0}
        for stage in stages:
            if stage > (ref_iters if ref is None else cap):
                break
            logger.info(f"objective study: {name}, training to {stage} iterations")
            row["train_seconds"] += _train_to(root, stage, {**common, "diffusion": "ddpm"}, overrides)
            if ref is None and stage == cfg["quality_iterations"]:
                kept = work_dir / "train_ddpm" / "models"
                shutil.rmtree(kept.parent, ignore_errors=True)
                kept.mkdir(parents=True)
                shutil.copy2(root / "models" / "model.pt", kept / "model.pt")
            point = {"iterations": stage, **_score(root, f"objective{index}_{stage}", cfg, common, work_dir, real_dir)}
            row["curve"].append(point)
            if ref is not None and reached(point, ref):
                row["reached_at"] = stage
                break
        if ref is None:
            ref = row["curve"][-1]
            row["reached_at"] = next(p["iterations"] for p in row["curve"] if reached(p, ref))
        rows.append(row)
    return {
        "reference_iterations": ref_iters,
        "cap": cap,
        "stages": stages,
        "sampler": f"{STUDY_SAMPLER[0].upper()}-{STUDY_SAMPLER[1]}",
        "num_samples": cfg["study_samples"],
        "rows": rows,
    }


def run_levels(cfg: dict, device: str, work_dir: Path) -> dict:
    """Level 1 (the paper) vs level 2 wavelets on ``cfg["levels_size"]``³ demo data, the same network, iterations
    and seed: training time and sample quality."""
    from wdm_bundle.data.demo import make_demo_dataset

    size = cfg["levels_size"]
    data = work_dir / f"demo_data_{size}"
    if not (data / "datalist.json").exists():
        logger.info(f"making {size}^3 demo data")
        num_test = max(2, cfg["levels_cases"] // 5)
        make_demo_dataset(data, num_cases=cfg["levels_cases"], size=size, num_test=num_test, seed=0, progress=False)
    real_dir = measure._held_out_images(data, work_dir / f"real_{size}")
    common = {"dataset_dir": str(data), "num_train_timesteps": cfg["num_train_timesteps"], "device": device}
    rows = []
    for levels in (1, 2):
        root = work_dir / f"levels_{levels}"
        shutil.rmtree(root, ignore_errors=True)
        logger.info(f"level study: wavelet_levels {levels}, {cfg['levels_iterations']} iterations at {size}^3")
        overrides = {"wavelet_levels": levels, "batch_size": cfg["levels_batch_size"]}
        seconds = _train_to(root, cfg["levels_iterations"], {**common, "diffusion": "ddpm"}, overrides)
        scores = _score(root, f"levels{levels}", cfg, common, work_dir, real_dir)
        rows.append({"levels": levels, "train_seconds": seconds, **scores})
    return {
        "size": size,
        "iterations": cfg["levels_iterations"],
        "batch_size": cfg["levels_batch_size"],
        "num_samples": cfg["study_samples"],
        "rows": rows,
    }
