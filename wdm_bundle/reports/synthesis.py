"""Score missing-contrast predictions on a pseudo-validation set against simple baselines; write the report.

Steps: load a case (:func:`_load_case`), score it (:func:`_score_case`, with training statistics from
:class:`_TrainingStatistics`), then summarise and write (`wdm_bundle.reports.summary`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.transforms import ResizeWithPadOrCrop
from monai.utils import convert_to_numpy

from wdm_bundle.data.datalists import build_datalist
from wdm_bundle.data.io import CONTRASTS, find_case_files, find_cases, load_volume, require_folder
from wdm_bundle.metrics.baselines import (
    best_correlated_baseline,
    pearson,
    quantile_function,
    training_histogram_baseline,
)
from wdm_bundle.metrics.paired import normalize_percentiles, paired_metrics
from wdm_bundle.reports.summary import synthesis_summary, write_synthesis_report
from wdm_bundle.visualize import save_slices_png

__all__ = ["METHODS", "compare_synthesis"]

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("prediction", "best_correlated", "train_hist_match", "mean_target")

Prepare = Callable[[np.ndarray], np.ndarray]


class _CaseFailure(Exception):
    """This case cannot be scored; the message says why, ``missing`` is its missing contrast if known."""

    def __init__(self, reason: str, missing: str | None = None) -> None:
        super().__init__(reason, missing)
        self.reason, self.missing = reason, missing

    def __str__(self) -> str:
        return self.reason


@dataclass
class _Case:
    """The volumes of one case, prepared (cropped/padded), raw intensities; ``brain`` from the inputs."""

    name: str
    missing: str
    gt: np.ndarray
    pred: np.ndarray
    inputs: dict[str, np.ndarray]
    brain: np.ndarray


def _brain(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels where any of the raw ``volumes`` is non-zero (the skull-stripped brain)."""
    return np.logical_or.reduce([v != 0 for v in volumes])


def _preparation(pad_crop_size: Sequence[int] | None) -> Prepare:
    """Centre-crop/zero-pad a (D, H, W) volume to ``pad_crop_size`` (identity for None); ValueError if it is bad."""
    if pad_crop_size is None:
        return lambda vol: vol
    if len(pad_crop_size) != 3 or any(int(s) != s or s < 1 for s in pad_crop_size):
        raise ValueError(f"'pad_crop_size' must be 3 ints >= 1; got {pad_crop_size!r}.")
    crop = ResizeWithPadOrCrop(tuple(int(s) for s in pad_crop_size))
    return lambda vol: convert_to_numpy(crop(vol[None]))[0].astype(np.float32)


class _TrainingStatistics:
    """Per missing contrast, over the ``training`` cases of a datalist (computed once, on first use):
    the mean normalised target, the source contrast best correlated with it and its mean quantile function."""

    def __init__(self, train_datalist: str | os.PathLike, contrasts: Sequence[str], prepare: Prepare) -> None:
        self.train_datalist, self.contrasts, self.prepare = train_datalist, list(contrasts), prepare
        self._training: list[dict[str, str]] | None = None
        self._stats: dict[str, dict] = {}

    def sources(self) -> dict[str, str]:
        """{missing contrast: the source contrast chosen for it}, for the contrasts seen so far."""
        return {m: self._stats[m]["source"] for m in sorted(self._stats)}

    def __call__(self, missing: str, shape: tuple[int, ...]) -> dict:
        if missing in self._stats:
            stats = self._stats[missing]
            if stats["mean"].shape != shape:
                raise ValueError(
                    f"the training mean of '{missing}' has shape {stats['mean'].shape} but this case has {shape}; "
                    "pass pad_crop_size to crop/pad all volumes to one grid."
                )
            return stats
        if self._training is None:
            keys = {c: c for c in self.contrasts}
            self._training = build_datalist(datalist=self.train_datalist, keys=keys, split="training")
        self._stats[missing] = self._compute(missing, shape)
        return self._stats[missing]

    def _compute(self, missing: str, shape: tuple[int, ...]) -> dict:
        total, quantiles = np.zeros(shape, np.float64), []
        correlations: dict[str, list[float]] = {c: [] for c in self.contrasts if c != missing}
        for entry in self._training:
            vols = {c: self.prepare(load_volume(entry[c])) for c in self.contrasts}
            for c, vol in vols.items():
                if vol.shape != shape:
                    raise ValueError(
                        f"training volume {entry[c]} has shape {vol.shape} but the evaluated cases have "
                        f"{shape}; pass pad_crop_size to crop/pad both to one grid."
                    )
            brain = _brain([v for c, v in vols.items() if c != missing])
            mask = brain if brain.any() else None
            normed = {c: normalize_percentiles(v, mask=mask) for c, v in vols.items()}
            total += normed[missing]
            quantiles.append(quantile_function(normed[missing], mask))
            for c in correlations:
                correlations[c].append(pearson(normed[c], normed[missing], mask))
        mean_corr = {c: float(np.nanmean(v)) if not np.all(np.isnan(v)) else -np.inf for c, v in correlations.items()}
        return {
            "mean": (total / len(self._training)).astype(np.float32),
            "source": max(mean_corr, key=mean_corr.get),
            "correlations": mean_corr,
            "quantiles": np.mean(quantiles, axis=0),
        }


