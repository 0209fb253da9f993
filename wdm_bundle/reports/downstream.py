"""Downstream evaluation (BraSyn): does the synthesised contrast help a tumour segmenter?

For each pseudo-validation case, a segmenter sees the three real contrasts plus the missing one taken from each
input variant (the real one, the synthesis, baselines); its labels are scored against the reference labels
(:func:`wdm_bundle.metrics.segmentation.brats_region_metrics`). Summary and files:
`wdm_bundle.reports.downstream_summary`; pictures: `wdm_bundle.reports.downstream_pictures`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from monai.utils import optional_import

from wdm_bundle.data.io import CONTRASTS, contrast_files, find_case_files, find_cases, load_nifti, require_folder
from wdm_bundle.metrics.baselines import best_correlated_baseline, training_histogram_baseline
from wdm_bundle.metrics.paired import normalize_percentiles, paired_metrics
from wdm_bundle.metrics.segmentation import REGIONS, brats_region_metrics, region_masks, resolve_backend
from wdm_bundle.reports.downstream_pictures import save_downstream_png
from wdm_bundle.reports.downstream_summary import downstream_summary, write_downstream_report

# the synthesis report's case failure, brain mask, missing.json check and training statistics, reused as they are
from wdm_bundle.reports.synthesis import _brain, _CaseFailure, _expected_missing, _preparation, _TrainingStatistics

__all__ = ["VARIANTS", "SegmenterLike", "evaluate_downstream"]

logger = logging.getLogger(__name__)

#: The sources of the missing contrast given to the segmenter, in report order.
VARIANTS: tuple[str, ...] = ("real", "synthesis", "hist_match", "oracle_hist_match", "mean_target", "zeros")


class SegmenterLike(Protocol):
    """What the report needs of `wdm_bundle.engines.segmentation.Segmenter`."""

    contrasts: list[str]

    def segment(self, volumes: Mapping[str, np.ndarray], affine: np.ndarray) -> np.ndarray:
        """(D, H, W) uint8 labels 0..3 of ``{contrast: (D, H, W) raw intensities}`` with voxel-to-world ``affine``."""


@dataclass
class _Case:
    """One case on its own grid: raw intensities, reference labels (uint8 0..3), affine and spacing of the labels."""

    name: str
    missing: str
    gt: np.ndarray
    pred: np.ndarray
    inputs: dict[str, np.ndarray]
    seg: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    brain: np.ndarray


def _read(path: str | os.PathLike, what: str, missing: str) -> tuple[Any, np.ndarray]:
    try:
        return load_nifti(path)
    except Exception as e:  # unreadable file: report, go on
        raise _CaseFailure(f"cannot read the {what} {path} ({type(e).__name__}: {e})", missing) from e


def _load_case(case: str, roots: Mapping[str, Path], contrasts: Sequence[str], expected: str | None) -> _Case:
    """Read and check the ground truth, prediction, inputs and reference labels of ``case``.

    Raises:
        _CaseFailure: a missing or unreadable file, a shape or affine that differs from the labels', labels outside
            0..3, or an empty brain mask.
    """
    gt_files = {k: v for k, v in find_case_files(roots["gt"] / case).items() if k in contrasts}
    if len(gt_files) != 1:
        raise _CaseFailure(f"expected one ground-truth contrast in {roots['gt'] / case}, found {sorted(gt_files)}")
    ((missing, gt_path),) = gt_files.items()
    if expected is not None and expected != missing:
        raise _CaseFailure(f"missing.json says '{expected}' but gt_dir holds '{missing}'", missing)
    files = {"ground truth": gt_path, "prediction": roots["pred"] / f"{case}-{missing}.nii.gz"}
    files.update(contrast_files(roots["input"] / case, case, [c for c in contrasts if c != missing]))
    seg_file = contrast_files(roots["seg"] / case, case, ["seg"]).get("seg")
    for what, path in (("prediction", files["prediction"]), ("reference labels", seg_file)):
        if path is None or not Path(path).is_file():
            raise _CaseFailure(f"no {what} {path or roots['seg'] / case / f'{case}-seg.nii.gz'}", missing)
    if len(files) == 2:
        raise _CaseFailure(f"no input contrast in {roots['input'] / case}", missing)
    seg_img, seg = _read(seg_file, "reference labels", missing)
    vols = {}
    for what, path in files.items():
        img, vols[what] = _read(path, what, missing)
        if vols[what].shape != seg.shape:
            raise _CaseFailure(f"{path} has shape {vols[what].shape}, the labels {seg_file} {seg.shape}", missing)
        # predictions only need the grid: outside tools (BraSyn entries) may write them without the case's affine
        if what != "prediction" and not np.allclose(img.affine, seg_img.affine, atol=1e-3):
            raise _CaseFailure(f"{path} has another affine than the labels {seg_file}", missing)
    if np.any(np.round(seg) != seg) or seg.min() < 0 or seg.max() > 3:
        raise _CaseFailure(f"{seg_file} must hold integer labels 0..3", missing)
    inputs = {c: vols[c] for c in contrasts if c in vols}
    brain = _brain(list(inputs.values()))
    if not brain.any():
        raise _CaseFailure("the inputs are all zero: empty brain mask", missing)
    spacing = tuple(float(z) for z in seg_img.header.get_zooms()[:3])
    gt, pred = vols["ground truth"], vols["prediction"]
    return _Case(case, missing, gt, pred, inputs, seg.astype(np.uint8), seg_img.affine, spacing, brain)


def _variants(case: _Case, training: _TrainingStatistics, variants: Sequence[str]) -> tuple[dict, np.ndarray]:
    """(``{variant: (D, H, W) missing contrast in [0, 1]}``, the normalised ground truth), as in the synthesis report."""
    gt_n = normalize_percentiles(case.gt, mask=case.brain)
    inputs_n = {k: normalize_percentiles(v, mask=case.brain) for k, v in case.inputs.items()}
    out = {"real": gt_n, "synthesis": normalize_percentiles(case.pred, mask=case.brain)}
    if {"hist_match", "mean_target"} & set(variants):
        try:
            stats = training(case.missing, case.gt.shape)
        except ValueError as e:  # training cases on another grid: this case only
            raise _CaseFailure(str(e), case.missing) from e
        if stats["source"] not in inputs_n:
            raise _CaseFailure(f"input '{stats['source']}' (the training source) is not available", case.missing)
        out["hist_match"] = training_histogram_baseline(inputs_n[stats["source"]], stats["quantiles"], case.brain)
        out["mean_target"] = stats["mean"]
    if "oracle_hist_match" in variants:
        out["oracle_hist_match"] = best_correlated_baseline(inputs_n, gt_n, case.brain)[1]
    out["zeros"] = np.zeros_like(gt_n)
    return {v: out[v] for v in variants}, gt_n


def _ssim_in(volume: np.ndarray, gt_n: np.ndarray, mask: np.ndarray, win_size: int = 11) -> float:
    """SSIM of ``volume`` vs ``gt_n`` inside ``mask`` (:func:`paired_metrics`' ``ssim_mask``); NaN if it is empty.

    Computed on the bounding box of ``mask`` grown by ``win_size // 2`` (at least ``win_size`` wide): every SSIM
    window centred on a mask voxel lies inside it, so the value equals the whole-volume one, at a fraction of the
    cost (a 240 x 240 x 155 SSIM takes ~14 s on 2 CPU threads).
    """
    if not mask.any():
        return math.nan
    box = []
    for axis, n in enumerate(mask.shape):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo, hi = max(int(hit[0]) - win_size // 2, 0), min(int(hit[-1]) + win_size // 2 + 1, n)
        grow = max(win_size - (hi - lo), 0)
        lo, hi = max(lo - grow, 0), min(hi + grow, n)
        box.append(slice(lo, hi))
    box = tuple(box)
    return paired_metrics(volume[box], gt_n[box], mask[box], win_size=win_size)["ssim_mask"]


def _segment(segmenter: SegmenterLike, case: _Case, missing_volume: np.ndarray) -> np.ndarray:
    volumes = {c: missing_volume if c == case.missing else case.inputs[c] for c in segmenter.contrasts}
    labels = np.asarray(segmenter.segment(volumes, case.affine))
    if labels.shape != case.seg.shape:
        raise ValueError(f"the segmenter returned shape {labels.shape} for {case.name}, expected {case.seg.shape}.")
    return labels.astype(np.uint8)


def _score_case(case: _Case, segmenter: SegmenterLike, training, options: dict) -> list[dict]:
    """One row per variant and region for ``case``; writes ``pictures/<case>.png`` if ``options["pictures"]``."""
    absent = [c for c in segmenter.contrasts if c != case.missing and c not in case.inputs]
    if absent:
        raise _CaseFailure(f"the segmenter needs {absent}, not in the case's inputs", case.missing)
    if case.missing not in segmenter.contrasts:
        raise _CaseFailure(f"the segmenter does not use '{case.missing}' ({segmenter.contrasts})", case.missing)
    images, gt_n = _variants(case, training, options["variants"])
    wt = region_masks(case.seg)["WT"]
    rows, labels = [], {}
    for variant, volume in images.items():
        labels[variant] = _segment(segmenter, case, volume)
        scores = brats_region_metrics(labels[variant], case.seg, case.spacing, options["backend"])
        ssim = {"ssim_tumour": _ssim_in(volume, gt_n, wt), "ssim_healthy": _ssim_in(volume, gt_n, case.brain & ~wt)}
        base = {"case": case.name, "missing": case.missing, "variant": variant}
        rows += [{**base, "region": r, **scores[r], **ssim} for r in REGIONS]
    if options["pictures"]:
        dice = {r["variant"]: r["dice"] for r in rows if r["region"] == "WT"}
        titles = {v: f"{v} ({case.missing}): WT Dice {dice[v]:.2f}" for v in images}
        save_downstream_png(
            images, labels, case.seg, gt_n, titles, options["out_root"] / "pictures" / f"{case.name}.png"
        )
    return rows


def _load_segmenter(seg_ckpt: str | os.PathLike | SegmenterLike, device: str) -> SegmenterLike:
    if hasattr(seg_ckpt, "segment") and hasattr(seg_ckpt, "contrasts"):
        return seg_ckpt
    if not Path(seg_ckpt).is_file():
        raise FileNotFoundError(f"seg_ckpt '{seg_ckpt}' does not exist (a segmentation checkpoint file).")
    from wdm_bundle.engines.segmentation import load_segmenter  # the network code, only when a checkpoint is given

    return load_segmenter(seg_ckpt, device=device)


def _folders(input_dir, gt_dir, pred_dir, seg_dir, train_datalist) -> dict[str, Path]:
    """``{"gt", "input", "pred", "seg": folder}``; FileNotFoundError naming the first argument that does not exist."""
    names = (("gt", gt_dir, "gt_dir"), ("input", input_dir, "input_dir"), ("pred", pred_dir, "pred_dir"))
    roots = {k: require_folder(d, n) for k, d, n in names}
    roots["seg"] = require_folder(input_dir if seg_dir is None else seg_dir, "seg_dir")
    if not Path(train_datalist).is_file():
        raise FileNotFoundError(f"train_datalist '{train_datalist}' does not exist.")
    return roots


def _progress(items: list[str], progress: bool):
    tqdm, has_tqdm = optional_import("tqdm", name="tqdm")
    return tqdm(items, desc="downstream cases") if progress and has_tqdm else items


def _nothing_scored(roots: Mapping[str, Path], failures: list[dict]) -> ValueError:
    reasons = "\n  ".join(f"{f['case']}: {f['reason']}" for f in failures[:5])
    more = f"\n  ... ({len(failures)} in all)" if len(failures) > 5 else ""
    return ValueError(
        f"no case of gt_dir '{roots['gt']}' could be scored, so no report is written:\n  {reasons}{more}\n"
        f"check pred_dir '{roots['pred']}' (<case>-<missing>.nii.gz), input_dir '{roots['input']}' and "
        f"seg_dir '{roots['seg']}' (<case>/<case>-seg.nii.gz)."
    )


def evaluate_downstream(
    input_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    seg_ckpt: str | os.PathLike | SegmenterLike,
    train_datalist: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    seg_dir: str | os.PathLike | None = None,
    *,
    contrasts: Sequence[str] = CONTRASTS,
    variants: Sequence[str] = VARIANTS,
    backend: str = "auto",
    device: str = "cpu",
    pictures: bool = True,
    progress: bool = True,
) -> dict:
    """Segment each case with its missing contrast from each variant; score Dice/HD95 per region and SSIM.

    Layout of :func:`wdm_bundle.data.pseudo_validation.make_pseudo_validation` (``keep_seg=True``): inputs
    ``<input_dir>/<case>/<case>-<c>.nii.gz``, ``<input_dir>/missing.json``, ground truth
    ``<gt_dir>/<case>/<case>-<missing>.nii.gz``, prediction ``<pred_dir>/<case>-<missing>.nii.gz``, reference labels
    ``<seg_dir>/<case>/<case>-seg.nii.gz`` (BraTS 2023: 1 NCR, 2 SNFH, 3 ET). The segmenter gets the three real
    inputs as read and the missing contrast of each variant percentile-normalised to [0, 1] over the brain (the
    scale of the predictions and baselines; the real one too, so that only the content differs):

    * ``real``: the ground truth; ``synthesis``: the prediction; ``zeros``: all zero;
    * ``hist_match``: the synthesis report's ``train_hist_match`` (deployable); ``oracle_hist_match``: its
      ``best_correlated`` (uses the ground truth); ``mean_target``: the mean normalised training target.

    A case that fails (missing or unreadable file, shape/affine differing from the labels') is listed under
    ``failures`` with the reason; the others go on. Writes ``per_case.csv``, ``summary.json``, ``summary.md`` and
    ``pictures/<case>.png`` into ``output_dir`` (default ``<pred_dir>/downstream``).

    Args:
        seg_ckpt: a segmentation checkpoint (`wdm_bundle.engines.segmentation.load_segmenter`) or an object with
            ``contrasts`` and ``segment(volumes, affine) -> (D, H, W) uint8 labels``.
        train_datalist: datalist JSON whose ``training`` cases (same grid as the evaluated ones) give the baselines.
        seg_dir: the reference labels; default ``input_dir``.
        variants: a subset of :data:`VARIANTS`; backend: of :func:`brats_region_metrics`.

    Returns:
        The summary (``variants`` -> ``all`` / ``by_missing`` -> ``n`` and ``{region: {"dice", "hd95"}}``, SSIMs;
        ``gap_real_minus_synthesis``, ``failures``, ``backend``, ``hist_match_source``), plus ``per_case`` and
        ``files``.

    Raises:
        FileNotFoundError: a folder, ``train_datalist`` or ``seg_ckpt`` does not exist.
        ValueError: unknown variants or backend, no case folder in ``gt_dir``, or no case could be scored.
    """
    if not variants or set(variants) - set(VARIANTS):
        raise ValueError(f"'variants' must be a non-empty subset of {VARIANTS}; got {variants!r}.")
    backend = resolve_backend(backend)
    roots = _folders(input_dir, gt_dir, pred_dir, seg_dir, train_datalist)
    segmenter = _load_segmenter(seg_ckpt, device)
    cases = [p.name for p in find_cases(roots["gt"], "gt_dir")]
    if not cases:
        raise ValueError(f"gt_dir '{roots['gt']}' holds no case folders with NIfTI files.")
    out_root = Path(output_dir) if output_dir is not None else roots["pred"] / "downstream"
    training = _TrainingStatistics(train_datalist, list(contrasts), _preparation(None))
    options = {"variants": list(variants), "backend": backend, "pictures": pictures, "out_root": out_root}
    expected = _expected_missing(roots["input"], cases)
    rows, failures = [], []
    for name in _progress(cases, progress):
        try:
            case = _load_case(name, roots, list(contrasts), expected.get(name))
            rows += _score_case(case, segmenter, training, options)
        except _CaseFailure as e:
            logger.warning("%s: %s", name, e)
            failures.append({"case": name, "missing": e.missing, "reason": str(e)})
    if not rows:
        raise _nothing_scored(roots, failures)
    summary = downstream_summary(rows, failures, variants, contrasts)
    summary.update(backend=backend, segmenter_contrasts=list(segmenter.contrasts), hist_match_source=training.sources())
    return {**summary, "per_case": rows, "files": write_downstream_report(out_root, rows, summary)}
