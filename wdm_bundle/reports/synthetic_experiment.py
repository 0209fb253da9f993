"""Does synthetic data train a segmenter? Real only, synthetic only, real + synthetic, scored on held-out real cases.

The arms (each a SegResNet trained by ``configs/train_segmentation.json`` with the same settings and seed):

* ``real``: ``num_real`` real training cases;
* ``synthetic``: ``num_real`` synthetic pairs (images generated from the label maps of other training cases);
* ``real+synthetic``: the ``num_real`` real cases and ``num_synthetic`` synthetic pairs;
* ``real_all`` (optional, ``upper_bound``): ``num_real + num_synthetic`` real cases, what real data of the same
  size would give.

The synthetic pairs come from ``scripts/make_synthetic_dataset.py`` (a label-conditioned model, record task
``label_generation``), fed the label maps (and brains) of training cases that are not among the real ones.
Every arm is scored on the datalist's ``test`` cases: Dice and HD95 of ET/TC/WT
(`wdm_bundle.metrics.segmentation.brats_region_metrics`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wdm_bundle.data.datalists import read_split
from wdm_bundle.data.io import CONTRASTS, load_nifti
from wdm_bundle.engines.segmentation import load_segmenter
from wdm_bundle.metrics.segmentation import brats_region_metrics, resolve_backend
from wdm_bundle.reports.summary import mean_std, write_json

__all__ = ["ARMS", "plan_experiment", "run_synthetic_data_experiment"]

logger = logging.getLogger(__name__)

ARMS = ("real", "synthetic", "real+synthetic", "real_all")
REGIONS = ("ET", "TC", "WT")
REPO = Path(__file__).resolve().parents[2]
SEGMENTATION_CONFIGS = ("configs/train_segmentation.json", "configs/demo_segmentation.json")


def _absolute(entry: Mapping, base: Path, keys: Sequence[str]) -> dict:
    """A datalist entry with every file of ``keys`` made absolute (relative paths are relative to ``base``)."""
    out = {"case": str(entry["case"])}
    for key in keys:
        if key not in entry:
            raise ValueError(f"datalist entry of case '{entry.get('case')}' has no '{key}' file.")
        path = Path(str(entry[key]))
        out[key] = str(path if path.is_absolute() else (base / path).resolve())
    return out


def plan_experiment(
    datalist: str | os.PathLike, num_real: int, num_synthetic: int, seed: int = 0, contrasts: Sequence[str] = CONTRASTS
) -> dict[str, list[dict]]:
    """Split a datalist's training cases into ``real`` (num_real) and ``labels`` (label sources for the synthetic
    pairs: max(num_real, num_synthetic) other cases), drawn with ``seed``; ``test`` is its test split.

    Raises:
        ValueError: too few training cases, no test cases (`read_split`), or entries without the contrast or ``seg``
            files.
    """
    if int(num_real) < 1 or int(num_synthetic) < 1:
        raise ValueError(f"num_real and num_synthetic must be >= 1, got {num_real}, {num_synthetic}.")
    base = Path(datalist).resolve().parent
    keys = [*contrasts, "seg"]
    training = [_absolute(e, base, keys) for e in read_split(datalist, "training")]
    test = [_absolute(e, base, keys) for e in read_split(datalist, "test")]
    num_labels = max(int(num_real), int(num_synthetic))
    if len(training) < num_real + num_labels:
        raise ValueError(
            f"'{datalist}' has {len(training)} training cases; the experiment needs num_real ({num_real}) + "
            f"max(num_real, num_synthetic) ({num_labels}) = {num_real + num_labels}."
        )
    order = np.random.default_rng(int(seed)).permutation(len(training))
    chosen = [training[i] for i in order]
    return {"real": chosen[:num_real], "labels": chosen[num_real : num_real + num_labels], "test": test}


def _run(command: list[str], what: str) -> None:
    """Run a step as its own process (a fresh bundle each time); a failure raises with the step's last lines."""
    logger.info(f"{what}: {' '.join(command)}")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")


