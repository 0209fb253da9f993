"""Inpainting from the command line's configs: the conditional model and zero-shot RePaint against the baselines."""

import json
import shutil

import pytest
from workflow_helpers import run_workflow

from wdm_bundle.data import make_inpainting_dataset
from wdm_bundle.engines import load_record, load_weights, recorded_network
from wdm_bundle.reports import evaluate_inpainting
from wdm_bundle.reports.steps import run_steps_study

#: Margins over a baseline's mean (SSIM, PSNR in dB, MSE as a fraction of the baseline's). docs/inpainting.md (same
#: recipe): the model 0.987 / 19.46 dB / 0.0044 against the harmonic fill's 0.963 / 15.23 dB / 0.0115 on healthy masks.
SSIM_MARGIN, PSNR_MARGIN, MSE_FRACTION = 0.01, 1.0, 0.75
METRICS = ("ssim", "psnr", "mse")
TRAIN_CASES, TEST_CASES, SIZE = 184, 16, 32
STEPS_CASES = 8  # DDPM-1000 costs ~10-40 s per case on 2 cores


def held_out(root, dest):
    """Copy the ``test`` split's case folders of ``root``'s datalist into ``dest`` (the runners take whole folders)."""
    for entry in json.loads((root / "datalist.json").read_text())["test"]:
        shutil.copytree(root / entry["case"], dest / entry["case"])
    return dest


@pytest.fixture(scope="module")
def inpainting_demo(tmp_path_factory):
    """Demo inpainting data at 32^3: ``train`` (184 training cases, healthy masks, half with a lesion), ``healthy``
    (16 held-out cases inpainting a healthy mask) and ``lesion`` (16 other held-out lesion cases inpainting the lesion
    region; their truth is the same subject rendered without the lesion)."""
    root = tmp_path_factory.mktemp("inpainting_demo")
    make_inpainting_dataset(
        root / "train", TRAIN_CASES + TEST_CASES, size=SIZE, num_test=TEST_CASES, seed=0, progress=False
    )
    make_inpainting_dataset(
        root / "lesions",
        TEST_CASES + 1,
        size=SIZE,
        num_test=TEST_CASES,
        seed=1,
        lesion_prob=1.0,
        test_mask="unhealthy",
        progress=False,
    )
    return {
        "train": root / "train",
        "healthy": held_out(root / "train", root / "healthy"),
        "lesion": held_out(root / "lesions", root / "lesion"),
    }


def _means(summary):
    return {m: {k: summary["methods"][m][k]["mean"] for k in METRICS} for m in summary["methods"]}


def _beats(means, method, baseline):
    """``method`` is better than ``baseline`` on every metric by the margins."""
    a, b = means[method], means[baseline]
    return (
        a["ssim"] > b["ssim"] + SSIM_MARGIN
        and a["psnr"] > b["psnr"] + PSNR_MARGIN
        and a["mse"] < MSE_FRACTION * b["mse"]
    )


def _inpaint_and_score(repo_root, bundle, data, out, ckpt, **sampling):
    """Run configs/inference_inpaint.json on ``data['healthy']`` and ``data['lesion']``; their challenge metrics."""
    means = {}
    for name, gt_suffix, mask_suffix in (("healthy", "t1n", "mask-healthy"), ("lesion", "t1n-healthy", "mask")):
        run_workflow(
            repo_root,
            ["inference_inpaint.json"],
            "infer",
            bundle_root=str(bundle),
            ckpt_path=str(ckpt),
            input_dir=str(data[name]),
            output_dir=str(out / name),
            progress=False,
            **sampling,
        )
        summary = evaluate_inpainting(
            data[name], out / name, out / name / "report", gt_suffix=gt_suffix, mask_suffix=mask_suffix
        )
        assert summary["num_cases"] == TEST_CASES and not summary["failures"]
        outside = [r["outside_max_abs_diff"] for r in summary["per_case"] if r["method"] == "prediction"]
        assert max(outside) == 0.0  # voxels outside the mask are the input's, bit for bit
        means[name] = _means(summary)
    print(json.dumps(means, indent=1))
    return means


@pytest.mark.quality
def test_conditional_model_beats_baselines_in_few_steps(repo_root, inpainting_demo, tmp_path):
    """train_inpaint.json (loss in the mask, a fresh random mask per item) on the demo data: with DDIM-2 (trailing)
    the conditional model beats the mean and the harmonic fill inside the mask on SSIM, PSNR and MSE, on healthy
    masks and against the rendered healthy truth of lesion regions; and 2 steps are within 10 % of DDPM-1000."""
    bundle = tmp_path / "bundle"
    run_workflow(
        repo_root,
        ["train.json", "train_inpaint.json", "demo.json"],
        "train",
        bundle_root=str(bundle),
        dataset_dir=str(inpainting_demo["train"]),
        num_iterations=3000,
        random_mask_prob=1.0,
        save_every=1500,
        preview_every=1500,
        log_every=500,
    )
    ckpt = bundle / "models" / "inpainting" / "model.pt"
    sampling = dict(sampler="ddim", num_inference_steps=2, timestep_spacing="trailing")
    means = _inpaint_and_score(repo_root, bundle, inpainting_demo, tmp_path / "out", ckpt, **sampling)
    for name in ("healthy", "lesion"):
        for baseline in ("mean_fill", "harmonic_fill"):
            assert _beats(means[name], "prediction", baseline), (name, baseline, means[name])

    record = load_record(ckpt, "inpainting")
    network = recorded_network(record)
    load_weights(network, ckpt, "ema")
    study = run_steps_study(
        network,
        record,
        inpainting_demo["healthy"],
        tmp_path / "steps",
        steps=(2, 5, 10, 50, 1000),
        spacings=("trailing",),
        num_cases=STEPS_CASES,
        progress=False,
    )
    print(json.dumps(study["fewest_steps"]))
    assert study["fewest_steps"]["trailing"] is not None and study["fewest_steps"]["trailing"] <= 5
    assert (tmp_path / "steps" / "steps.png").stat().st_size > 0


@pytest.mark.quality
def test_repaint_beats_mean_fill(repo_root, inpainting_demo, tmp_path):
    """A WDM generation model trained on the same images (train.json + demo.json), inpainting zero-shot with RePaint
    (DDIM, jumps): inside the mask it beats the mean fill on SSIM, PSNR and MSE."""
    bundle = tmp_path / "bundle"
    run_workflow(
        repo_root,
        ["train.json", "demo.json"],
        "train",
        bundle_root=str(bundle),
        dataset_dir=str(inpainting_demo["train"]),
        preview_every=0,
        log_every=500,
    )
    means = _inpaint_and_score(
        repo_root,
        bundle,
        inpainting_demo,
        tmp_path / "out",
        bundle / "models" / "model.pt",
        sampler="ddim",
        num_inference_steps=50,
        jump_length=5,
        jump_n_sample=5,
    )
    for name in ("healthy", "lesion"):
        assert _beats(means[name], "prediction", "mean_fill"), (name, means[name])
