"""Score 3D inpainting (BraTS "Local Synthesis") with the challenge's own metric code; write the report.

The metrics are those of the ``inpainting`` package (PyPI, the BraTS inpainting challenge's official
code, AGPL-3.0, in this bundle's ``inpainting`` extra): :func:`challenge_metrics` calls its
``generate_metrics`` (SSIM, PSNR, MSE and more inside the mask, after clipping both volumes to the
0.5-99.5 percentiles of the voided image and scaling to [0, 1]). :func:`evaluate_inpainting` runs it
over a folder of cases, for the predictions and the baselines of `wdm_bundle.metrics.inpainting_baselines`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from wdm_bundle.data.io import contrast_files, find_cases, load_volume, require_folder
from wdm_bundle.metrics.inpainting_baselines import INPAINTING_BASELINES
from wdm_bundle.reports.summary import write_json
from wdm_bundle.visualize import save_slices_png

__all__ = ["INPAINTING_METRIC_KEYS", "InpaintingEvaluationError", "challenge_metrics", "evaluate_inpainting"]

logger = logging.getLogger(__name__)

# the keys of the package's generate_metrics, in the CSV's order; the challenge ranks on ssim, psnr, mse
INPAINTING_METRIC_KEYS: tuple[str, ...] = (
    "ssim",
    "psnr",
    "mse",
    "rmse",
    "mae",
    "msle",
    "psnr_eps",
    "psnr_01",
    "psnr_01_eps",
)


class InpaintingEvaluationError(RuntimeError):
    """Some case could not be scored; the report is written all the same and is ``result``."""

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message, result)
        self.message, self.result = message, result

    def __str__(self) -> str:
        return self.message


class _CaseFailure(Exception):
    """This case cannot be scored; the message says why."""


@dataclass
class _Case:
    """The volumes of one case (raw intensities, (D, H, W)); ``pred`` is None when only baselines are scored."""

    name: str
    truth: np.ndarray
    mask: np.ndarray
    voided: np.ndarray
    pred: np.ndarray | None


def _generate_metrics():
    """The package's ``generate_metrics``; ImportError saying how to install it."""
    try:
        from inpainting.challenge_metrics_2023 import generate_metrics
    except ImportError as e:
        raise ImportError(
            "the BraTS inpainting metrics need the 'inpainting' package (the challenge's official code, "
            "AGPL-3.0): pip install 'inpainting==0.0.12' (or this bundle's 'inpainting' extra)."
        ) from e
    return generate_metrics


def challenge_metrics(
    prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray, voided: np.ndarray | None = None
) -> dict[str, float]:
    """The challenge's metrics of ``prediction`` inside ``mask``: ``generate_metrics`` of the ``inpainting`` package.

    Args:
        prediction, truth: (D, H, W) volumes, raw intensities.
        mask: the region to score (boolean or 0/1), e.g. the case's ``-mask-healthy``.
        voided: the image the model saw (its percentiles normalise both volumes); default ``truth``
            with the mask's voxels set to 0, as the challenge voids its images.

    Returns:
        ``{key: float}`` for :data:`INPAINTING_METRIC_KEYS` (a perfect prediction: MSE 0, SSIM 1, PSNR inf).
    """
    generate_metrics = _generate_metrics()
    mask = np.asarray(mask).astype(bool)
    if voided is None:
        voided = np.where(mask, 0, truth)

    def tensor(x):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]

    with warnings.catch_warnings():  # torchmetrics' PSNR copies its data range tensor with torch.tensor
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        metrics = generate_metrics(
            prediction=tensor(prediction),
            target=tensor(truth),
            normalization_tensor=tensor(voided),
            mask=torch.from_numpy(np.ascontiguousarray(mask))[None],
        )
    return {k: float(metrics[k]) for k in INPAINTING_METRIC_KEYS}


