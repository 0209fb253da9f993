"""Quality vs sampling steps of 3D inpainting: DDIM with few steps (each `TimestepSpacing`) against DDPM over all T.

:func:`run_steps_study` inpaints every case of a challenge-layout folder with each option (sampler, steps,
spacing) of the same model and seed, scores inside the mask with the challenge's metrics (`challenge_metrics`) and
writes ``steps.csv``, ``steps.md``, ``steps.png`` and ``steps.json`` (`wdm_bundle.reports.steps_report`): per
spacing, the fewest steps within 10 % of DDPM-T on every metric (:func:`fewest_steps_within`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from wdm_bundle.data.io import contrast_files, find_cases, load_nifti
from wdm_bundle.diffusion import Sampler, TimestepSpacing, make_scheduler
from wdm_bundle.engines import inpaint_volume, inpainting_inferer, schedule_settings
from wdm_bundle.reports.inpainting import challenge_metrics

__all__ = [
    "STEP_METRICS",
    "StepOption",
    "study_options",
    "within",
    "fewest_steps_within",
    "StudyCase",
    "load_study_cases",
    "run_option",
    "run_steps_study",
]

logger = logging.getLogger(__name__)

#: The challenge's ranking metrics and whether higher is better.
STEP_METRICS: dict[str, bool] = {"ssim": True, "psnr": True, "mse": False}


@dataclass(frozen=True)
class StepOption:
    """One way to sample: ``ddpm`` over all T steps (``spacing`` None) or ``ddim`` with ``steps`` and ``spacing``."""

    sampler: str
    steps: int
    spacing: str | None = None

    @property
    def name(self) -> str:
        return f"{self.sampler}-{self.steps}" + (f"-{self.spacing}" if self.spacing else "")


def study_options(steps: Sequence[int], spacings: Sequence[str], num_train_timesteps: int) -> list[StepOption]:
    """DDIM with each of ``steps`` below T in each of ``spacings``, then DDPM over all T (``steps`` must hold T)."""
    t_max = int(num_train_timesteps)
    steps = sorted({int(s) for s in steps})
    spacings = list(dict.fromkeys(TimestepSpacing(s).value for s in spacings))
    if not steps or steps[0] < 1 or steps[-1] > t_max:
        raise ValueError(f"steps must be in [1, {t_max}] (T of the model), got {steps}.")
    if steps[-1] != t_max:
        raise ValueError(f"steps must include T = {t_max} (DDPM over all steps, the reference), got {steps}.")
    if not spacings and len(steps) > 1:
        raise ValueError("spacings: give at least one DDIM timestep spacing.")
    options = [StepOption(Sampler.DDIM.value, s, sp) for sp in spacings for s in steps[:-1]]
    return options + [StepOption(Sampler.DDPM.value, t_max)]


def within(metric: str, value: float, reference: float, tolerance: float = 0.1) -> bool:
    """``value`` is at most ``tolerance`` worse than ``reference`` (`STEP_METRICS`: higher-is-better metrics at
    least (1 - tol) ref, others at most (1 + tol) ref); as good or better is always within; NaN never."""
    if math.isnan(value) or math.isnan(reference):
        return False
    if STEP_METRICS[metric]:
        return value >= reference or value >= (1.0 - tolerance) * reference
    return value <= reference or value <= (1.0 + tolerance) * reference


def fewest_steps_within(
    means: Mapping[int, Mapping[str, float]], reference: Mapping[str, float], tolerance: float = 0.1
) -> int | None:
    """The fewest steps whose mean metrics (``means``: {steps: {metric: mean}}) are `within` ``tolerance`` of
    ``reference`` on every metric of `STEP_METRICS`; None if no steps are."""
    for steps in sorted(means):
        if all(within(m, float(means[steps][m]), float(reference[m]), tolerance) for m in STEP_METRICS):
            return int(steps)
    return None


@dataclass
class StudyCase:
    """One case: ``voided``, ``mask`` (1 = inpaint) and ``truth`` (D, H, W) and the voided file's ``affine`` (4, 4)."""

    name: str
    voided: np.ndarray
    mask: np.ndarray
    truth: np.ndarray
    affine: np.ndarray


def load_study_cases(
    data_dir: str | os.PathLike, num_cases: int | None, suffixes: Mapping[str, str]
) -> tuple[list[StudyCase], list[dict]]:
    """The first ``num_cases`` (None: all) case folders of ``data_dir`` that load: (cases, failures).

    ``suffixes``: ``voided``, ``mask`` and ``truth`` file suffixes (``<case>/<case>-<suffix>.nii.gz``). A case with
    a missing file, shapes that differ, or an empty or non-binary mask is a failure ``{"case", "reason"}``.
    """
    cases, failures = [], []
    for folder in find_cases(data_dir, "data_dir"):
        if num_cases is not None and len(cases) >= num_cases:
            break
        found = contrast_files(folder, folder.name, list(suffixes.values()))
        missing = [s for s in suffixes.values() if s not in found]
        if missing:
            failures.append({"case": folder.name, "reason": f"no file for suffix(es) {missing}"})
            continue
        image, voided = load_nifti(found[suffixes["voided"]])
        mask, truth = load_nifti(found[suffixes["mask"]])[1], load_nifti(found[suffixes["truth"]])[1]
        if not voided.shape == mask.shape == truth.shape:
            reason = f"shapes differ: voided {voided.shape}, mask {mask.shape}, truth {truth.shape}"
        elif not np.isin(mask, (0, 1)).all() or not mask.any():
            reason = "the mask is empty or not binary"
        else:
            reason = None
        if reason:
            failures.append({"case": folder.name, "reason": reason})
            continue
        arrays = (np.asarray(voided, np.float32), mask.astype(np.uint8), np.asarray(truth, np.float32))
        cases.append(StudyCase(folder.name, *arrays, np.asarray(image.affine, np.float64)))
    return cases, failures


