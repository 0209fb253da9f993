"""Report sections of the scaling and training studies: 512³ at wavelet level 2 and 256³ training memory, the
training-objective study and the wavelet-level quality study (Markdown lines and a plot)."""

from __future__ import annotations

from pathlib import Path

from wdm_bundle.utils import atomic_write

from .units import gb as _gb

__all__ = ["scaling_lines", "objectives_section", "levels_section", "plot_objectives"]


def _metrics(r: dict) -> str:
    ms = "–" if r.get("ms_ssim_fake") is None else f"{r['ms_ssim_fake']:.3f}"
    return f"{r['mean_image_rmse']:.3f} | {r['histogram_w1']:.3f} | {ms}"


def scaling_lines(mem: dict) -> list[str]:
    """Level-2 denoising steps against the level-1 256³ step, and training steps measured with checkpointing only."""
    lines = []
    rows = mem.get("inference") or []
    base = next((r for r in rows if r["size"] == 256 and r.get("levels", 1) == 1), None)
    deeper = [r for r in rows if r.get("levels", 1) > 1]
    if deeper:
        lines += [
            "### Wavelet level 2 (`wavelet_levels: 2`)",
            "",
            "Two DWT levels turn a volume into 64 sub-bands at 1/4 of its size, so a 512³ volume reaches the "
            "U-Net as 64 × 128³ coefficients: the spatial size a 256³ volume has at level 1. Same U-Net channels "
            "as the 256³ row; only its first and last convolutions see 64 instead of 8 channels. One fp32 denoising "
            "step as above (network forward, image-space x0 clamp through two IDWT and DWT levels, DDIM update), "
            "its input x_t included:",
            "",
            "| size | wavelet levels | U-Net | coefficients | fp32 peak | vs level-1 256³ |",
            "|---|---|---|---|---|---|",
        ]
        for r in ([base] if base else []) + deeper:
            levels = r.get("levels", 1)
            coeffs = f"{8 ** levels} × {r['size'] // 2 ** levels}³"
            ratio = f"{r['fp32'] / base['fp32']:.3f}×" if base else "–"
            lines.append(f"| {r['size']}³ | {levels} | {r['net']} | {coeffs} | {_gb(r['fp32'])} | {ratio} |")
        lines += [
            "",
            "In bf16 the activations halve; the paper's own numbers for a level-1 256³ sample (7.27 GB on an A100) "
            "put a level-2 512³ sample within a 16 GB GPU, where MAISI's 512³ latent diffusion needs ≥ 45 GB "
            "(`python scripts/benchmark.py --suite gpu` measures it on a GPU).",
            "",
        ]
    for t in mem.get("checkpointed_training") or []:
        lines += [
            f"One training step at {t['size']}³ (U-Net {t['net']}, batch 1, Adam, fp32) with activation "
            f"checkpointing: **{_gb(t['total'])}** peak, of which weights, gradients and Adam state "
            f"{_gb(t['static'])} ({t['seconds']:.0f} s under the memory profiler). Without checkpointing the "
            "step needs about twice the activations of this row and does not fit this machine's RAM, so it is not "
            "run here.",
            "",
        ]
    return lines


def objectives_section(study: dict, png_name: str | None) -> list[str]:
    ref_row = study["rows"][0]
    ref = ref_row["curve"][-1]
    lines = [
        "## Training objectives: iterations to the paper's quality (demo data)",
        "",
        f"Each option trains the demo model (`configs/demo.json`, 32³, same seed) and is sampled with "
        f"{study['sampler']} ({study['num_samples']} samples, seed 1) after every stage of "
        f"{', '.join(str(s) for s in study['stages'])} iterations. The target quality is the paper's objective "
        f"(x0 target, plain MSE, t uniform) after {study['reference_iterations']} iterations: mean-image RMSE "
        f"{ref['mean_image_rmse']:.3f}, histogram W1 {ref['histogram_w1']:.3f}. An option has reached it when both "
        "are no higher; the other options stop there or at "
        f"{study['cap']} iterations. The weightings keep the network's x0 output (every sampler works unchanged) and "
        "weigh the x0 error per timestep as the ε or v objective would (SNR, SNR + 1, capped) or as Min-SNR-5 does; "
        "the weights average 1 over t. Choose one with `--loss_weighting` / `--ddpm_timestep_draw` "
        "(docs/acceleration.md).",
        "",
        "| option | config | reached at | × the paper's 1,500 | training time | RMSE / W1 / MS-SSIM at each stage |",
        "|---|---|---|---|---|---|",
    ]
    for r in study["rows"]:
        config = " ".join(f"`--{k} {v}`" for k, v in r["overrides"].items()) or "defaults"
        at = r["reached_at"]
        reached = f"{at}" if at is not None else f"not by {r['curve'][-1]['iterations']}"
        ratio = f"{at / study['reference_iterations']:.2f}×" if at is not None else "–"
        curve = "; ".join(
            f"{p['iterations']}: {p['mean_image_rmse']:.3f} / {p['histogram_w1']:.3f} / "
            + ("–" if p.get("ms_ssim_fake") is None else f"{p['ms_ssim_fake']:.3f}")
            for p in r["curve"]
        )
        lines.append(f"| {r['name']} | {config} | {reached} | {ratio} | {r['train_seconds']:.0f} s | {curve} |")
    lines += [
        "",
        f"The paper's objective itself first reaches its {study['reference_iterations']}-iteration quality at "
        f"{ref_row['reached_at']} iterations: with {study['num_samples']} samples, stages whose numbers differ by "
        "less than the sample-to-sample spread cannot be told apart, so a ratio near the paper's own is no gain.",
        "",
    ]
    if png_name:
        lines += [f"![objectives]({png_name})", ""]
    return lines