def _read(path: str, what: str, reference: nib.Nifti1Image | None) -> tuple[np.ndarray, nib.Nifti1Image]:
    """(voxels, image) of ``path``; _CaseFailure if it is unreadable or its grid differs from ``reference``."""
    try:
        image = nib.load(path)
        data = load_volume(path)
    except Exception as e:  # unreadable file: report, go on
        raise _CaseFailure(f"cannot read the {what} {path} ({type(e).__name__}: {e})") from e
    if reference is not None:
        if data.shape != reference.shape[:3]:
            raise _CaseFailure(f"the {what} has shape {data.shape}, the ground truth {reference.shape[:3]}")
        if not np.allclose(image.affine, reference.affine, atol=1e-4):
            raise _CaseFailure(f"the {what}'s affine differs from the ground truth's")
    return data, image


def _find(folder: Path, case: str, suffix: str) -> str | None:
    """``<folder>/<case>/<case>-<suffix>.nii[.gz]``, else ``<folder>/<case>-<suffix>.nii[.gz]``, else None."""
    for where in (folder / case, folder):
        found = contrast_files(where, case, [suffix])
        if found:
            return found[suffix]
    return None


def _load_case(case: str, gt_root: Path, pred_root: Path | None, suffixes: dict[str, str | None]) -> _Case:
    """Read and check the ground truth, mask, voided image (if any) and prediction (if ``pred_root``) of ``case``.

    Raises:
        _CaseFailure: a missing, unreadable or mis-registered file; an empty or non-binary mask; a
            non-finite prediction.
    """
    paths = {k: _find(gt_root, case, suffixes[k]) for k in ("truth", "mask")}
    if suffixes["voided"]:
        paths["voided"] = _find(gt_root, case, suffixes["voided"])
    if pred_root is not None:
        paths["prediction"] = _find(pred_root, case, suffixes["prediction"])
    for what in ("truth", "mask", "prediction"):
        if what in paths and paths[what] is None:
            root = pred_root if what == "prediction" else gt_root
            raise _CaseFailure(f"no {what} file '{case}-{suffixes[what]}.nii.gz' in {root}")
    truth, reference = _read(paths["truth"], "ground truth", None)
    mask, _ = _read(paths["mask"], "mask", reference)
    if not np.isin(mask, (0, 1)).all():
        raise _CaseFailure("the mask is not binary (values other than 0 and 1)")
    mask = mask.astype(bool)
    if not mask.any():
        raise _CaseFailure("the mask is empty")
    voided = _read(paths["voided"], "voided image", reference)[0] if paths.get("voided") else None
    voided = np.where(mask, 0, truth).astype(np.float32) if voided is None else voided
    pred = None
    if pred_root is not None:
        pred = _read(paths["prediction"], "prediction", reference)[0]
        if not np.isfinite(pred).all():
            raise _CaseFailure("the prediction has non-finite voxels (NaN or inf)")
    return _Case(case, truth, mask, voided, pred)


def _centred(volume: np.ndarray, centre: Sequence[int]) -> np.ndarray:
    """``volume`` zero-padded so that its middle slices pass through ``centre``."""
    pads = []
    for c, n in zip(centre, volume.shape):
        extra = (n - 1) - 2 * c  # > 0: the centre is in the first half, pad before it
        pads.append((max(extra, 0), max(-extra, 0)))
    return np.pad(volume, pads)


def _picture(case: _Case, filled: np.ndarray, out_root: Path, label: str) -> str:
    """``pictures/<case>.png``: voided | inpainted | truth | |error|, middle slices through the mask's centre."""
    centre = [int(round(float(np.mean(ix)))) for ix in np.nonzero(case.mask)]
    known = case.voided[case.voided > 0]
    top = float(np.percentile(known, 99.5)) if known.size else 1.0
    top = top if top > 0 else 1.0
    volumes = [case.voided, filled, case.truth, np.abs(filled - case.truth)]
    return save_slices_png(
        [_centred(v, centre) for v in volumes],
        out_root / "pictures" / f"{case.name}.png",
        (0.0, top),
        titles=["voided", f"inpainted ({label})", "ground truth", "|error|"],
    )