def _inferer(option: StepOption, record: Mapping[str, Any], jump_length: int, jump_n_sample: int) -> tuple:
    """(scheduler, inferer, jump_length, jump_n_sample) of ``option``: jumps shortened to steps - 1 (none for 1)."""
    steps = None if option.sampler == Sampler.DDPM else option.steps
    spacing = option.spacing or TimestepSpacing.LINSPACE.value
    scheduler = make_scheduler(option.sampler, steps, **schedule_settings(record), timestep_spacing=spacing)
    if jump_n_sample > 1 and option.steps > 1:
        jump_length = min(jump_length, option.steps - 1)
    elif jump_n_sample > 1:
        jump_length, jump_n_sample = 1, 1
    return scheduler, inpainting_inferer(record, scheduler, jump_length, jump_n_sample), jump_length, jump_n_sample


def run_option(
    option: StepOption,
    network: nn.Module,
    record: Mapping[str, Any],
    cases: Sequence[StudyCase],
    seed: int = 0,
    device: str | torch.device | None = None,
    jump_length: int = 10,
    jump_n_sample: int = 1,
) -> tuple[list[dict], list[dict]]:
    """Inpaint and score ``cases`` with ``option``: (rows, failures).

    Rows: ``option``, ``sampler``, ``steps``, ``spacing``, ``case``, the challenge metrics inside the mask,
    ``seconds`` (wall time of `inpaint_volume`) and ``network_calls``. A case that `inpaint_volume` refuses (a
    ValueError) is a failure ``{"option", "case", "reason"}``.
    """
    scheduler, inferer, jump_length, jump_n_sample = _inferer(option, record, jump_length, jump_n_sample)
    calls = [0]
    hook = network.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    rows, failures = [], []
    try:
        for case in cases:
            calls[0] = 0
            start = time.perf_counter()
            try:
                filled = inpaint_volume(
                    network,
                    inferer,
                    case.voided,
                    case.mask,
                    record,
                    seed,
                    case.name,
                    scheduler=scheduler,
                    device=device,
                    affine=case.affine,
                )
            except ValueError as e:
                logger.warning("%s, %s: %s", option.name, case.name, e)
                failures.append({"option": option.name, "case": case.name, "reason": str(e)})
                continue
            seconds = time.perf_counter() - start
            metrics = challenge_metrics(filled, case.truth, case.mask, case.voided)
            head = {"option": option.name, "sampler": option.sampler, "steps": option.steps}
            head.update(spacing=option.spacing or "", case=case.name, jump_length=jump_length)
            rows.append(
                {**head, "jump_n_sample": jump_n_sample, **metrics, "seconds": seconds, "network_calls": calls[0]}
            )
    finally:
        hook.remove()
    return rows, failures


def run_steps_study(
    network: nn.Module,
    record: Mapping[str, Any],
    data_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    steps: Sequence[int] = (2, 5, 10, 50, 1000),
    spacings: Sequence[str] = ("linspace", "leading", "trailing"),
    num_cases: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    jump_length: int = 10,
    jump_n_sample: int = 1,
    suffixes: Mapping[str, str] | None = None,
    progress: bool = True,
) -> dict:
    """Run every `study_options` option over the cases of ``data_dir``; write the report into ``output_dir``.

    Args:
        network, record: the model (weights loaded, eval mode) and its record (task ``inpainting`` or
            ``generation``: RePaint with ``jump_length``, ``jump_n_sample``).
        steps: DDIM step counts and T (DDPM over all T, the reference); spacings: DDIM `TimestepSpacing` values.
        num_cases: the first cases (sorted folder names) that load; None = all.
        seed: the noise seed, the same for every option (with the case name, `case_seed`).
        suffixes: ``voided``, ``mask``, ``truth`` file suffixes (default ``t1n-voided``, ``mask``, ``t1n``).

    Returns:
        The content of ``steps.json`` plus ``rows`` (the CSV's) and ``files`` (the written paths).

    Raises:
        FileExistsError: a report file exists in ``output_dir`` and not ``overwrite``.
        RuntimeError: no case was scored (nothing is written).
    """
    from wdm_bundle.reports.steps_report import REPORT_FILES, write_steps_report

    out = Path(output_dir)
    existing = [str(out / f) for f in REPORT_FILES.values() if (out / f).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing} exist; pass --overwrite to replace them.")
    options = study_options(steps, spacings, record["num_train_timesteps"])
    suffixes = dict(suffixes or {"voided": "t1n-voided", "mask": "mask", "truth": "t1n"})
    cases, failures = load_study_cases(data_dir, num_cases, suffixes)
    rows = []
    network.eval()
    if cases:  # warm-up (lazy initialisation, caches), untimed: the cheapest option on the first case
        run_option(options[0], network, record, cases[:1], seed, device, jump_length, jump_n_sample)
    for option in tqdm(options, desc="options", disable=not progress):
        new_rows, new_failures = run_option(option, network, record, cases, seed, device, jump_length, jump_n_sample)
        rows += new_rows
        failures += new_failures
    if not rows:
        reasons = "; ".join(f"{f['case']}: {f['reason']}" for f in failures[:5])
        raise RuntimeError(f"no case of '{data_dir}' was scored, so no report is written. {reasons}")
    settings = {"data_dir": str(data_dir), "num_cases": len(cases), "seed": seed, "suffixes": suffixes}
    settings.update(jump_length=jump_length, jump_n_sample=jump_n_sample, task=record["task"])
    return write_steps_report(out, rows, options, failures, settings, record["num_train_timesteps"])
