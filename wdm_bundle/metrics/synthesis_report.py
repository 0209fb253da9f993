"""Score missing-contrast predictions on a pseudo-validation set against two simple baselines."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.transforms import ResizeWithPadOrCrop
from monai.utils import convert_to_numpy

from wdm_bundle.data.datalists import build_datalist, find_case_files
from wdm_bundle.data.demo import CONTRASTS
from wdm_bundle.metrics.baselines import (
    best_correlated_baseline,
    pearson,
    quantile_function,
    training_histogram_baseline,
)
from wdm_bundle.metrics.paired import METRIC_KEYS, normalize_percentiles, paired_metrics
from wdm_bundle.visualize import save_slices_png

__all__ = ["METHODS", "compare_synthesis"]

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("prediction", "best_correlated", "train_hist_match", "mean_target")


class _CaseFailure(Exception):
    """This case cannot be scored; the message says why."""


def _load(path: str | os.PathLike) -> np.ndarray:
    """(D, H, W) float32 voxels of a NIfTI file in its own voxel order (a singleton 4th dim dropped)."""
    arr = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    return arr[..., 0] if arr.ndim == 4 and arr.shape[3] == 1 else arr


def _brain(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels where any of the raw ``volumes`` is non-zero (the skull-stripped brain)."""
    return np.logical_or.reduce([v != 0 for v in volumes])


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan}
    with np.errstate(invalid="ignore"):
        return {"mean": float(np.mean(v)), "std": float(np.std(v))}


def _summarise(rows: list[dict]) -> dict:
    out = {"n": len(rows)}
    for key in METRIC_KEYS:
        out[key] = _stats([r[key] for r in rows])
    return out