def _score_case(case: _Case, baselines: Sequence[str], out_root: Path) -> list[dict]:
    """One row per method (the prediction, then ``baselines``) of ``case``; writes its picture."""
    filled = {} if case.pred is None else {"prediction": case.pred}
    for name in baselines:
        filled[name] = INPAINTING_BASELINES[name](case.voided, case.mask)
    rows = []
    for method, volume in filled.items():
        metrics = challenge_metrics(volume, case.truth, case.mask, case.voided)
        outside = float(np.max(np.abs(volume - case.voided)[~case.mask], initial=0.0))
        rows.append({"case": case.name, "method": method, **metrics, "outside_max_abs_diff": outside})
    first = next(iter(filled))
    _picture(case, filled[first], out_root, first)
    return rows


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore"):
        return {"mean": float(np.mean(v)), "std": float(np.std(v)), "median": float(np.median(v))}


def _summary(rows: list[dict], failures: list[dict], methods: Sequence[str], suffixes: dict) -> dict:
    """The content of ``summary.json``: per method, ``n`` and ``{metric: {mean, std, median}}`` over the cases."""
    per_method = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        per_method[m] = {"n": len(mine), **{k: _stats([r[k] for r in mine]) for k in INPAINTING_METRIC_KEYS}}
    return {
        "num_cases": len({r["case"] for r in rows}),
        "methods": per_method,
        "failures": failures,
        "suffixes": suffixes,
    }


def _cell(stats: dict[str, float], digits: int) -> str:
    """``mean ± std``, or just the mean when it is not finite (a perfect case makes the PSNR mean ``inf``)."""
    if not math.isfinite(stats["mean"]):
        return str(stats["mean"])
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _markdown(summary: dict) -> str:
    """``summary.md``: mean ± std of the challenge's SSIM, PSNR and MSE per method, then the failures."""
    columns = [("ssim", "SSIM", 4), ("psnr", "PSNR", 2), ("mse", "MSE", 5), ("psnr_01", "PSNR (range 1)", 2)]
    lines = ["| method | n | " + " | ".join(c[1] for c in columns) + " |", "|" + "---|" * (len(columns) + 2)]
    for method, result in summary["methods"].items():
        cells = [_cell(result[k], d) for k, _, d in columns]
        lines.append(f"| {method} | {result['n']} | " + " | ".join(cells) + " |")
    text = [
        "# Inpainting (BraTS Local Synthesis metrics)",
        "",
        f"{summary['num_cases']} case(s); mean ± std over cases. Metrics of the challenge's `inpainting` package "
        "(`generate_metrics`) inside the mask: both volumes clipped to the 0.5-99.5 percentiles of the voided "
        "image and scaled to [0, 1]; SSIM: torchmetrics, 2D Gaussian window over the last two axes, averaged "
        "in the mask; PSNR: data range of the truth in the mask (`inf` for a perfect fill).",
        "",
        *lines,
    ]
    notes = [f"- {f['case']}: {f['reason']}" for f in summary["failures"]]
    if notes:
        text += ["", f"## Failures ({len(notes)})", "", *notes]
    return "\n".join(text) + "\n"


def _write_report(out_root: Path, rows: list[dict], summary: dict) -> dict[str, str]:
    """Write ``per_case.csv``, ``summary.json`` and ``summary.md`` into ``out_root``; return their paths."""
    out_root.mkdir(parents=True, exist_ok=True)
    names = {"per_case": "per_case.csv", "summary_json": "summary.json", "summary_md": "summary.md"}
    paths = {key: out_root / name for key, name in names.items()}
    fields = ["case", "method", *INPAINTING_METRIC_KEYS, "outside_max_abs_diff"]
    with open(paths["per_case"], "w", newline="") as f:
        table = csv.writer(f)
        table.writerow(fields)
        table.writerows([row[k] for k in fields] for row in rows)
    write_json(paths["summary_json"], summary)
    paths["summary_md"].write_text(_markdown(summary))
    return {key: str(path) for key, path in paths.items()}


def _score_cases(
    cases: Sequence[str],
    gt_root: Path,
    pred_root: Path | None,
    suffixes: dict[str, str | None],
    baselines: Sequence[str],
    out_root: Path,
) -> tuple[list[dict], list[dict]]:
    """Load and score each case: (metric rows, failures); a failed case is logged and skipped."""
    rows, failures = [], []
    for name in cases:
        try:
            rows += _score_case(_load_case(name, gt_root, pred_root, suffixes), baselines, out_root)
        except _CaseFailure as e:
            logger.warning("%s: %s", name, e)
            failures.append({"case": name, "reason": str(e)})
    return rows, failures