def _synthetic_cases(
    plan: Mapping[str, list[dict]], generator_bundle: Path, out: Path, steps: int, seed: int, overwrite: bool
) -> list[dict]:
    """Generate the synthetic pairs from the label sources; their datalist entries, in the plan's order."""
    label_dir = {str(Path(e["seg"]).parent.parent) for e in plan["labels"]}
    if len(label_dir) != 1:
        raise ValueError(f"the label sources must lie in one folder of case folders, got {sorted(label_dir)}.")
    cases = [e["case"] for e in plan["labels"]]
    command = [
        sys.executable,
        "scripts/make_synthetic_dataset.py",
        "--label_dir",
        label_dir.pop(),
        "--output_dir",
        str(out),
        "--bundle_root",
        str(generator_bundle),
        "--num_inference_steps",
        str(int(steps)),
        "--seed",
        str(int(seed)),
        "--cases",
        json.dumps(cases),
        "--overwrite",
        str(bool(overwrite)).lower(),
        "--allow_empty_labels",  # healthy label sources give healthy synthetic cases, as among the real ones
        "true",
    ]
    _run(command, "synthetic pairs")
    made = {e["case"]: e for e in read_split(out / "datalist.json", "training")}
    absent = [c for c in cases if c not in made]
    if absent:
        raise RuntimeError(f"the synthetic data set '{out}' lacks cases {absent}.")
    return [_absolute(made[c], out, [*CONTRASTS, "seg"]) for c in cases]


def _train(entries: list[dict], root: Path, configs: Sequence[str], overrides: Mapping[str, object]) -> Path:
    """Train one segmenter on ``entries`` in bundle ``root``; its ``model.pt``."""
    root.mkdir(parents=True, exist_ok=True)
    datalist = root / "datalist.json"
    write_json(datalist, {"training": entries})
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        json.dumps([str(REPO / c) for c in configs]),
        "--meta_file",
        str(REPO / "configs" / "metadata.json"),
        "--bundle_root",
        str(root),
        "--datalist",
        str(datalist),
        "--overwrite",
        "true",
    ]
    for key, value in overrides.items():
        command += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    _run(command, f"segmenter '{root.name}' on {len(entries)} cases")
    model = root / "models" / "segmentation" / "model.pt"
    if not model.is_file():
        raise RuntimeError(f"training '{root.name}' wrote no '{model}'.")
    return model


