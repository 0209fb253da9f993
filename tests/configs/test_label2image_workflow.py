"""configs/train_label2image.json -> configs/inference_label2image.json and scripts/make_synthetic_dataset.py on a small
demo set: the record says label_generation, the synthetic data set is complete, models of other tasks are refused."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from workflow_helpers import error_messages, run_workflow

from wdm_bundle.data.demo import make_demo_dataset
from wdm_bundle.engines.record import load_record, read_record

CONTRASTS = ["t1n", "t1c", "t2w", "t2f"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, repo_root):
    root = tmp_path_factory.mktemp("label2image")
    make_demo_dataset(root / "data", num_cases=6, size=32, num_test=2, seed=0, lesion_prob=1.0, progress=False)
    overrides = dict(num_iterations=4, epoch_length=4, save_every=4, batch_size=2, preview_every=10**6, log_every=2)
    run_workflow(
        repo_root,
        ["train.json", "train_label2image.json", "demo.json"],
        "train",
        bundle_root=str(root),
        dataset_dir=str(root / "data"),
        **overrides,
    )
    return root


def _infer(repo_root, root, output, **overrides):
    options = dict(input_dir=str(root / "data"), output_dir=str(output), sampler="ddim", num_inference_steps=2)
    return run_workflow(
        repo_root,
        ["inference_label2image.json"],
        "infer",
        bundle_root=str(root),
        progress=False,
        **(options | overrides),
    )


@pytest.mark.slow
def test_train_then_generate_a_synthetic_dataset(trained, repo_root):
    model = trained / "models" / "label2image" / "model.pt"
    record = read_record(model)
    assert record["task"] == "label_generation" and record["contrasts"] == CONTRASTS and record["labels"] == [1, 2, 3]
    assert record["network"]["image_channels"] == 4 and record["network"]["condition_channels"] == 4

    cases = ["BraTS-DEMO-00004-000", "BraTS-DEMO-00005-000"]
    _infer(repo_root, trained, trained / "synthetic", cases=cases)
    datalist = json.loads((trained / "synthetic" / "datalist.json").read_text())
    assert [e["case"] for e in datalist["training"]] == cases
    for entry in datalist["training"]:
        assert sorted(entry) == sorted(["case", *CONTRASTS, "seg"])
        seg = nib.load(str(trained / "data" / entry["case"] / f"{entry['case']}-seg.nii.gz"))
        brain = nib.load(str(trained / "data" / entry["case"] / f"{entry['case']}-t1n.nii.gz")).get_fdata() != 0
        for c in CONTRASTS:
            img = nib.load(str(trained / "synthetic" / entry[c]))
            data = img.get_fdata()
            assert img.shape == seg.shape and np.array_equal(img.affine, seg.affine)
            assert 0.0 <= data.min() and data.max() <= 1.0 and not data[~brain].any()
        assert np.array_equal(nib.load(str(trained / "synthetic" / entry["seg"])).get_fdata(), seg.get_fdata())

    with pytest.raises(Exception) as e:  # existing files are kept
        _infer(repo_root, trained, trained / "synthetic", cases=cases[:1])
    assert "--overwrite true" in error_messages(e.value)

    out = trained / "by_script"
    cmd = [
        sys.executable,
        str(repo_root / "scripts" / "make_synthetic_dataset.py"),
        "--label_dir",
        str(trained / "data"),
        "--output_dir",
        str(out),
        "--bundle_root",
        str(trained),
        "--num_inference_steps",
        "1",
        "--cases",
        f"[{cases[1]}]",
        "--contrasts",
        "[t2f]",
        "--progress",
        "false",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads((out / "datalist.json").read_text())["training"]
    assert written == [
        {"case": cases[1], "t2f": f"{cases[1]}/{cases[1]}-t2f.nii.gz", "seg": f"{cases[1]}/{cases[1]}-seg.nii.gz"}
    ]
    from make_synthetic_dataset import make_synthetic_dataset  # scripts/ is on sys.path (conftest.py)

    with pytest.raises(Exception) as e:  # refused before any sampling (in-process: MONAI wraps the error)
        make_synthetic_dataset(
            str(trained / "data"), str(out), bundle_root=str(trained), cases=cases[1], progress=False
        )
    assert "output file(s) exist; --overwrite true replaces them" in error_messages(e.value)
    with pytest.raises(ValueError, match="plain names"):
        make_synthetic_dataset(str(trained / "data"), str(out), bundle_root=str(trained), cases="[../x]")


@pytest.mark.slow
def test_models_of_other_tasks_are_refused(trained, repo_root, tmp_path):
    model = trained / "models" / "label2image" / "model.pt"
    with pytest.raises(ValueError, match=r"label_generation model; use .*inference_label2image.json"):
        load_record(model, "synthesis")
    state = torch.load(model, map_location="cpu", weights_only=False)
    state["record"] = {**state["record"], "task": "generation", "contrasts": None, "labels": None, "modality": "t1n"}
    other = tmp_path / "generation.pt"
    torch.save(state, other)
    with pytest.raises(Exception) as e:
        _infer(repo_root, trained, tmp_path / "out", ckpt_path=str(other))
    assert "is a generation model; use the generation configs (inference.json)" in error_messages(e.value)
    assert not (tmp_path / "out" / "datalist.json").exists()