def evaluate_inpainting(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike | None,
    output_dir: str | os.PathLike | None = None,
    *,
    baselines: Sequence[str] = ("mean_fill", "harmonic_fill"),
    pred_suffix: str = "t1n-inference",
    gt_suffix: str = "t1n",
    mask_suffix: str = "mask-healthy",
    voided_suffix: str | None = "t1n-voided",
    fail_on_error: bool = True,
) -> dict:
    """Score inpainted volumes and baselines with the challenge's metrics (:func:`challenge_metrics`); write a report.

    For each case folder ``<gt_dir>/<case>/`` (challenge layout): the truth ``<case>-<gt_suffix>``, the
    mask ``<case>-<mask_suffix>``, the voided image ``<case>-<voided_suffix>`` if present (else the truth
    with the mask set to 0) and the prediction ``<case>-<pred_suffix>`` in ``pred_dir/<case>/`` or
    ``pred_dir`` (``.nii.gz`` or ``.nii``). Methods: ``prediction`` (unless ``pred_dir`` is None) and
    ``baselines`` (:data:`INPAINTING_BASELINES`, filled from the voided image). A case with a missing,
    unreadable, mis-shaped or mis-registered file, an empty or non-binary mask or a non-finite
    prediction is left out for all methods and listed under ``failures``. Writes ``per_case.csv``
    (case, method, :data:`INPAINTING_METRIC_KEYS`, ``outside_max_abs_diff``: the largest change outside
    the mask), ``summary.json``, ``summary.md`` and ``pictures/<case>.png`` (voided | inpainted |
    truth | error of the first method) into ``output_dir`` (default ``pred_dir``, or ``gt_dir/inpainting_report``).

    Returns:
        The summary (``methods`` -> ``n`` and ``{metric: {mean, std, median}}``, ``num_cases``,
        ``failures``, ``suffixes``), plus ``per_case`` (the CSV rows) and ``files`` (the written paths).

    Raises:
        FileNotFoundError: ``gt_dir`` or ``pred_dir`` does not exist.
        ValueError: an unknown baseline, no case folder, or no case could be scored.
        InpaintingEvaluationError: ``fail_on_error`` and some case failed (after writing the report).
    """
    unknown = set(baselines) - set(INPAINTING_BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; known: {sorted(INPAINTING_BASELINES)}.")
    gt_root = require_folder(gt_dir, "gt_dir")
    pred_root = None if pred_dir is None else require_folder(pred_dir, "pred_dir")
    default_out = gt_root / "inpainting_report" if pred_root is None else pred_root
    out_root = Path(output_dir) if output_dir is not None else default_out
    suffixes = {"prediction": pred_suffix, "truth": gt_suffix, "mask": mask_suffix, "voided": voided_suffix}
    methods = ([] if pred_root is None else ["prediction"]) + list(baselines)
    if not methods:
        raise ValueError("nothing to score: no pred_dir and no baselines.")
    cases = [p.name for p in find_cases(gt_root, "gt_dir")]
    if not cases:
        raise ValueError(f"gt_dir '{gt_root}' holds no case folders with NIfTI files.")
    rows, failures = _score_cases(cases, gt_root, pred_root, suffixes, baselines, out_root)
    if not rows:
        reasons = "\n  ".join(f"{f['case']}: {f['reason']}" for f in failures[:5])
        raise ValueError(f"no case of gt_dir '{gt_root}' could be scored, so no report is written:\n  {reasons}")
    summary = _summary(rows, failures, methods, suffixes)
    result = {**summary, "per_case": rows, "files": _write_report(out_root, rows, summary)}
    if failures and fail_on_error:
        raise InpaintingEvaluationError(
            f"{len(failures)} of {len(cases)} case(s) could not be scored (see {result['files']['summary_md']}): "
            + "; ".join(f"{f['case']}: {f['reason']}" for f in failures[:3]),
            result,
        )
    return result
