"""Few-step samplers of the DDPM demo model: quality and diversity with at most a handful of network calls.

Each option of `FEWSTEP_RUNS` samples the quality section's DDPM (x0) demo model with the same number of volumes
for several seeds and is scored as the quality section does (`measure.score_samples`): mean-image RMSE, histogram
W1 and MS-SSIM among the samples, seed by seed and averaged. The reference is DDPM-1000 with the same seeds. An
option is *within 10 %* when its seed-averaged RMSE and W1 are at most 10 % higher than DDPM-1000's and its MS-SSIM
within 10 % of it either way; it is *as diverse* when its MS-SSIM is within 0.02 of DDPM-1000's or closer to the
real set's (lower MS-SSIM = more diverse samples).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from . import measure

__all__ = [
    "FEWSTEP_RUNS",
    "QUALITY_TOLERANCE",
    "DIVERSITY_TOLERANCE",
    "MAX_CALLS",
    "network_calls",
    "score_run",
    "summarize",
    "quality_ok",
    "diversity_ok",
    "run_fewstep",
    "best_fewstep",
    "fewstep_targets",
    "markdown_fewstep",
    "plot_fewstep",
]

#: (label, sampler, steps, timestep_spacing, ddim_eta) of each option; steps None = all T (DDPM-1000, the reference)
FEWSTEP_RUNS = [
    ("DDPM-1000", "ddpm", None, "linspace", 0.0),
    ("DDIM-10", "ddim", 10, "linspace", 0.0),
    ("DDIM-4", "ddim", 4, "linspace", 0.0),
    ("DDIM-4 leading", "ddim", 4, "leading", 0.0),
    ("DDIM-4 trailing", "ddim", 4, "trailing", 0.0),
    ("DDIM-4 linspace η=1", "ddim", 4, "linspace", 1.0),
    ("DDIM-4 trailing η=0.5", "ddim", 4, "trailing", 0.5),
    ("DDIM-4 trailing η=1", "ddim", 4, "trailing", 1.0),
    ("DDIM-2 trailing η=1", "ddim", 2, "trailing", 1.0),
    ("DDIM-1", "ddim", 1, "trailing", 0.0),
]
#: seed-averaged RMSE and W1 at most this much higher than DDPM-1000's, MS-SSIM this close either way
QUALITY_TOLERANCE = 0.10
#: MS-SSIM among samples at most this far from DDPM-1000's (else at least as close to the real set's)
DIVERSITY_TOLERANCE = 0.02
#: the few-step target: at most this many network calls per sample
MAX_CALLS = 4
_METRICS = ("mean_image_rmse", "histogram_w1", "ms_ssim_fake", "ms_ssim_real", "time")


def network_calls(sampler: str, steps: int | None, num_train_timesteps: int) -> int:
    """Network calls per sample: one per step (DDPM with ``steps`` None: all T)."""
    return num_train_timesteps if steps is None else int(steps)


def score_run(
    run: tuple, seed: int, bundle_root: Path, common: dict, work_dir: Path, real_dir: Path, num_samples: int
) -> dict:
    """Sample ``num_samples`` volumes with option ``run`` (a `FEWSTEP_RUNS` entry) and ``seed``; the scores of
    `measure.score_samples` with ``seed``."""
    label, sampler, steps, spacing, eta = run
    sampling = {
        "num_samples": num_samples,
        "batch_size": num_samples,
        "sampler": sampler,
        "num_inference_steps": steps,
        "timestep_spacing": spacing,
        "ddim_eta": float(eta),
        "seed": int(seed),
    }
    name = f"fewstep_{label}_seed{seed}".replace(" ", "_").replace("=", "").replace("η", "eta")
    scores = measure.score_samples(Path(bundle_root), name, sampling, common, Path(work_dir), Path(real_dir))
    return {"seed": int(seed), **scores}


def summarize(run: tuple, per_seed: list[dict], num_train_timesteps: int) -> dict:
    """One option's row: its settings, network calls, the seed average of each metric and the per-seed values."""
    label, sampler, steps, spacing, eta = run
    row = {
        "label": label,
        "sampler": sampler,
        "steps": steps,
        "timestep_spacing": spacing,
        "ddim_eta": float(eta),
        "calls": network_calls(sampler, steps, num_train_timesteps),
        "seeds": [p["seed"] for p in per_seed],
        "per_seed": per_seed,
    }
    for k in _METRICS:
        values = [p[k] for p in per_seed if p.get(k) is not None]
        row[k] = statistics.fmean(values) if values else None
    return row


