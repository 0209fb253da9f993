"""The report of the steps study (`wdm_bundle.reports.steps`): ``steps.csv``, ``steps.md``, ``steps.png``, ``steps.json``."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wdm_bundle.reports.inpainting import INPAINTING_METRIC_KEYS
from wdm_bundle.reports.steps import STEP_METRICS, StepOption, fewest_steps_within
from wdm_bundle.reports.summary import mean_std, write_json

__all__ = ["REPORT_FILES", "summarise_options", "fewest_steps", "steps_markdown", "write_steps_report"]

REPORT_FILES = {"csv": "steps.csv", "markdown": "steps.md", "plot": "steps.png", "json": "steps.json"}
#: Summarised per option: the ranking metrics, then the cost.
SUMMARY_KEYS = (*STEP_METRICS, "seconds", "network_calls")
TOLERANCE = 0.1
RULE = (
    "fewest DDIM steps whose mean SSIM >= 0.9 ref, mean PSNR >= 0.9 ref and mean MSE <= 1.1 ref, ref = DDPM over "
    "all T steps (as good or better is always within)"
)


def summarise_options(rows: Sequence[Mapping[str, Any]], options: Sequence[StepOption]) -> list[dict]:
    """Per option (in order): ``option``, ``sampler``, ``steps``, ``spacing``, ``n`` and {mean, std} over its
    cases of each of ``SUMMARY_KEYS``."""
    out = []
    for option in options:
        mine = [r for r in rows if r["option"] == option.name]
        head = {"option": option.name, "sampler": option.sampler, "steps": option.steps}
        head.update(spacing=option.spacing or "", n=len(mine))
        out.append({**head, **{k: mean_std([r[k] for r in mine]) for k in SUMMARY_KEYS}})
    return out


def fewest_steps(summary: Sequence[Mapping[str, Any]], tolerance: float = TOLERANCE) -> dict[str, int | None]:
    """Per DDIM spacing of ``summary`` (`summarise_options`), `fewest_steps_within` ``tolerance`` of the DDPM row
    (None for all if DDPM scored no case)."""
    reference = next(s for s in summary if s["sampler"] == "ddpm")
    spacings = list(dict.fromkeys(s["spacing"] for s in summary if s["sampler"] == "ddim"))
    out: dict[str, int | None] = {}
    for spacing in spacings:
        means = {s["steps"]: {m: s[m]["mean"] for m in STEP_METRICS} for s in summary if s["spacing"] == spacing}
        means = {k: v for k, v in means.items() if not all(math.isnan(x) for x in v.values())}
        ref = {m: reference[m]["mean"] for m in STEP_METRICS}
        out[spacing] = fewest_steps_within(means, ref, tolerance) if reference["n"] else None
    return out


def _cell(stats: Mapping[str, float], digits: int) -> str:
    if not math.isfinite(stats["mean"]):
        return str(stats["mean"])
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def steps_markdown(result: Mapping[str, Any]) -> str:
    """``steps.md``: mean ± std per option of SSIM, PSNR, MSE, seconds per case and network calls; the rule."""
    columns = [("ssim", "SSIM", 4), ("psnr", "PSNR", 2), ("mse", "MSE", 5), ("seconds", "s / case", 2)]
    columns.append(("network_calls", "network calls", 1))
    lines = ["| option | n | " + " | ".join(c[1] for c in columns) + " |", "|" + "---|" * (len(columns) + 2)]
    for s in result["options"]:
        lines.append(f"| {s['option']} | {s['n']} | " + " | ".join(_cell(s[k], d) for k, _, d in columns) + " |")
    t_max = result["num_train_timesteps"]
    fewest = [f"- {sp}: {n if n is not None else 'none'}" for sp, n in result["fewest_steps"].items()]
    text = [
        "# Inpainting quality vs sampling steps",
        "",
        f"{result['settings']['num_cases']} case(s), seed {result['settings']['seed']}, the same noise for every "
        f"option; mean ± std over cases. Challenge metrics (`inpainting` package) inside the mask. DDPM-{t_max}: "
        f"ancestral over all T = {t_max} steps (the reference); ddim-N-<spacing>: deterministic DDIM with N steps.",
        "",
        *lines,
        "",
        f"## Fewest DDIM steps within {TOLERANCE:.0%} of DDPM-{t_max} on every metric",
        "",
        f"Rule: {result['rule']}.",
        "",
        *fewest,
    ]
    if result["failures"]:
        text += ["", f"## Failures ({len(result['failures'])})", ""]
        text += [f"- {f.get('option', 'all')}, {f['case']}: {f['reason']}" for f in result["failures"]]
    return "\n".join(text) + "\n"


def _plot(path: Path, summary: Sequence[Mapping[str, Any]], t_max: int) -> None:
    """``steps.png``: each metric (and seconds per case) vs DDIM steps, log x, a line per spacing, DDPM-T dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("ssim", "SSIM"), ("psnr", "PSNR (dB)"), ("mse", "MSE"), ("seconds", "seconds per case")]
    reference = next(s for s in summary if s["sampler"] == "ddpm")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    for ax, (key, label) in zip(axes, keys):
        for spacing in dict.fromkeys(s["spacing"] for s in summary if s["sampler"] == "ddim"):
            mine = sorted((s for s in summary if s["spacing"] == spacing), key=lambda s: s["steps"])
            xs, ys = [s["steps"] for s in mine], [s[key]["mean"] for s in mine]
            ax.errorbar(xs, ys, yerr=[s[key]["std"] for s in mine], marker="o", capsize=3, label=f"DDIM {spacing}")
        ref = reference[key]["mean"]
        ax.axhline(ref, color="black", linestyle="--", label=f"DDPM-{t_max}")
        if key in STEP_METRICS and math.isfinite(ref):
            bound = (1 - TOLERANCE) * ref if STEP_METRICS[key] else (1 + TOLERANCE) * ref
            ax.axhline(bound, color="grey", linestyle=":", label=f"{TOLERANCE:.0%} of DDPM-{t_max}")
        ax.set_xscale("log")
        ticks = sorted({s["steps"] for s in summary if s["sampler"] == "ddim"})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_yscale("log" if key == "seconds" else "linear")
        ax.set_xlabel("DDIM steps")
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_steps_report(
    out: Path,
    rows: Sequence[Mapping[str, Any]],
    options: Sequence[StepOption],
    failures: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    num_train_timesteps: int,
) -> dict:
    """Write the four `REPORT_FILES` into ``out``: the CSV of ``rows`` (one per option and case), the summary.

    Returns:
        The content of ``steps.json`` (``num_train_timesteps``, ``rule``, ``tolerance``, ``fewest_steps``
        {spacing: steps or None}, ``options`` (`summarise_options`), ``failures``, ``settings``), plus ``rows``
        and ``files``.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / name for k, name in REPORT_FILES.items()}
    head = ["option", "sampler", "steps", "spacing", "case", "jump_length", "jump_n_sample"]
    fields = [*head, *INPAINTING_METRIC_KEYS, "seconds", "network_calls"]
    with open(paths["csv"], "w", newline="") as f:
        table = csv.writer(f)
        table.writerow(fields)
        table.writerows([row[k] for k in fields] for row in rows)
    summary = summarise_options(rows, options)
    result = {
        "num_train_timesteps": int(num_train_timesteps),
        "rule": RULE,
        "tolerance": TOLERANCE,
        "fewest_steps": fewest_steps(summary),
        "options": summary,
        "failures": list(failures),
        "settings": dict(settings),
    }
    write_json(paths["json"], result)
    paths["markdown"].write_text(steps_markdown(result))
    _plot(paths["plot"], summary, int(num_train_timesteps))
    return {**result, "rows": list(rows), "files": {k: str(p) for k, p in paths.items()}}
