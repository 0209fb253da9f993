"""Writing the runners' reports: JSON files, and the summary tables of the synthesis report."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wdm_bundle.metrics.paired import METRIC_KEYS

__all__ = ["mean_std", "synthesis_markdown", "synthesis_summary", "write_json", "write_synthesis_report"]


def write_json(path: Path, content: dict) -> None:
    """``content`` as indented JSON (``inf`` as ``Infinity``, which Python's ``json`` reads back) into ``path``."""
    path.write_text(json.dumps(content, indent=2) + "\n")


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std"}`` of ``values`` in float64 (NaN for none)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan}
    with np.errstate(invalid="ignore"):
        return {"mean": float(np.mean(v)), "std": float(np.std(v))}


def _summarise(rows: list[dict]) -> dict:
    out = {"n": len(rows)}
    for key in METRIC_KEYS:
        out[key] = mean_std([r[key] for r in rows])
    return out


def synthesis_summary(
    rows: list[dict],
    failures: list[dict],
    choices: dict[str, str],
    sources: dict[str, str],
    contrasts: Sequence[str],
    methods: Sequence[str],
) -> dict:
    """The content of ``summary.json``: per method (in the order of ``methods``), all cases and by missing contrast.

    Args:
        rows: one per case and method: ``case``, ``missing``, ``method`` and the metrics of ``METRIC_KEYS``.
        failures: ``{"case", "missing", "reason"}`` of the cases not scored.
        choices: {case: the best-correlated input}; sources: {missing: the training choice of source}.
        contrasts: the contrast suffixes (they order the missing contrasts).
    """
    contrasts = list(contrasts)
    missing_contrasts = sorted({r["missing"] for r in rows}, key=lambda c: (contrasts.index(c), c))
    per_method = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        by_missing = {c: _summarise([r for r in mine if r["missing"] == c]) for c in missing_contrasts}
        per_method[m] = {"all": _summarise(mine), "by_missing": by_missing}
    return {
        "num_cases": len({r["case"] for r in rows}),
        "missing_contrasts": missing_contrasts,
        "methods": per_method,
        "failures": failures,
        "best_correlated_choice": choices,
        "train_hist_match_source": sources,
    }


def _fmt(stats: dict[str, float], digits: int) -> str:
    mean, std = stats["mean"], stats["std"]
    if not math.isfinite(mean):
        return str(mean)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def synthesis_markdown(summary: dict) -> str:
    """``summary.md``: a table of mean ± std of SSIM and PSNR (whole volume, brain) per method, then the failures."""
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
    first = next(iter(summary["methods"].values()))
    counts = ", ".join(f"{g}: {first['by_missing'][g]['n']}" for g in summary["missing_contrasts"])
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


def write_synthesis_report(out_root: Path, rows: list[dict], summary: dict) -> dict[str, str]:
    """Write ``per_case.csv``, ``summary.json`` and ``summary.md`` into ``out_root``; return their paths."""
    out_root.mkdir(parents=True, exist_ok=True)
    files = {
        "per_case": out_root / "per_case.csv",
        "summary_json": out_root / "summary.json",
        "summary_md": out_root / "summary.md",
    }
    with open(files["per_case"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "missing", "method", *METRIC_KEYS])
        writer.writeheader()
        writer.writerows(rows)
    write_json(files["summary_json"], summary)
    files["summary_md"].write_text(synthesis_markdown(summary))
    return {k: str(v) for k, v in files.items()}