def _fmt(stats: dict[str, float], digits: int) -> str:
    mean, std = stats["mean"], stats["std"]
    if not math.isfinite(mean):
        return str(mean)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def _markdown(summary: dict) -> str:
    columns = [("ssim", "SSIM", 3), ("ssim_mask", "SSIM brain", 3), ("psnr", "PSNR", 2), ("psnr_mask", "PSNR brain", 2)]
    groups = ["all", *summary["missing_contrasts"]]
    header = ["method"] + [f"{g}: {label}" for g in groups for _, label, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, result in summary["methods"].items():
        cells = [method]
        for g in groups:
            stats = result["all"] if g == "all" else result["by_missing"].get(g)
            cells += [_fmt(stats[key], d) if stats else "-" for key, _, d in columns]
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{g}: {summary['methods'][METHODS[0]]['by_missing'][g]['n']}" for g in summary["missing_contrasts"])
    text = [
        "# Missing-contrast synthesis",
        "",
        f"{summary['num_cases']} case(s) (by missing contrast: {counts or '-'}); mean ± std over cases. "
        "Intensities percentile-normalised to [0, 1] (0.1-99.9 % of the brain); brain = voxels where any input "
        "is non-zero; PSNR in dB, data range 1; SSIM 3D, Gaussian window 11, sigma 1.5 (MONAI). "
        "`best_correlated` is an oracle baseline (picks and histogram-matches with the ground truth); "
        "`train_hist_match` is its deployable form (source contrast and target histogram from the training cases).",
        "",
        *lines,
    ]
    if summary["failures"]:
        text += ["", f"## Failures ({len(summary['failures'])})", ""]
        text += [f"- {f['case']} ({f['missing'] or '?'}): {f['reason']}" for f in summary["failures"]]
    return "\n".join(text) + "\n"


def compare_synthesis(
    input_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    train_datalist: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    roi_size: Sequence[int] | None = None,
    *,
    contrasts: Sequence[str] = CONTRASTS,
) -> dict:
    """Score predictions of each case's missing contrast against the ground truth and three baselines.

    For each case folder in ``gt_dir`` (layout of :func:`wdm_bundle.data.pseudo_validation.make_pseudo_validation`:
    ``<gt_dir>/<case>/<case>-<missing>.nii.gz``), loads the ground truth, the prediction
    ``<pred_dir>/<case>-<missing>.nii.gz`` and the available inputs ``<input_dir>/<case>/``. The
    brain mask is where any raw input is non-zero; every volume is normalised with
    :func:`normalize_percentiles` (percentiles over the brain). Methods, scored with
    :func:`paired_metrics`:

    * ``prediction``: the prediction file;
    * ``best_correlated``: :func:`best_correlated_baseline` of the inputs (an oracle baseline);
    * ``train_hist_match``: :func:`training_histogram_baseline`: the contrast most correlated with
      the missing one on average over the training cases, mapped onto the mean quantile function
      of the training cases' missing contrast (uses no ground truth of the case);
    * ``mean_target``: the voxel-wise mean of the normalised missing contrast of the
      ``training`` cases of ``train_datalist`` (each normalised over its own inputs' brain).

    A case without a prediction (or with an unreadable, mis-shaped or inconsistent file) is
    skipped for all methods, so the methods are compared on the same cases, and listed under
    ``failures``. Writes ``pictures/<case>-<missing>.png`` (middle slices of inputs | synthesised |
    ground truth | absolute error), ``per_case.csv`` (case, missing, method, the 6 metrics),
    ``summary.json`` and ``summary.md`` into ``output_dir``. A perfect prediction has PSNR
    ``inf``, written as ``Infinity`` in the JSON (Python's ``json`` reads it back).

    Args:
        input_dir: the pseudo-validation cases (inputs only); its ``missing.json``, if present,
            is checked against ``gt_dir``.
        gt_dir: the dropped contrasts.
        pred_dir: the predictions (same grid as the case).
        train_datalist: datalist JSON with a ``training`` list of ``{contrast: path}`` entries.
        output_dir: where to write the reports; default ``pred_dir``.
        roi_size: if given, every volume (cases and training) is centre-cropped/zero-padded to
            these 3 sizes (MONAI ``ResizeWithPadOrCrop``) before scoring, e.g. the grid the
            network sees; needed when training and evaluation cases differ in shape.
        contrasts: the contrast suffixes.

    Returns:
        The summary written to ``summary.json`` (``methods`` -> ``all`` / ``by_missing`` ->
        ``n`` and ``{metric: {"mean", "std"}}``, ``num_cases``, ``missing_contrasts``,
        ``failures``, ``best_correlated_choice``, ``train_hist_match_source``), plus ``per_case`` (the CSV rows) and
        ``files`` (the written paths).

    Raises:
        FileNotFoundError: ``gt_dir``, ``input_dir``, ``pred_dir`` or ``train_datalist`` does not exist.
        ValueError: no case in ``gt_dir``, no case could be scored (e.g. no prediction in ``pred_dir``),
            a bad ``roi_size``, or training volumes whose shape differs from a case's (use ``roi_size``).
    """
    gt_root, in_root, pred_root = Path(gt_dir), Path(input_dir), Path(pred_dir)
    for name, folder in (("gt_dir", gt_root), ("input_dir", in_root), ("pred_dir", pred_root)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name} '{folder}' does not exist or is not a folder.")
    if not Path(train_datalist).is_file():
        raise FileNotFoundError(f"train_datalist '{train_datalist}' does not exist.")
    if roi_size is not None:
        if len(roi_size) != 3 or any(int(s) != s or s < 1 for s in roi_size):
            raise ValueError(f"'roi_size' must be 3 ints >= 1; got {roi_size!r}.")
        roi_size = tuple(int(s) for s in roi_size)
    contrasts = list(contrasts)
    out_root = Path(output_dir) if output_dir is not None else pred_root
    cases = sorted(p.name for p in gt_root.iterdir() if p.is_dir() and any(p.glob("*.nii*")))
    if not cases:
        raise ValueError(f"gt_dir '{gt_root}' holds no case folders with NIfTI files.")
    expected = json.loads((in_root / "missing.json").read_text()) if (in_root / "missing.json").is_file() else {}
    if expected and set(cases) - set(expected):
        logger.warning("gt_dir cases not in %s (left over from an earlier run?): %s", in_root / "missing.json",
                       ", ".join(sorted(set(cases) - set(expected))))

    crop = ResizeWithPadOrCrop(roi_size) if roi_size is not None else None

    def prepare(vol: np.ndarray) -> np.ndarray:
        return vol if crop is None else convert_to_numpy(crop(vol[None]))[0].astype(np.float32)

    training: list[dict[str, str]] | None = None
    train_stats: dict[str, dict] = {}

    def training_statistics(missing: str, shape: tuple[int, ...]) -> dict:
        """Mean target, source contrast best correlated with the target and mean target quantiles, over training."""
        nonlocal training
        if missing in train_stats:
            stats = train_stats[missing]
            if stats["mean"].shape != shape:
                raise ValueError(
                    f"the training mean of '{missing}' has shape {stats['mean'].shape} but this case has {shape}; "
                    "pass roi_size to crop/pad all volumes to one grid."
                )
            return stats
        if training is None:
            training = build_datalist(datalist=train_datalist, keys={c: c for c in contrasts}, split="training")
        total, quantiles = np.zeros(shape, np.float64), []
        correlations: dict[str, list[float]] = {c: [] for c in contrasts if c != missing}
        for entry in training:
            vols = {c: prepare(_load(entry[c])) for c in contrasts}
            for c, vol in vols.items():
                if vol.shape != shape:
                    raise ValueError(
                        f"training volume {entry[c]} has shape {vol.shape} but the evaluated cases have "
                        f"{shape}; pass roi_size to crop/pad both to one grid."
                    )
            brain = _brain([v for c, v in vols.items() if c != missing])
            mask = brain if brain.any() else None
            normed = {c: normalize_percentiles(v, mask=mask) for c, v in vols.items()}
            total += normed[missing]
            quantiles.append(quantile_function(normed[missing], mask))
            for c in correlations:
                correlations[c].append(pearson(normed[c], normed[missing], mask))
        mean_corr = {c: float(np.nanmean(v)) if not np.all(np.isnan(v)) else -np.inf for c, v in correlations.items()}
        train_stats[missing] = {
            "mean": (total / len(training)).astype(np.float32),
            "source": max(mean_corr, key=mean_corr.get),
            "correlations": mean_corr,
            "quantiles": np.mean(quantiles, axis=0),
        }
        return train_stats[missing]

    rows: list[dict] = []
    failures: list[dict] = []
    choices: dict[str, str] = {}
    for case in cases:
        missing = None
        try:
            gt_files = {k: v for k, v in find_case_files(gt_root / case).items() if k in contrasts}
            if len(gt_files) != 1:
                raise _CaseFailure(f"expected one ground-truth contrast in {gt_root / case}, found {sorted(gt_files)}")
            (missing, gt_path), = gt_files.items()
            if case in expected and expected[case] != missing:
                raise _CaseFailure(f"missing.json says '{expected[case]}' but gt_dir holds '{missing}'")
            pred_path = pred_root / f"{case}-{missing}.nii.gz"
            if not pred_path.is_file():
                raise _CaseFailure(f"no prediction {pred_path}")
            if not (in_root / case).is_dir():
                raise _CaseFailure(f"no input folder {in_root / case}")
            in_files = {k: v for k, v in find_case_files(in_root / case).items() if k in contrasts and k != missing}
            if not in_files:
                raise _CaseFailure(f"no input contrast in {in_root / case}")
            try:
                gt = _load(gt_path)
                pred = _load(pred_path)
                inputs = {k: _load(v) for k, v in in_files.items()}
            except Exception as e:  # unreadable file: report, go on
                raise _CaseFailure(f"cannot read a file ({type(e).__name__}: {e})") from e
            for name, vol in (("prediction", pred), *inputs.items()):
                if vol.shape != gt.shape:
                    raise _CaseFailure(f"{name} has shape {vol.shape}, the ground truth {gt.shape}")
            gt, pred, inputs = prepare(gt), prepare(pred), {k: prepare(v) for k, v in inputs.items()}
            brain = _brain(list(inputs.values()))
            if not brain.any():
                raise _CaseFailure("the inputs are all zero: empty brain mask")
        except _CaseFailure as e:
            logger.warning("%s: %s", case, e)
            failures.append({"case": case, "missing": missing, "reason": str(e)})
            continue

        gt_n = normalize_percentiles(gt, mask=brain)
        inputs_n = {k: normalize_percentiles(v, mask=brain) for k, v in inputs.items()}
        stats = training_statistics(missing, gt.shape)
        if stats["source"] not in inputs_n:
            reason = f"input '{stats['source']}' (the training choice of source for '{missing}') is not available"
            logger.warning("%s: %s", case, reason)
            failures.append({"case": case, "missing": missing, "reason": reason})
            continue
        choices[case], best = best_correlated_baseline(inputs_n, gt_n, brain)
        candidates = {
            "prediction": normalize_percentiles(pred, mask=brain),
            "best_correlated": best,
            "train_hist_match": training_histogram_baseline(inputs_n[stats["source"]], stats["quantiles"], brain),
            "mean_target": stats["mean"],
        }
        pred_n = candidates["prediction"]
        save_slices_png(
            [*inputs_n.values(), pred_n, gt_n, np.abs(pred_n - gt_n)],
            out_root / "pictures" / f"{case}-{missing}.png",
            (0.0, 1.0),
            titles=[*inputs_n, f"{missing} synthesised", f"{missing} ground truth", "|error|"],
        )
        for method, volume in candidates.items():
            rows.append({"case": case, "missing": missing, "method": method, **paired_metrics(volume, gt_n, brain)})

    if not rows:  # nothing scored: a report of 0 cases would read as a result
        reasons = "\n  ".join(f"{f['case']}: {f['reason']}" for f in failures[:5])
        more = f"\n  ... ({len(failures)} in all)" if len(failures) > 5 else ""
        raise ValueError(f"no case of gt_dir '{gt_root}' could be scored, so no report is written:\n  {reasons}{more}\n"
                         f"pred_dir '{pred_root}' must hold '<case>-<missing>.nii.gz' predictions of these cases "
                         "(is it the right folder?).")
    missing_contrasts = sorted({r["missing"] for r in rows}, key=lambda c: (contrasts.index(c), c))
    summary = {
        "num_cases": len({r["case"] for r in rows}),
        "missing_contrasts": missing_contrasts,
        "methods": {
            m: {
                "all": _summarise([r for r in rows if r["method"] == m]),
                "by_missing": {
                    c: _summarise([r for r in rows if r["method"] == m and r["missing"] == c]) for c in missing_contrasts
                },
            }
            for m in METHODS
        },
        "failures": failures,
        "best_correlated_choice": choices,
        "train_hist_match_source": {m: train_stats[m]["source"] for m in sorted(train_stats)},
    }
    out_root.mkdir(parents=True, exist_ok=True)
    files = {"per_case": out_root / "per_case.csv", "summary_json": out_root / "summary.json", "summary_md": out_root / "summary.md"}
    with open(files["per_case"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "missing", "method", *METRIC_KEYS])
        writer.writeheader()
        writer.writerows(rows)
    files["summary_json"].write_text(json.dumps(summary, indent=2) + "\n")
    files["summary_md"].write_text(_markdown(summary))
    return {**summary, "per_case": rows, "files": {k: str(v) for k, v in files.items()}}
