"""What a benchmark run means: its targets (met or not), and the key numbers compared with a previous run."""

from __future__ import annotations

from .efficiency import efficiency_targets
from .fewstep import fewstep_targets
from .measure import quality_name
from .units import gb as _gb

__all__ = ["QUALITY_NAMES", "quality_deviations", "targets", "key_numbers", "rerun_rows"]

#: lower is better for these quality metrics; MS-SSIM (diversity) should match the reference instead
_LOWER_IS_BETTER = ("mean_image_rmse", "histogram_w1", "fid")
QUALITY_NAMES = {
    "mean_image_rmse": "mean-image RMSE",
    "histogram_w1": "histogram W1",
    "fid": "FID",
    "ms_ssim_fake": "MS-SSIM",
}


def quality_deviations(row: dict, ref: dict) -> dict:
    """How much worse than ``ref`` each quality metric of ``row`` is, as a fraction of ``ref``'s value.

    RMSE, W1 and FID: lower is better, so only an increase counts (``max(0, row/ref - 1)``); a
    sampler that beats DDPM-1000 is within any tolerance of it. MS-SSIM measures diversity, where
    neither direction is better, so any change counts (``|row/ref - 1|``).
    """
    devs = {}
    for k in (*_LOWER_IS_BETTER, "ms_ssim_fake"):
        if row.get(k) is None or not ref.get(k):
            continue
        change = row[k] / ref[k] - 1
        devs[k] = max(0.0, change) if k in _LOWER_IS_BETTER else abs(change)
    return devs


def _wavelet_targets(rows: list[dict]) -> list[tuple[str, str, bool | None]]:
    big = max(rows, key=lambda r: r["size"])
    ratio = big["dwt_idwt"] / big["copy"]
    measured, best = f"{ratio:.1f}× the copy (`clone`)", ratio
    if big.get("copy_alloc") is not None:  # the copy given the same fresh memory as the transforms' outputs
        alloc = big["dwt_idwt"] / big["copy_alloc"]
        measured = f"{measured}; {alloc:.1f}× a copy into memory allocated like the outputs"
        best = min(best, alloc)
    if "dwt_into" in big:  # like for like without fresh memory: both write into existing tensors
        into = (big["dwt_into"] + big["idwt_into"]) / big["copy_into"]
        measured, best = f"{measured}; into existing memory {into:.1f}× a `copy_`", min(best, into)
    out = [(f"DWT+IDWT at {big['size']}³ within 2× of a tensor copy", measured, best <= 2)]
    if "pywt_dwt" in big:
        speed = (big["pywt_dwt"] + big["pywt_idwt"]) / (big["dwt"] + big["idwt"])
        out.append((f"DWT+IDWT ≥5× faster than PyWavelets at {big['size']}³", f"{speed:.1f}×", speed >= 5))
    return out


def _training_targets(rows: list[dict]) -> list[tuple[str, str, bool | None]]:
    big = max(rows, key=lambda r: r["size"])
    speed = big["image_time"] / big["wavelet_time"]
    mem = big["wavelet_memory"] / big["image_memory"]
    return [
        (f"WDM training step ≥4× faster than image-space DDPM ({big['size']}³)", f"{speed:.1f}×", speed >= 4),
        (f"WDM training peak memory ≤0.4× image-space DDPM ({big['size']}³)", f"{mem:.2f}×", mem <= 0.4),
    ]


def _quality_target(row: dict, ref_row: dict) -> tuple[str, str, bool | None]:
    devs = quality_deviations(row, ref_row)
    worst = max(devs, key=devs.get) if devs else None
    if worst is None:
        return f"{quality_name(row)} quality within 10% of {ref_row['sampler']} on every metric", "–", None
    measured = f"worst: {QUALITY_NAMES[worst]} {100 * devs[worst]:.0f}% "
    measured += "worse" if worst in _LOWER_IS_BETTER else "apart"
    return (
        f"{quality_name(row)} quality within 10% of {ref_row['sampler']} on every metric",
        measured,
        devs[worst] <= 0.10,
    )