def _load_case(
    case: str, roots: tuple[Path, Path, Path], contrasts: Sequence[str], expected: str | None, prepare: Prepare
) -> _Case:
    """Read and check the ground truth, prediction and inputs of ``case``; ``roots`` = (gt, input, pred) folders.

    Raises:
        _CaseFailure: a missing, unreadable or mis-shaped file, or an empty brain mask.
    """
    gt_root, in_root, pred_root = roots
    gt_files = {k: v for k, v in find_case_files(gt_root / case).items() if k in contrasts}
    if len(gt_files) != 1:
        raise _CaseFailure(f"expected one ground-truth contrast in {gt_root / case}, found {sorted(gt_files)}")
    ((missing, gt_path),) = gt_files.items()
    if expected is not None and expected != missing:
        raise _CaseFailure(f"missing.json says '{expected}' but gt_dir holds '{missing}'", missing)
    pred_path = pred_root / f"{case}-{missing}.nii.gz"
    if not pred_path.is_file():
        raise _CaseFailure(f"no prediction {pred_path}", missing)
    if not (in_root / case).is_dir():
        raise _CaseFailure(f"no input folder {in_root / case}", missing)
    in_files = {k: v for k, v in find_case_files(in_root / case).items() if k in contrasts and k != missing}
    if not in_files:
        raise _CaseFailure(f"no input contrast in {in_root / case}", missing)
    try:
        gt, pred = load_volume(gt_path), load_volume(pred_path)
        inputs = {k: load_volume(v) for k, v in in_files.items()}
    except Exception as e:  # unreadable file: report, go on
        raise _CaseFailure(f"cannot read a file ({type(e).__name__}: {e})", missing) from e
    for name, vol in (("prediction", pred), *inputs.items()):
        if vol.shape != gt.shape:
            raise _CaseFailure(f"{name} has shape {vol.shape}, the ground truth {gt.shape}", missing)
    gt, pred, inputs = prepare(gt), prepare(pred), {k: prepare(v) for k, v in inputs.items()}
    brain = _brain(list(inputs.values()))
    if not brain.any():
        raise _CaseFailure("the inputs are all zero: empty brain mask", missing)
    return _Case(case, missing, gt, pred, inputs, brain)


def _score_case(case: _Case, training: _TrainingStatistics, out_root: Path) -> tuple[str, list[dict]]:
    """(the best-correlated input, one row of metrics per method) for ``case``; writes its picture.

    Raises:
        _CaseFailure: the training choice of source contrast is not among the case's inputs.
    """
    brain, missing = case.brain, case.missing
    gt_n = normalize_percentiles(case.gt, mask=brain)
    inputs_n = {k: normalize_percentiles(v, mask=brain) for k, v in case.inputs.items()}
    stats = training(missing, case.gt.shape)
    if stats["source"] not in inputs_n:
        raise _CaseFailure(
            f"input '{stats['source']}' (the training choice of source for '{missing}') is not available", missing
        )
    choice, best = best_correlated_baseline(inputs_n, gt_n, brain)
    candidates = {
        "prediction": normalize_percentiles(case.pred, mask=brain),
        "best_correlated": best,
        "train_hist_match": training_histogram_baseline(inputs_n[stats["source"]], stats["quantiles"], brain),
        "mean_target": stats["mean"],
    }
    pred_n = candidates["prediction"]
    save_slices_png(
        [*inputs_n.values(), pred_n, gt_n, np.abs(pred_n - gt_n)],
        out_root / "pictures" / f"{case.name}-{missing}.png",
        (0.0, 1.0),
        titles=[*inputs_n, f"{missing} synthesised", f"{missing} ground truth", "|error|"],
    )
    rows = [
        {"case": case.name, "missing": missing, "method": method, **paired_metrics(volume, gt_n, brain)}
        for method, volume in candidates.items()
    ]
    return choice, rows


