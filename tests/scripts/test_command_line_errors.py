"""Failures through the real command line (`python -m monai.bundle run ...`, `python scripts/...`): the exit code,
the last lines (which file, what is wrong) and that no file was changed or lost."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from wdm_bundle.engines import list_checkpoints

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "--num_iterations",
    "2",
    "--save_every",
    "1",
    "--preview_every",
    "0",
    "--epoch_length",
    "2",
    "--batch_size",
    "2",
    "--log_every",
    "1",
]


def _bundle_cmd(run_id, configs, bundle_root, *args, launcher=()):
    """The command ``python [launcher] -m monai.bundle run <run_id>`` on ``configs/<configs>`` in ``bundle_root``."""
    files = [str(REPO / "configs" / c) for c in configs]
    return [
        sys.executable,
        *launcher,
        "-m",
        "monai.bundle",
        "run",
        run_id,
        "--config_file",
        repr(files),
        "--meta_file",
        str(REPO / "configs" / "metadata.json"),
        "--logging_file",
        str(REPO / "configs" / "logging.conf"),
        "--bundle_root",
        str(bundle_root),
        *map(str, args),
    ]


def _bundle(run_id, configs, bundle_root, *args):
    """``python -m monai.bundle run <run_id>`` on ``configs/<configs>`` in ``bundle_root``: (exit code, output)."""
    return _run(_bundle_cmd(run_id, configs, bundle_root, *args), bundle_root)


def _run(cmd, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("WDM_TRACEBACK", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def _last(output, n=3):
    return "\n".join(output.strip().splitlines()[-n:])


def _snapshot(root):
    """{relative path: sha1} of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in Path(root).rglob("*") if p.is_file()
    }


def _assert_refused(rc, output, *fragments):
    last = _last(output)
    assert rc == 1, output[-3000:]
    assert "Failed to evaluate" not in last and "Traceback" not in output.split("\n")[-1]
    for fragment in fragments:
        assert fragment in last, last


def test_lone_model_pt_and_previews_are_not_replaced(tmp_path, demo_data):
    """Item 7: a lone models/model.pt (the importer's output) or earlier previews refuse a new run."""
    (tmp_path / "models").mkdir()
    torch.save({"model": {"w": torch.ones(2)}, "iteration": 0}, tmp_path / "models" / "model.pt")
    before = _snapshot(tmp_path)
    rc, out = _bundle("training", ["train.json", "demo.json"], tmp_path, "--dataset_dir", demo_data, *FAST)
    _assert_refused(rc, out, "models/model.pt' already exists", "--overwrite true")
    assert _snapshot(tmp_path) == before  # nothing changed, no (empty) TensorBoard file either

    (tmp_path / "models" / "model.pt").unlink()
    (tmp_path / "eval" / "previews").mkdir(parents=True)
    (tmp_path / "eval" / "previews" / "preview_00000500.png").write_bytes(b"png of an earlier run")
    before = _snapshot(tmp_path)
    rc, out = _bundle(
        "training",
        ["train.json", "demo.json"],
        tmp_path,
        "--dataset_dir",
        demo_data,
        *FAST[:4],
        "--preview_every",
        "1",
        "--preview_steps",
        "1",
        *FAST[6:],
    )
    _assert_refused(rc, out, "previews' already holds 1 preview(s)", "preview_00000500.png", "--overwrite true")
    assert _snapshot(tmp_path) == before


def _flat_folder(demo_data, dst):
    dst.mkdir()
    for f in sorted(demo_data.glob("*/*.nii.gz"))[:30]:
        shutil.copyfile(f, dst / f.name)
    return dst