def _fast_sampler_targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """The issue's target: DDIM-50 or RFlow-30, one sampler both >=20x faster and within 10% in quality."""
    out, fast_names = [], ("DDIM-50", "RFlow-30")
    s = {r["sampler"]: r["time"] for r in results.get("sampling") or []}
    ref_label = next((k for k in s if k.startswith("DDPM")), None)
    speed_ok: dict[str, bool] = {}
    for name in fast_names:
        if ref_label and name in s:
            speed = s[ref_label] / s[name]
            speed_ok[name] = speed >= 20
            out.append((f"{name} sampling ≥20× faster than {ref_label}", f"{speed:.1f}×", speed_ok[name]))
    q = (results.get("quality") or {}).get("rows") or []
    quality_ok: dict[str, bool] = {}  # per sampler: does any model sampled with it pass?
    for r in q[1:]:
        if r["sampler"] in fast_names:
            out.append(_quality_target(r, q[0]))
            if out[-1][2] is not None:
                quality_ok[r["sampler"]] = quality_ok.get(r["sampler"], False) or out[-1][2]
    both = [n for n in fast_names if n in speed_ok and n in quality_ok]
    if both:
        good = [n for n in both if speed_ok[n] and quality_ok[n]]
        misses = {n: [w for w, ok in (("speed", speed_ok[n]), ("quality", quality_ok[n])) if not ok] for n in both}
        missed = "; ".join(f"{n} misses {' and '.join(misses[n])}" for n in both if n not in good)
        measured = ", ".join(good) + (f" (the other: {missed})" if good and missed else "") if good else missed
        out.append(("DDIM-50 or RFlow-30: one sampler ≥20× faster and within 10% in quality", measured, bool(good)))
    return out


def _scaling_targets(mem: dict) -> list[tuple[str, str, bool | None]]:
    """512^3 at wavelet level 2 against 256^3 at level 1; a 256^3 training step with activation checkpointing."""
    out = []
    rows = mem.get("inference") or []
    base = next((r for r in rows if r["size"] == 256 and r.get("levels", 1) == 1), None)
    for r in rows:
        if r.get("levels", 1) > 1 and base is not None:
            ratio = r["fp32"] / base["fp32"]
            out.append(
                (
                    f"fp32 denoising step at {r['size']}³, wavelet level {r['levels']} ({r['net']} U-Net), ≤1.05× "
                    "the level-1 256³ step",
                    f"{_gb(r['fp32'])} vs {_gb(base['fp32'])}: {ratio:.3f}×",
                    ratio <= 1.05,
                )
            )
    for t in mem.get("checkpointed_training") or []:
        out.append(
            (
                f"Training step at {t['size']}³ ({t['net']}, batch 1, fp32, activation checkpointing) ≤16 GB",
                _gb(t["total"]),
                t["total"] <= 16e9,
            )
        )
    return out


