"""Summary tables of the downstream report: mean ± std by variant and region, and the gap real − synthesis."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wdm_bundle.metrics.segmentation import REGIONS
from wdm_bundle.reports.summary import mean_std, write_json

__all__ = ["CSV_FIELDS", "downstream_markdown", "downstream_summary", "write_downstream_report"]

CSV_FIELDS: tuple[str, ...] = ("case", "missing", "variant", "region", "dice", "hd95", "ssim_tumour", "ssim_healthy")
_SSIM = ("ssim_tumour", "ssim_healthy")


def _finite_stats(values: Sequence[float]) -> dict[str, float]:
    """:func:`mean_std` of the non-NaN values (SSIM is NaN where a case has no tumour or no healthy voxel)."""
    return mean_std([v for v in values if not math.isnan(v)])


def _summarise(rows: list[dict]) -> dict:
    """``n`` cases, ``{region: {"dice", "hd95": {"mean", "std"}}}`` and the two SSIMs (once per case)."""
    out: dict = {"n": len({r["case"] for r in rows})}
    for region in REGIONS:
        mine = [r for r in rows if r["region"] == region]
        out[region] = {m: mean_std([r[m] for r in mine]) for m in ("dice", "hd95")}
    per_case = [r for r in rows if r["region"] == REGIONS[0]]
    out.update({key: _finite_stats([r[key] for r in per_case]) for key in _SSIM})
    return out


def _gap(rows: list[dict], cases: set[str] | None = None) -> dict:
    """Per region, mean ± std over cases of (real − synthesis) for Dice and HD95 (paired by case)."""
    value = {(r["case"], r["variant"], r["region"]): r for r in rows if cases is None or r["case"] in cases}
    names = sorted({c for c, v, _ in value if v == "real"} & {c for c, v, _ in value if v == "synthesis"})
    out = {}
    for region in REGIONS:
        out[region] = {
            m: mean_std([value[(c, "real", region)][m] - value[(c, "synthesis", region)][m] for c in names])
            for m in ("dice", "hd95")
        }
    return out


def downstream_summary(rows: list[dict], failures: list[dict], variants: Sequence[str], contrasts: Sequence[str]):
    """The content of ``summary.json``: per variant, all cases and by missing contrast; the real − synthesis gap.

    Args:
        rows: one per case, variant and region (the keys of :data:`CSV_FIELDS`).
        failures: ``{"case", "missing", "reason"}`` of the cases not scored.
        variants: the variants in report order; contrasts: the contrast suffixes (they order the missing contrasts).
    """
    contrasts = list(contrasts)
    missing = sorted({r["missing"] for r in rows}, key=lambda c: (contrasts.index(c) if c in contrasts else 99, c))
    per_variant = {}
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        by_missing = {c: _summarise([r for r in mine if r["missing"] == c]) for c in missing}
        per_variant[v] = {"all": _summarise(mine), "by_missing": by_missing}
    gap = None
    if {"real", "synthesis"} <= set(variants):
        by_missing = {c: _gap(rows, {r["case"] for r in rows if r["missing"] == c}) for c in missing}
        gap = {"all": _gap(rows), "by_missing": by_missing}
    return {
        "num_cases": len({r["case"] for r in rows}),
        "missing_contrasts": missing,
        "variants": per_variant,
        "gap_real_minus_synthesis": gap,
        "failures": failures,
    }


def _fmt(stats: dict[str, float], digits: int) -> str:
    mean, std = stats["mean"], stats["std"]
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(summary: dict, group: str) -> list[str]:
    """Markdown rows for ``group`` (``"all"`` or a missing contrast): real, synthesis, the gap, then the baselines."""
    header = ["variant", "n", *(f"Dice {r}" for r in REGIONS), *(f"HD95 {r}" for r in REGIONS), "SSIM tumour"]
    lines = ["| " + " | ".join([*header, "SSIM healthy"]) + " |", "|" + "---|" * (len(header) + 1)]

    def row(name: str, stats: dict, n: int | str, ssim: bool = True) -> str:
        cells = [name, str(n), *(_fmt(stats[r]["dice"], 3) for r in REGIONS)]
        cells += [_fmt(stats[r]["hd95"], 2) for r in REGIONS]
        cells += [_fmt(stats[k], 3) if ssim else "" for k in _SSIM]
        return "| " + " | ".join(cells) + " |"

    for variant, result in summary["variants"].items():
        stats = result["all"] if group == "all" else result["by_missing"][group]
        lines.append(row(variant, stats, stats["n"]))
        gap = summary["gap_real_minus_synthesis"]
        if variant == "synthesis" and gap is not None:
            lines.append(
                row("**real − synthesis**", gap["all"] if group == "all" else gap["by_missing"][group], "", False)
            )
    return lines


def downstream_markdown(summary: dict) -> str:
    """``summary.md``: the table over all cases, one per missing contrast, then the failures."""
    text = [
        "# Downstream segmentation: does the synthesised contrast help?",
        "",
        f"{summary['num_cases']} case(s); segmenter inputs: the three real contrasts plus the missing one from each "
        f"variant; mean ± std over cases. Dice and HD95 against the reference labels, backend `{summary['backend']}` "
        "(both empty: Dice 1, HD95 0; one empty or no overlap: HD95 373.13). SSIM (3D, window 11) of the variant's "
        "missing contrast against the ground truth, percentile-normalised to [0, 1] over the brain, inside the "
        "reference whole tumour and in the healthy brain (brain minus whole tumour). `hist_match`: deployable "
        "(source contrast and target histogram from the training cases); `oracle_hist_match`: picks and matches with "
        "the ground truth; `mean_target`: mean training target; `zeros`: an empty contrast.",
        "",
        "## All cases",
        "",
        *_table(summary, "all"),
    ]
    for c in summary["missing_contrasts"]:
        text += ["", f"## Missing {c}", "", *_table(summary, c)]
    if summary["failures"]:
        text += ["", f"## Failures ({len(summary['failures'])})", ""]
        text += [f"- {f['case']} ({f['missing'] or '?'}): {f['reason']}" for f in summary["failures"]]
    return "\n".join(text) + "\n"


def write_downstream_report(out_root: Path, rows: list[dict], summary: dict) -> dict[str, str]:
    """Write ``per_case.csv``, ``summary.json`` and ``summary.md`` into ``out_root``; return their paths."""
    out_root.mkdir(parents=True, exist_ok=True)
    files = {k: out_root / n for k, n in (("per_case", "per_case.csv"), ("json", "summary.json"), ("md", "summary.md"))}
    with open(files["per_case"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        writer.writerows(rows)
    write_json(files["json"], summary)
    files["md"].write_text(downstream_markdown(summary))
    return {k: str(v) for k, v in files.items()}