def test_flat_folder_modality_and_nan_loss(tmp_path, demo_data):
    """Item 9: a flat folder honours --modality (demo.json: --dataset_dir alone, no datalist.json); a NaN volume
    with --validate_data false stops at the first non-finite loss, saving nothing."""
    flat = _flat_folder(demo_data, tmp_path / "flat")
    before = _snapshot(tmp_path)
    rc, out = _bundle(
        "training", ["train.json", "demo.json"], tmp_path, "--dataset_dir", flat, "--modality", "t9", *FAST
    )
    _assert_refused(rc, out, f"dataset_dir '{flat}' holds no '<case>-t9.nii.gz' file", "pass --modality")
    assert _snapshot(tmp_path) == before

    t2w = sorted(flat.glob("*-t2w.nii.gz"))
    bad = t2w[0]
    img = nib.load(bad)
    nib.save(nib.Nifti1Image(np.full(img.shape, np.nan, np.float32), img.affine), bad)
    before = _snapshot(tmp_path)
    rc, out = _bundle(
        "training",
        ["train.json", "demo.json"],
        tmp_path,
        "--dataset_dir",
        flat,
        "--modality",
        "t2w",
        "--validate_data",
        "false",
        *FAST[:-4],
        "--batch_size",
        str(len(t2w)),
        "--log_every",
        "1",
    )
    _assert_refused(
        rc,
        out,
        "NonFiniteLossError",
        "training stopped at iteration 1: the loss is nan",
        str(bad),
        "nothing of this iteration was saved",
    )
    assert "-t1n.nii.gz" not in _last(out) and "-seg.nii.gz" not in _last(out)  # only the t2w files were read
    assert _snapshot(tmp_path) == before and not (tmp_path / "models").exists() and not (tmp_path / "eval").exists()


def test_corrupt_checkpoints(tmp_path, demo_data):
    """Item 10: resume skips a truncated newest checkpoint (and repairs model.pt, removes temp files of killed
    saves); checkpoints that are all unreadable are named, with no torch traceback."""
    rc, out = _bundle(
        "training", ["train.json", "demo.json"], tmp_path, "--dataset_dir", demo_data, *FAST, "--n_saved", "2"
    )
    assert rc == 0, out[-3000:]
    models = tmp_path / "models"
    first, second = list_checkpoints(models)
    # a kill between the two renames: model.pt one save behind; a kill mid-write: hidden temp files
    state = torch.load(first, weights_only=True)
    torch.save(
        {"model": state["model"], "ema": state["ema"], "iteration": 1, "diffusion": "ddpm", "record": state["record"]},
        models / "model.pt",
    )
    (models / ".checkpoint_00000003.pt.abcd1234.pt").write_bytes(b"half")
    (models / ".model.pt.efgh5678.pt").write_bytes(b"half")
    rc, out = _bundle(
        "training", ["train.json", "demo.json"], tmp_path, "--dataset_dir", demo_data, *FAST, "--resume", "true"
    )  # budget already reached: only the repairs happen
    assert rc == 0, out[-3000:]
    assert f"'{models / 'model.pt'}' was at iteration 1, not the newest checkpoint's (checkpoint_00000002.pt" in out
    assert sorted(p.name for p in models.iterdir()) == [first.name, second.name, "model.pt"]
    repaired = torch.load(models / "model.pt", weights_only=True)
    assert repaired["iteration"] == 2 and all(
        torch.equal(repaired["ema"][k], v) for k, v in torch.load(second, weights_only=True)["ema"].items()
    )

    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2])  # truncated newest: resume must fall back to checkpoint 1
    rc, out = _bundle(
        "training",
        ["train.json", "demo.json"],
        tmp_path,
        "--dataset_dir",
        demo_data,
        *FAST,
        "--n_saved",
        "2",
        "--num_iterations",
        "3",
        "--resume",
        "true",
    )
    assert rc == 0, out[-3000:]
    assert f"checkpoint '{second}' is truncated, corrupt or not a PyTorch checkpoint" in out
    assert f"resumed from '{first}', the newest readable checkpoint" in out
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_00000002.pt", "checkpoint_00000003.pt", "model.pt"]
    assert torch.load(models / "model.pt", weights_only=True)["iteration"] == 3

    for content in (b"", os.urandom(4096)):
        for p in list_checkpoints(models):
            p.write_bytes(content)
        before = _snapshot(tmp_path)
        rc, out = _bundle(
            "training",
            ["train.json", "demo.json"],
            tmp_path,
            "--dataset_dir",
            demo_data,
            *FAST,
            "--num_iterations",
            "4",
            "--resume",
            "true",
        )
        _assert_refused(
            rc, out, "UnreadableCheckpointError", f"no checkpoint in '{models}' can be read", "checkpoint_00000003.pt"
        )
        assert "weights_only=False" not in out and "Unpickl" not in _last(out)
        assert _snapshot(tmp_path) == before