def _nothing_scored(gt_root: Path, pred_root: Path, failures: list[dict]) -> ValueError:
    """The error when no case could be scored: a report of 0 cases would read as a result."""
    reasons = "\n  ".join(f"{f['case']}: {f['reason']}" for f in failures[:5])
    more = f"\n  ... ({len(failures)} in all)" if len(failures) > 5 else ""
    return ValueError(
        f"no case of gt_dir '{gt_root}' could be scored, so no report is written:\n  {reasons}{more}\n"
        f"pred_dir '{pred_root}' must hold '<case>-<missing>.nii.gz' predictions of these cases "
        "(is it the right folder?)."
    )


def _expected_missing(in_root: Path, cases: Sequence[str]) -> dict[str, str]:
    """``<input_dir>/missing.json`` ({case: missing contrast}) if present, else {}; warns of cases it lacks."""
    path = in_root / "missing.json"
    expected = json.loads(path.read_text()) if path.is_file() else {}
    if expected and set(cases) - set(expected):
        logger.warning(
            "gt_dir cases not in %s (left over from an earlier run?): %s",
            path,
            ", ".join(sorted(set(cases) - set(expected))),
        )
    return expected


def _folders(
    input_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    train_datalist: str | os.PathLike,
) -> tuple[Path, Path, Path]:
    """(gt, input, pred) folders; FileNotFoundError for the first one (or ``train_datalist``) that does not exist."""
    roots = tuple(
        require_folder(d, n) for d, n in ((gt_dir, "gt_dir"), (input_dir, "input_dir"), (pred_dir, "pred_dir"))
    )
    if not Path(train_datalist).is_file():
        raise FileNotFoundError(f"train_datalist '{train_datalist}' does not exist.")
    return roots


def _score_cases(
    cases: Sequence[str],
    roots: tuple[Path, Path, Path],
    contrasts: list[str],
    prepare: Prepare,
    training: _TrainingStatistics,
    out_root: Path,
) -> tuple[list[dict], list[dict], dict[str, str]]:
    """Load and score each case: (metric rows, failures, best-correlated choices); a failed case is logged, skipped."""
    expected = _expected_missing(roots[1], cases)
    rows: list[dict] = []
    failures: list[dict] = []
    choices: dict[str, str] = {}
    for name in cases:
        try:
            case = _load_case(name, roots, contrasts, expected.get(name), prepare)
            choices[name], case_rows = _score_case(case, training, out_root)
        except _CaseFailure as e:
            logger.warning("%s: %s", name, e)
            failures.append({"case": name, "missing": e.missing, "reason": str(e)})
            continue
        rows += case_rows
    return rows, failures, choices


def compare_synthesis(
    input_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    train_datalist: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    pad_crop_size: Sequence[int] | None = None,
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
        pad_crop_size: if given, every volume (cases and training) is centre-cropped/zero-padded to
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
            a bad ``pad_crop_size``, or training volumes whose shape differs from a case's (use ``pad_crop_size``).
    """
    roots = _folders(input_dir, gt_dir, pred_dir, train_datalist)
    prepare, contrasts = _preparation(pad_crop_size), list(contrasts)
    out_root = Path(output_dir) if output_dir is not None else roots[2]
    cases = [p.name for p in find_cases(roots[0], "gt_dir")]
    if not cases:
        raise ValueError(f"gt_dir '{roots[0]}' holds no case folders with NIfTI files.")
    training = _TrainingStatistics(train_datalist, contrasts, prepare)
    rows, failures, choices = _score_cases(cases, roots, contrasts, prepare, training, out_root)
    if not rows:
        raise _nothing_scored(roots[0], roots[2], failures)
    summary = synthesis_summary(rows, failures, choices, training.sources(), contrasts, METHODS)
    return {**summary, "per_case": rows, "files": write_synthesis_report(out_root, rows, summary)}