def _score(model: Path, test: list[dict], arm: str) -> list[dict]:
    """Per test case and region: Dice and HD95 of the segmenter against the case's labels."""
    segmenter = load_segmenter(model)
    rows = []
    for entry in test:
        labels, reference = segmenter.segment_files({c: entry[c] for c in segmenter.contrasts})
        _, truth = load_nifti(entry["seg"])
        spacing = [float(z) for z in reference.header.get_zooms()[:3]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # panoptica's HD95 is in voxels: the table says so
            metrics = brats_region_metrics(labels, np.asarray(truth).round().astype(np.uint8), spacing)
        tumour = bool(np.any(np.asarray(truth) > 0))
        for region in REGIONS:
            rows.append({"arm": arm, "case": entry["case"], "tumour": tumour, "region": region, **metrics[region]})
    return rows


def _summary(rows: list[dict], arms: Sequence[str], sizes: Mapping[str, str]) -> dict:
    """Mean ± std Dice and HD95 per arm and region, over the test cases with a tumour and over all."""
    out: dict = {"arms": {}}
    for arm in arms:
        out["arms"][arm] = {"training": sizes[arm], "tumour_cases": {}, "all_cases": {}}
        for region in REGIONS:
            mine = [r for r in rows if r["arm"] == arm and r["region"] == region]
            for scope, chosen in (("tumour_cases", [r for r in mine if r["tumour"]]), ("all_cases", mine)):
                out["arms"][arm][scope][region] = {
                    m: mean_std([float(r[m]) for r in chosen]) for m in ("dice", "hd95") if chosen
                }
    return out


def _markdown(summary: dict) -> str:
    lines = [
        "| arm | training cases | Dice ET | Dice TC | Dice WT | mean Dice | HD95 WT |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, s in summary["arms"].items():
        t = s["tumour_cases"]
        dice = [t[r]["dice"]["mean"] for r in REGIONS if "dice" in t.get(r, {})]
        cells = [
            f"{t[r]['dice']['mean']:.3f} ± {t[r]['dice']['std']:.3f}" if "dice" in t.get(r, {}) else "-"
            for r in REGIONS
        ]
        mean = f"{np.mean(dice):.3f}" if dice else "-"
        hd = f"{t['WT']['hd95']['mean']:.2f}" if "hd95" in t.get("WT", {}) else "-"
        lines.append(f"| {arm} | {s['training']} | {' | '.join(cells)} | {mean} | {hd} |")
    unit = "voxels" if summary.get("backend") == "panoptica" else "mm"
    return "\n".join(lines) + (
        f"\n\nDice and HD95 ({unit}) on the held-out real test cases with a tumour, mean ± std; metrics: "
        f"{summary.get('backend')} backend of `brats_region_metrics`.\n"
    )


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary["arms"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        t = summary["arms"][arm]["tumour_cases"]
        means = [t[r]["dice"]["mean"] if "dice" in t.get(r, {}) else 0.0 for r in REGIONS]
        stds = [t[r]["dice"]["std"] if "dice" in t.get(r, {}) else 0.0 for r in REGIONS]
        ax.bar(np.arange(3) + i * width, means, width, yerr=stds, label=f"{arm} ({summary['arms'][arm]['training']})")
    ax.set_xticks(np.arange(3) + width * (len(arms) - 1) / 2, REGIONS)
    ax.set_ylabel("Dice (held-out real cases)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_synthetic_data_experiment(
    datalist: str | os.PathLike,
    generator_bundle: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_real: int = 8,
    num_synthetic: int = 24,
    seed: int = 0,
    num_inference_steps: int = 20,
    upper_bound: bool = True,
    segmentation_configs: Sequence[str] = SEGMENTATION_CONFIGS,
    segmentation_overrides: Mapping[str, object] | None = None,
    overwrite: bool = False,
) -> dict:
    """Run the experiment (see the module docstring); write ``experiment.md``/``.json``, ``per_case.csv`` and
    ``experiment.png`` into ``output_dir``; return the summary.

    Raises:
        FileExistsError: ``output_dir`` holds an earlier experiment and ``overwrite`` is False.
        ValueError: too few cases (`plan_experiment`). RuntimeError: a step failed (its last output lines).
    """
    # absolute paths: the steps pass them to monai.bundle's config parser, which evaluates a leading '$' or '@'
    out = Path(output_dir).resolve()
    if (out / "experiment.json").exists() and not overwrite:
        raise FileExistsError(f"'{out}' holds an earlier experiment; pass --overwrite true to replace it.")
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_experiment(datalist, num_real, num_synthetic, seed)
    synthetic = _synthetic_cases(
        plan, Path(generator_bundle).resolve(), out / "synthetic_data", num_inference_steps, seed, True
    )
    arms = {
        "real": plan["real"],
        "synthetic": synthetic[:num_real],
        "real+synthetic": plan["real"] + synthetic[:num_synthetic],
    }
    if upper_bound:
        arms["real_all"] = plan["real"] + plan["labels"][:num_synthetic]
    sizes = {
        "real": f"{num_real} real",
        "synthetic": f"{num_real} synthetic",
        "real+synthetic": f"{num_real} real + {num_synthetic} synthetic",
        "real_all": f"{num_real + num_synthetic} real",
    }
    overrides = {"seed": int(seed), **dict(segmentation_overrides or {})}
    rows = []
    for arm, entries in arms.items():
        model = _train(entries, out / "segmenters" / arm.replace("+", "_plus_"), segmentation_configs, overrides)
        rows += _score(model, plan["test"], arm)
    summary = _summary(rows, list(arms), sizes)
    summary.update(
        backend=resolve_backend("auto"),
        num_real=int(num_real),
        num_synthetic=int(num_synthetic),
        seed=int(seed),
        test_cases=[e["case"] for e in plan["test"]],
        real_cases=[e["case"] for e in plan["real"]],
        label_sources=[e["case"] for e in plan["labels"]],
    )
    with open(out / "per_case.csv", "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["arm", "case", "tumour", "region", "dice", "hd95"], extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)
    (out / "experiment.md").write_text(_markdown(summary))
    _plot(summary, out / "experiment.png")
    write_json(out / "experiment.json", summary)
    logger.info(f"synthetic-data experiment written to '{out}':\n{_markdown(summary)}")
    return summary