def test_compare_synthesis_refuses_missing_or_empty_pred_dir(tmp_path):
    """Item 8: a missing, empty or wrong pred_dir fails (script and bundle config) and creates no folder."""
    from wdm_bundle.data.demo import make_demo_dataset
    from wdm_bundle.data.pseudo_validation import make_pseudo_validation

    datalist = make_demo_dataset(tmp_path / "data", num_cases=4, size=16, num_test=2, seed=0, progress=False)
    make_pseudo_validation(None, tmp_path / "pv", tmp_path / "gt", seed=0, datalist=datalist, split="test")
    (tmp_path / "empty").mkdir()
    (tmp_path / "wrong").mkdir()
    shutil.copyfile(next((tmp_path / "data").glob("*/*-t1n.nii.gz")), tmp_path / "wrong" / "other-t1n.nii.gz")
    before = _snapshot(tmp_path)
    for pred, expected in (
        ("typo", f"pred_dir '{tmp_path / 'typo'}' does not exist"),
        ("empty", f"pred_dir '{tmp_path / 'empty'}' must hold"),
        ("wrong", f"pred_dir '{tmp_path / 'wrong'}' must hold"),
    ):
        args = [
            "--input_dir",
            tmp_path / "pv",
            "--gt_dir",
            tmp_path / "gt",
            "--pred_dir",
            tmp_path / pred,
            "--train_datalist",
            datalist,
        ]
        script = [sys.executable, REPO / "scripts" / "compare_synthesis.py", *args]
        rc, out = _run(list(map(str, script)), tmp_path)
        _assert_refused(rc, out, expected)
        rc, out = _bundle("evaluate", ["evaluate_synthesis.json"], tmp_path, *args)
        _assert_refused(rc, out, expected)
        assert _snapshot(tmp_path) == before and not (tmp_path / "typo").exists()


def test_torchrun_refusal_on_every_rank(tmp_path, demo_data):
    """Item 11: under torchrun (2 processes, gloo) every rank refuses a folder with checkpoints, with the same
    message last, no gloo error, and no (empty) TensorBoard file."""
    (tmp_path / "models").mkdir()
    torch.save({"trainer": {"iteration": 5}}, tmp_path / "models" / "checkpoint_00000005.pt")
    before = _snapshot(tmp_path)
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    cmd = _bundle_cmd(
        "training",
        ["train.json", "demo.json", "multi_gpu_train.json"],
        tmp_path,
        "--dataset_dir",
        demo_data,
        *FAST,
        launcher=torchrun,
    )
    rc, out = _run(cmd, tmp_path)
    assert rc != 0
    refusal = "already holds 1 checkpoint(s) (latest: checkpoint_00000005.pt); pass --resume true"
    message = f"ERROR FileExistsError: '{tmp_path / 'models'}' {refusal}"
    # both ranks (torchrun's closing summary may repeat it once more, from the failed rank's error file)
    assert out.count(message) >= 2 and all(f"[rank{r}]: {message}" in out for r in (0, 1)), out[-4000:]
    assert "gloo" not in out.lower() and "Connection closed by peer" not in out
    assert refusal in _last(out, 2)  # torchrun's closing summary shows the cause (read from its error file)
    assert _snapshot(tmp_path) == before and not (tmp_path / "eval").exists()