def _objective_target(study: dict) -> tuple[str, str, bool | None]:
    ref = study["reference_iterations"]
    ratios = {r["name"]: r["reached_at"] / ref for r in study["rows"][1:] if r["reached_at"] is not None}
    target = f"Half the training iterations to the paper objective's quality at {ref} iterations"
    if not ratios:
        return target, f"no option reached it within {study['cap']} iterations", False
    best = min(ratios, key=ratios.get)
    return (
        target,
        f"best: {best}, {ratios[best]:.2f}× ({study['rows'][0]['name']}: itself "
        + (f"{study['rows'][0]['reached_at'] / ref:.2f}×)"),
        ratios[best] <= 0.5,
    )


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) rows; met is None when the run had no data for it."""
    out = []
    if results.get("wavelet"):
        out += _wavelet_targets(results["wavelet"])
    if results.get("training"):
        out += _training_targets(results["training"])
    out += _fast_sampler_targets(results)
    m = (results.get("memory") or {}).get("training")
    if m and m["checkpointing"]:
        target = "Activation checkpointing cuts training peak memory ≥2×"
        if m["plain"] is None:
            out.append((target, "without it the step ran out of memory", True))
        else:
            ratio = m["plain"] / m["checkpointing"]
            out.append((target, f"{ratio:.1f}×", ratio >= 2))
    if results.get("memory"):
        out += _scaling_targets(results["memory"])
    if results.get("efficiency"):
        out += efficiency_targets(results["efficiency"])
    if results.get("fewstep"):
        out += fewstep_targets(results["fewstep"])
    if results.get("objectives"):
        out.append(_objective_target(results["objectives"]))
    return out


def key_numbers(results: dict) -> dict[str, tuple[float, str]]:
    """{quantity: (value, kind)} of a run for rerun comparisons; kind "time" (s), "ratio" (of two times of
    the same run, as the targets use them), "memory" (bytes) or "quality"."""
    out: dict[str, tuple[float, str]] = {}
    for r in results.get("wavelet") or []:
        for k in (
            "copy",
            "dwt",
            "idwt",
            "dwt_idwt",
            "torch_dwt",
            "torch_idwt",
            "pywt_dwt",
            "pywt_idwt",
            "fill",
            "copy_into",
            "dwt_into",
            "idwt_into",
            "copy_alloc",
        ):
            if r.get(k) is not None:
                out[f"{k} {r['size']}³"] = (r[k], "time")
        out[f"(DWT+IDWT) / copy {r['size']}³"] = (r["dwt_idwt"] / r["copy"], "ratio")
        if r.get("copy_alloc") is not None:
            out[f"(DWT+IDWT) / copy into like memory {r['size']}³"] = (r["dwt_idwt"] / r["copy_alloc"], "ratio")
        if r.get("dwt_into") is not None:
            out[f"(DWT+IDWT into) / copy_ into {r['size']}³"] = (
                (r["dwt_into"] + r["idwt_into"]) / r["copy_into"],
                "ratio",
            )
        if r.get("pywt_dwt") is not None:
            out[f"PyWavelets / ours {r['size']}³"] = (
                (r["pywt_dwt"] + r["pywt_idwt"]) / (r["dwt"] + r["idwt"]),
                "ratio",
            )
    for r in results.get("training") or []:
        for space, name in (("wavelet", "WDM"), ("image", "DDPM")):
            out[f"{name} training step {r['size']}³"] = (r[f"{space}_time"], "time")
            out[f"{name} training memory {r['size']}³"] = (r[f"{space}_memory"], "memory")
        out[f"DDPM / WDM training step {r['size']}³"] = (r["image_time"] / r["wavelet_time"], "ratio")
    sampling = results.get("sampling") or []
    for r in sampling:
        out[f"{r['sampler']} sampling"] = (r["time"], "time")
    for r in sampling[1:]:
        out[f"{r['sampler']} speed-up vs {sampling[0]['sampler']}"] = (sampling[0]["time"] / r["time"], "ratio")
    m = results.get("memory") or {}
    for r in [r for r in m.get("inference") or [] if r.get("levels", 1) == 1]:
        out[f"{'WDM' if r['space'] == 'wavelet' else 'DDPM'} denoising step memory {r['size']}³"] = (
            r["fp32"],
            "memory",
        )
    t = m.get("training") or {}
    for k, name in (("plain", "without"), ("checkpointing", "with")):
        if t.get(k):
            out[f"training memory {t['size']}³ {name} checkpointing"] = (t[k], "memory")
    for r in (results.get("quality") or {}).get("rows") or []:
        for k in ("mean_image_rmse", "histogram_w1", "ms_ssim_fake", "fid"):
            if r.get(k) is not None:
                out[f"{quality_name(r)} {QUALITY_NAMES[k]}"] = (r[k], "quality")
    out.update(_study_numbers(results))
    return out


def _study_numbers(results: dict) -> dict[str, tuple[float, str]]:
    """The rerun quantities of the sections added with the scaling and training studies."""
    out: dict[str, tuple[float, str]] = {}
    for r in (results.get("memory") or {}).get("inference") or []:
        if r.get("levels", 1) > 1:  # its size alone would collide with a level-1 row of the same size
            out[f"WDM denoising step memory {r['size']}³ at wavelet level {r['levels']}"] = (r["fp32"], "memory")
    for t in (results.get("memory") or {}).get("checkpointed_training") or []:
        out[f"training memory {t['size']}³ with checkpointing"] = (t["total"], "memory")
    eff = results.get("efficiency") or {}
    if eff.get("conv"):
        out["denoiser FLOP/s / isolated conv3d FLOP/s"] = (eff["conv"]["fraction"], "ratio")
    if eff.get("wrapper"):
        out["wrapper share of a denoising step"] = (eff["wrapper"]["share"], "ratio")
    for r in (results.get("fewstep") or {}).get("rows") or []:
        for k in ("mean_image_rmse", "histogram_w1", "ms_ssim_fake"):
            if r.get(k) is not None:
                out[f"{r['label']} (seed mean) {QUALITY_NAMES[k]}"] = (r[k], "quality")
    for r in (results.get("levels") or {}).get("rows") or []:
        for k in ("mean_image_rmse", "histogram_w1", "ms_ssim_fake"):
            if r.get(k) is not None:
                out[f"wavelet level {r['levels']} {QUALITY_NAMES[k]}"] = (r[k], "quality")
    return out


def rerun_rows(results: dict, previous: dict) -> list[tuple[str, float, float, str]]:
    """(quantity, previous value, this run's value, kind) for every quantity both runs measured."""
    now, before = key_numbers(results), key_numbers(previous)
    return [(k, before[k][0], v, kind) for k, (v, kind) in now.items() if k in before]
