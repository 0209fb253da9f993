"""Segmentation in the loop, on demo data: label-conditioned samples carry their tumour, and the synthetic-data
experiment (real only, synthetic only, real + synthetic) runs end to end. Numbers: docs/segmentation.md."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from workflow_helpers import run_workflow

from wdm_bundle.data.datalists import read_split
from wdm_bundle.engines.segmentation import load_segmenter
from wdm_bundle.metrics.segmentation import brats_region_metrics
from wdm_bundle.reports.synthetic_experiment import run_synthetic_data_experiment

pytestmark = [pytest.mark.slow, pytest.mark.quality]

#: The demo set of these runs: 64 cases at 32^3, three in four with a tumour; the last 16 held out.
NUM_CASES, NUM_TEST, LESION_PROB = 64, 16, 0.75
GENERATOR_ITERATIONS = 3000
#: Label-conditioned samples: Dice vs the conditioning labels over noise images'. The run of docs/segmentation.md:
#: WT 0.820 / TC 0.745 / ET 0.484 against 0.016 / 0 / 0.
WT_MARGIN_OVER_NOISE, TC_MARGIN_OVER_NOISE = 0.5, 0.4


@pytest.fixture(scope="module")
def demo64(tmp_path_factory):
    from wdm_bundle.data.demo import make_demo_dataset

    out = tmp_path_factory.mktemp("demo64")
    make_demo_dataset(str(out), NUM_CASES, size=32, num_test=NUM_TEST, seed=0, lesion_prob=LESION_PROB, progress=False)
    return out


@pytest.fixture(scope="module")
def real_segmenter(repo_root, demo64, tmp_path_factory):
    """The demo segmenter trained on all 48 real training cases (configs/demo_segmentation.json's budget)."""
    root = tmp_path_factory.mktemp("segmenter")
    run_workflow(
        repo_root,
        ["train_segmentation.json", "demo_segmentation.json"],
        "train",
        bundle_root=str(root),
        dataset_dir=str(demo64),
    )
    return root / "models" / "segmentation" / "model.pt"


@pytest.fixture(scope="module")
def generator(repo_root, demo64, tmp_path_factory):
    """The label-conditioned model (all four contrasts) trained on the 48 real training pairs."""
    root = tmp_path_factory.mktemp("label2image")
    run_workflow(
        repo_root,
        ["train.json", "train_label2image.json", "demo.json"],
        "train",
        bundle_root=str(root),
        dataset_dir=str(demo64),
        num_iterations=GENERATOR_ITERATIONS,
        preview_every=0,
        log_every=500,
    )
    return root


def _mean_dice(rows, region):
    return float(np.mean([r[region]["dice"] for r in rows]))


def test_label_conditioned_samples_carry_their_tumour(repo_root, demo64, real_segmenter, generator, tmp_path):
    """Images generated from the held-out cases' label maps: a segmenter trained on real data finds the conditioned
    tumour (Dice vs the conditioning labels), far better than in noise images of the same brains."""
    test = read_split(demo64 / "datalist.json", "test")
    tumour_cases = [e["case"] for e in test if nib.load(demo64 / e["seg"]).get_fdata().max() > 0]
    assert len(tumour_cases) >= 8
    out = tmp_path / "synthetic"
    command = [
        sys.executable,
        "scripts/make_synthetic_dataset.py",
        "--label_dir",
        str(demo64),
        "--output_dir",
        str(out),
        "--bundle_root",
        str(generator),
        "--num_inference_steps",
        "20",
        "--cases",
        json.dumps(tumour_cases),
    ]
    done = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    segmenter = load_segmenter(real_segmenter)
    rng = np.random.default_rng(0)
    synthetic, noise = [], []
    for case in tumour_cases:
        labels_img = nib.load(out / case / f"{case}-seg.nii.gz")
        labels = np.asarray(labels_img.dataobj).astype(np.uint8)
        source = nib.load(demo64 / case / f"{case}-seg.nii.gz")
        assert np.array_equal(labels, np.asarray(source.dataobj).astype(np.uint8))
        assert np.allclose(labels_img.affine, source.affine)
        spacing = labels_img.header.get_zooms()[:3]
        images = {c: str(out / case / f"{case}-{c}.nii.gz") for c in segmenter.contrasts}
        for c, path in images.items():
            img = nib.load(path)
            assert img.shape == labels.shape and np.allclose(img.affine, source.affine), (case, c)
        pred, _ = segmenter.segment_files(images)
        synthetic.append(brats_region_metrics(pred, labels, spacing))
        brain = nib.load(demo64 / case / f"{case}-t1n.nii.gz").get_fdata() > 0
        volumes = {c: rng.random(labels.shape) * brain for c in segmenter.contrasts}
        noise.append(brats_region_metrics(segmenter.segment(volumes, labels_img.affine), labels, spacing))
    scores = {
        name: {r: _mean_dice(rows, r) for r in ("ET", "TC", "WT")}
        for name, rows in (("synthetic", synthetic), ("noise", noise))
    }
    print(json.dumps(scores, indent=1))
    assert scores["synthetic"]["WT"] > scores["noise"]["WT"] + WT_MARGIN_OVER_NOISE, scores
    assert scores["synthetic"]["TC"] > scores["noise"]["TC"] + TC_MARGIN_OVER_NOISE, scores


def test_synthetic_data_experiment(repo_root, demo64, generator, tmp_path):
    """8 real cases, 8 synthetic pairs, 8 real + 24 synthetic: every arm trained and scored on the 16 held-out real
    cases; the table, CSV and plot are written."""
    summary = run_synthetic_data_experiment(
        demo64 / "datalist.json",
        generator,
        tmp_path / "experiment",
        num_real=8,
        num_synthetic=24,
        seed=0,
        upper_bound=False,  # the 32-real arm of docs/segmentation.md: 1.7 min more, kept out of CI's hour
    )
    dice = {
        arm: float(np.mean([s["tumour_cases"][r]["dice"]["mean"] for r in ("ET", "TC", "WT")]))
        for arm, s in summary["arms"].items()
    }
    print(json.dumps(dice, indent=1), (tmp_path / "experiment" / "experiment.md").read_text())
    assert set(dice) == {"real", "synthetic", "real+synthetic"}
    for name in ("experiment.md", "experiment.json", "per_case.csv", "experiment.png"):
        assert (tmp_path / "experiment" / name).stat().st_size > 100
    # a segmenter trained on synthetic pairs alone finds tumours in real images. Measured (docs/segmentation.md),
    # mean Dice of ET/TC/WT: real 0.829, synthetic 0.697, real + synthetic 0.779 (not better than real only: the
    # docs say so), 32 real 0.869.
    assert dice["synthetic"] > 0.55, dice