def levels_section(study: dict) -> list[str]:
    rows = {r["levels"]: r for r in study["rows"]}
    one, two = rows.get(1), rows.get(2)
    lines = [
        f"## Wavelet level 2 vs level 1: sample quality ({study['size']}³ demo data)",
        "",
        f"The same demo U-Net, seed and budget ({study['iterations']} iterations, batch {study['batch_size']}) on {study['size']}³ "
        f"demo volumes, with one DWT level (the paper: 8 × {study['size'] // 2}³ coefficients) or two "
        f"(64 × {study['size'] // 4}³); {study['num_samples']} samples each (DDIM-50, seed 1) against the held-out "
        "volumes.",
        "",
        "| wavelet levels | training time | mean-image RMSE | histogram W1 | MS-SSIM (real: "
        + (f"{one['ms_ssim_real']:.3f}" if one and one.get("ms_ssim_real") is not None else "–")
        + ") |",
        "|---|---|---|---|---|",
    ]
    for r in study["rows"]:
        lines.append(f"| {r['levels']} | {r['train_seconds']:.0f} s | {_metrics(r)} |")
    if one and two:
        change = {k: two[k] / one[k] - 1 for k in ("mean_image_rmse", "histogram_w1") if one.get(k) and two.get(k)}
        worse = [
            f"{k.replace('_', ' ').replace('rmse', 'RMSE').replace('w1', 'W1')} {100 * v:+.0f}%"
            for k, v in change.items()
        ]
        lines += [
            "",
            f"Level 2 against level 1: {', '.join(worse)} (positive = worse); its training took "
            f"{two['train_seconds'] / one['train_seconds']:.2f}× the time.",
        ]
        real = one.get("ms_ssim_real")
        if real is not None and one.get("ms_ssim_fake") is not None and two.get("ms_ssim_fake") is not None:
            gaps = [abs(r["ms_ssim_fake"] - real) for r in (one, two)]
            lines += [
                f"Diversity: MS-SSIM among the samples {one['ms_ssim_fake']:.3f} (level 1) and "
                f"{two['ms_ssim_fake']:.3f} (level 2) against the real set's {real:.3f}: {gaps[0]:.3f} and "
                f"{gaps[1]:.3f} away" + (", level 2 samples are more alike." if gaps[1] > gaps[0] else ".")
            ]
        lines += [
            "At level 2 the same U-Net sees 1/8 of the spatial positions and its first convolution squeezes 64 "
            "sub-bands into the channels that get 8 at level 1. Both models are far from converged at this budget; "
            "level 2 is for sizes level 1 cannot fit (512³ on one GPU), not a way to train faster at sizes it can."
        ]
    return lines + [""]


def plot_objectives(study: dict, path: Path) -> None:
    """Mean-image RMSE and histogram W1 against training iterations, one line per option; the target dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ref = study["rows"][0]["curve"][-1]
    for ax, key, title in zip(axes, ("mean_image_rmse", "histogram_w1"), ("mean-image RMSE", "histogram W1")):
        for r in study["rows"]:
            ax.plot([p["iterations"] for p in r["curve"]], [p[key] for p in r["curve"]], ".-", label=r["name"])
        ax.axhline(ref[key], color="k", ls="--", lw=0.8, label=f"paper objective at {study['reference_iterations']}")
        ax.set_xlabel("training iterations")
        ax.set_title(f"{title} of {study['sampler']} samples (lower is better)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