def quality_ok(row: dict, ref: dict, tolerance: float = QUALITY_TOLERANCE) -> bool:
    """RMSE and W1 at most ``tolerance`` higher than ``ref``'s (lower is fine), MS-SSIM within it either way."""
    for k in ("mean_image_rmse", "histogram_w1"):
        if row[k] > ref[k] * (1 + tolerance):
            return False
    return abs(row["ms_ssim_fake"] / ref["ms_ssim_fake"] - 1) <= tolerance


def diversity_ok(row: dict, ref: dict, tolerance: float = DIVERSITY_TOLERANCE) -> bool:
    """MS-SSIM among samples within ``tolerance`` of ``ref``'s, or at least as close to the real set's as ``ref``'s."""
    ms, ref_ms, real = row["ms_ssim_fake"], ref["ms_ssim_fake"], ref.get("ms_ssim_real")
    if abs(ms - ref_ms) <= tolerance:
        return True
    return real is not None and abs(ms - real) <= abs(ref_ms - real)


def _reference(rows: list[dict]) -> dict:
    return next(r for r in rows if r["sampler"] == "ddpm" and r["steps"] is None)


def _per_seed_ok(row: dict, ref: dict) -> tuple[int, int]:
    """(seeds where the option meets both checks against DDPM-1000 of the same seed, seeds compared)."""
    ref_by_seed = {p["seed"]: {**p, "ms_ssim_real": ref.get("ms_ssim_real")} for p in ref["per_seed"]}
    pairs = [(p, ref_by_seed[p["seed"]]) for p in row["per_seed"] if p["seed"] in ref_by_seed]
    return sum(quality_ok(p, r) and diversity_ok(p, r) for p, r in pairs), len(pairs)


def run_fewstep(
    bundle_root: str | Path,
    demo_data: str,
    real_dir: Path,
    work_dir: Path,
    device: str,
    cfg: dict | None = None,
    ddpm_seed1: dict | None = None,
    *,
    num_samples: int | None = None,
    seeds: Sequence[int] | None = None,
    runs: Sequence[tuple] = tuple(FEWSTEP_RUNS),
) -> dict:
    """Sample and score every option of ``runs`` (default `FEWSTEP_RUNS`) with each seed.

    Args:
        bundle_root: the bundle of the trained DDPM demo model (the quality section's).
        demo_data, real_dir: the demo data folder and its held-out volumes (`measure._held_out_images`).
        work_dir: where the samples and their metrics go (``samples/fewstep_*``).
        device: torch device of the sampling.
        cfg: benchmark settings (`measure.FULL`, ...): ``num_train_timesteps``, ``quality_samples`` (the default
            ``num_samples``), ``fewstep_seeds`` (the default ``seeds``).
        ddpm_seed1: the quality section's DDPM-1000 row (seed 1); reused for DDPM-1000 seed 1 when it has
            ``num_samples`` samples (the same volumes: sampling is seeded), saving its minutes.
        num_samples, seeds: volumes per option and seed; seeds (default 1, 2, 3).

    Returns:
        {"num_samples", "seeds", "num_train_timesteps", "rows"}: one row per option (`summarize`): label,
        sampler, steps, timestep_spacing, ddim_eta, calls, the seed-averaged metrics and ``per_seed``.
    """
    cfg = cfg or {}
    num_t = int(cfg.get("num_train_timesteps", 1000))
    n = int(num_samples or cfg.get("quality_samples", 8))
    seeds = [int(s) for s in (seeds or cfg.get("fewstep_seeds") or (1, 2, 3))]
    common = {"dataset_dir": demo_data, "num_train_timesteps": num_t, "device": device}
    rows = []
    for run in runs:
        per_seed = []
        for seed in seeds:
            reuse = (
                ddpm_seed1 is not None
                and ddpm_seed1.get("num_samples") == n
                and ddpm_seed1.get("model") in (None, "ddpm")
            )
            if reuse and seed == 1 and run[1] == "ddpm" and run[2] is None:
                per_seed.append({"seed": 1, **{k: ddpm_seed1.get(k) for k in ("num_samples", *_METRICS)}})
                continue
            per_seed.append(score_run(run, seed, Path(bundle_root), common, Path(work_dir), Path(real_dir), n))
        rows.append(summarize(run, per_seed, num_t))
    return {"num_samples": n, "seeds": seeds, "num_train_timesteps": num_t, "rows": rows}


def best_fewstep(result: dict, max_calls: int = MAX_CALLS) -> tuple[dict | None, bool]:
    """(the best option with at most ``max_calls`` calls, whether it meets both checks): among those meeting
    them, the fewest calls then the smallest worst deviation; else the one with the smallest worst deviation."""
    ref = _reference(result["rows"])

    def worst(row: dict) -> float:
        devs = [max(0.0, row[k] / ref[k] - 1) for k in ("mean_image_rmse", "histogram_w1")]
        return max(devs + [abs(row["ms_ssim_fake"] / ref["ms_ssim_fake"] - 1)])

    few = [r for r in result["rows"] if r["calls"] <= max_calls]
    if not few:
        return None, False
    good = [r for r in few if quality_ok(r, ref) and diversity_ok(r, ref)]
    if good:
        return min(good, key=lambda r: (r["calls"], worst(r))), True
    return min(few, key=worst), False


def fewstep_targets(result: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met): a sampler with at most `MAX_CALLS` network calls within 10 % of DDPM-1000 and as
    diverse."""
    target = (
        f"A sampler with ≤{MAX_CALLS} network calls within 10% of DDPM-1000 on every metric and as diverse "
        f"(MS-SSIM within {DIVERSITY_TOLERANCE} or closer to the real set's)"
    )
    best, met = best_fewstep(result)
    if best is None:
        return [(target, "no option with that few calls was measured", None)]
    ok, compared = _per_seed_ok(best, _reference(result["rows"]))
    measured = (
        f"{best['label']}: RMSE {best['mean_image_rmse']:.3f}, W1 {best['histogram_w1']:.3f}, "
        f"MS-SSIM {best['ms_ssim_fake']:.3f} (mean of {len(best['seeds'])} seeds; both checks in {ok}/{compared})"
    )
    return [(target, measured, met)]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_fewstep(result: dict, png_name: str | None = None) -> list[str]:
    """The report section (Markdown lines): one table row per option, then each seed's values."""
    rows, ref = result["rows"], _reference(result["rows"])
    seeds = ", ".join(str(s) for s in result["seeds"])
    real = ref.get("ms_ssim_real")
    lines = [
        "## Samplers with four network calls (demo data)",
        "",
        f"The quality section's DDPM demo model sampled {result['num_samples']} volumes per option and seed "
        f"(seeds {seeds}); the metrics are seed averages. *Within 10 %*: RMSE and W1 at most 10 % above DDPM-1000's, "
        "MS-SSIM within 10 % either way. *As diverse*: MS-SSIM among the samples within "
        f"{DIVERSITY_TOLERANCE} of DDPM-1000's or closer to the real set's ({_fmt(real)}; lower = more diverse). "
        "η: DDIM's eta (`--ddim_eta`, 0 = deterministic, 1 = ancestral steps); spacing: `--timestep_spacing` "
        "(docs/acceleration.md).",
        "",
        "| option | network calls | RMSE | W1 | MS-SSIM (real " + _fmt(real) + ") | within 10%? | as diverse? |"
        " both, per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        is_ref = r is ref
        quality = "reference" if is_ref else ("yes" if quality_ok(r, ref) else "**no**")
        diverse = "reference" if is_ref else ("yes" if diversity_ok(r, ref) else "**no**")
        ok, compared = _per_seed_ok(r, ref)
        per_seed = "–" if is_ref else f"{ok}/{compared}"
        lines.append(
            f"| {r['label']} | {r['calls']} | {_fmt(r['mean_image_rmse'])} | {_fmt(r['histogram_w1'])} | "
            f"{_fmt(r['ms_ssim_fake'])} | {quality} | {diverse} | {per_seed} |"
        )
    best, met = best_fewstep(result)
    if best is not None:
        verdict = "meets both checks" if met else "the closest, but misses a check"
        lines += ["", f"Best with ≤{MAX_CALLS} calls: **{best['label']}** ({verdict})."]
    lines += ["", "Per seed (RMSE / W1 / MS-SSIM):", ""]
    lines += ["| option | " + " | ".join(f"seed {s}" for s in result["seeds"]) + " |"]
    lines += ["|---|" + "---|" * len(result["seeds"])]
    for r in rows:
        by_seed = {p["seed"]: p for p in r["per_seed"]}
        cells = [
            (
                f"{_fmt(by_seed[s]['mean_image_rmse'])} / {_fmt(by_seed[s]['histogram_w1'])} / "
                f"{_fmt(by_seed[s]['ms_ssim_fake'])}"
                if s in by_seed
                else "–"
            )
            for s in result["seeds"]
        ]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    lines.append("")
    if png_name:
        lines += [f"![few-step samplers]({png_name})", ""]
    return lines


def _family(row: dict) -> str:
    if row["sampler"] == "ddpm":
        return "DDPM" if row["steps"] is None else "DDPM (strided)"
    return f"DDIM {row['timestep_spacing']} η={row['ddim_eta']:g}"


def plot_fewstep(result: dict, path: Path) -> None:
    """RMSE, W1 and MS-SSIM against network calls (log x), one line per option family (sampler, spacing, eta),
    seed range as error bars; DDPM-1000's tolerance band shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wdm_bundle.utils import atomic_write

    rows, ref = result["rows"], _reference(result["rows"])
    families: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["calls"]):
        families.setdefault(_family(r), []).append(r)
    keys = (
        ("mean_image_rmse", "mean-image RMSE (lower is better)"),
        ("histogram_w1", "histogram W1 (lower is better)"),
    )
    keys += (("ms_ssim_fake", "MS-SSIM among samples (lower = more diverse)"),)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    markers = "o^sDvP*X<>"
    for ax, (key, title) in zip(axes, keys):
        for i, (family, members) in enumerate(families.items()):
            xs = [m["calls"] for m in members]
            ys = [m[key] for m in members]
            lo = [m[key] - min(p[key] for p in m["per_seed"]) for m in members]
            hi = [max(p[key] for p in m["per_seed"]) - m[key] for m in members]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker=markers[i % len(markers)], capsize=3, label=family)
        if key == "ms_ssim_fake":
            band = (ref[key] * (1 - QUALITY_TOLERANCE), ref[key] * (1 + QUALITY_TOLERANCE))
            ax.axhspan(ref[key] - DIVERSITY_TOLERANCE, ref[key] + DIVERSITY_TOLERANCE, color="g", alpha=0.12)
            if ref.get("ms_ssim_real") is not None:
                ax.axhline(ref["ms_ssim_real"], color="k", ls=":", lw=1, label="real set")
        else:
            band = (0, ref[key] * (1 + QUALITY_TOLERANCE))
        ax.axhline(ref[key], color="k", ls="--", lw=0.8, label="DDPM-1000")
        ax.axhspan(*band, color="0.5", alpha=0.1)
        ax.set_xscale("log")
        ax.set_xlabel("network calls per sample")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
