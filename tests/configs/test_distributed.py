"""Multi-process training and sampling with `torchrun` on CPU (gloo), as a user runs them on GPUs (NCCL)."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from workflow_helpers import assert_same_training

from wdm_bundle.engines import list_checkpoints

pytestmark = pytest.mark.slow

# test-only extra config: record each rank's iterations, losses, sampler share and final model, EMA and optimizer
_DUMP = {
    "dump_losses": "$[]",
    "training": [
        "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED, "
        "lambda e: @dump_losses.append((e.state.iteration, float(e.state.output[0]['loss']))))",
        "$@train#trainer.run()",
    ],
    "+finalize": [
        "$torch.save({'record': @dump_losses, 'indices': list(@train#sampler), 'params': {k: v.detach().cpu() for k, v "
        "in wdm_bundle.diffusion.unwrap_model(@network).state_dict().items()}, 'ema': @ema.ema_model.state_dict(), "
        "'optimizer': @optimizer.state_dict()}, @bundle_root + '/rank_' + os.environ['RANK'] + '.pt')"
    ],
}


def _torchrun(repo_root, tmp, configs, run_id, *args, nproc=2):
    tmp.mkdir(parents=True, exist_ok=True)
    dump = tmp / "dump.json"
    dump.write_text(json.dumps(_DUMP))
    files = [str(repo_root / "configs" / c) for c in configs] + ([str(dump)] if run_id == "training" else [])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "monai.bundle",
        "run",
        run_id,
        "--config_file",
        repr(files),
        "--bundle_root",
        str(tmp),
        *map(str, args),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _ranks(tmp, n=2):
    return [torch.load(tmp / f"rank_{r}.pt", weights_only=True) for r in range(n)]


def _assert_synchronised(dumps, iterations):
    for d in dumps:  # every rank ran every iteration
        assert [it for it, _ in d["record"]] == iterations
    a, b = dumps
    assert set(a["indices"]).isdisjoint(b["indices"]), (a["indices"], b["indices"])
    # different data and noise on each rank (the losses differ), yet identical weights: gradients were averaged
    assert [loss for _, loss in a["record"]] != [loss for _, loss in b["record"]]
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k


@pytest.fixture(scope="module")
def ddp_run(repo_root, demo_data, tmp_path_factory):
    """2-process WDM training for 4 iterations (one checkpoint at the end)."""
    tmp = tmp_path_factory.mktemp("ddp")
    _torchrun(
        repo_root,
        tmp,
        ["train.json", "demo.json", "multi_gpu_train.json"],
        "training",
        "--dataset_dir",
        demo_data,
        "--num_iterations",
        4,
        "--save_every",
        100,
        "--preview_every",
        4,
        "--preview_steps",
        2,
        "--log_every",
        1,
        "--epoch_length",
        3,
        "--batch_size",
        2,
    )
    return tmp


def test_ddp_training_synchronises_and_rank0_writes(ddp_run):
    _assert_synchronised(_ranks(ddp_run), [1, 2, 3, 4])
    # rank 0 alone writes: one checkpoint, one TensorBoard file, one preview
    assert [p.name for p in list_checkpoints(ddp_run / "models")] == ["checkpoint_00000004.pt"]
    assert sorted(p.name for p in (ddp_run / "models").iterdir()) == ["checkpoint_00000004.pt", "model.pt"]
    assert len(list((ddp_run / "eval" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [p.name for p in (ddp_run / "eval" / "previews").iterdir()] == ["preview_00000004.png"]
    # the checkpoint holds the unwrapped network: a plain single-process network loads it strictly
    state = torch.load(ddp_run / "models" / "checkpoint_00000004.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state["model"]) and state["trainer"]["iteration"] == 4
    params = _ranks(ddp_run)[0]["params"]
    for k, v in state["model"].items():
        assert torch.equal(v, params[k]), k


def test_ddp_resume(repo_root, demo_data, ddp_run):
    _torchrun(
        repo_root,
        ddp_run,
        ["train.json", "demo.json", "multi_gpu_train.json"],
        "training",
        "--dataset_dir",
        demo_data,
        "--num_iterations",
        6,
        "--save_every",
        100,
        "--preview_every",
        100,
        "--log_every",
        1,
        "--epoch_length",
        3,
        "--batch_size",
        2,
        "--resume",
        "true",
    )
    dumps = _ranks(ddp_run)
    _assert_synchronised(dumps, [5, 6])  # continued at iteration 5, on both ranks
    assert [p.name for p in list_checkpoints(ddp_run / "models")] == [
        "checkpoint_00000004.pt",
        "checkpoint_00000006.pt",
    ]
    assert torch.load(ddp_run / "models" / "model.pt", weights_only=True)["iteration"] == 6


def test_ddp_resume_is_exact(repo_root, demo_data, tmp_path):
    """N iterations straight equal N/2 + resume N/2 on every rank: losses, model, EMA and optimizer, bit for bit."""
    # 8 cases a rank in batches of 3 (drop_last): 2 batches a pass; epochs of 3: the resume at 5 is mid-pass, mid-epoch
    configs = ["train.json", "demo.json", "multi_gpu_train.json"]
    common = [
        "--dataset_dir",
        demo_data,
        "--image_size",
        "[16,16,16]",
        "--batch_size",
        3,
        "--epoch_length",
        3,
        "--save_every",
        5,
        "--preview_every",
        5,
        "--preview_steps",
        2,
        "--log_every",
        100,
    ]
    _torchrun(repo_root, tmp_path / "straight", configs, "training", *common, "--num_iterations", 10)
    _torchrun(repo_root, tmp_path / "resumed", configs, "training", *common, "--num_iterations", 5)
    _torchrun(repo_root, tmp_path / "resumed", configs, "training", *common, "--num_iterations", 10, "--resume", "true")
    straight, resumed = _ranks(tmp_path / "straight"), _ranks(tmp_path / "resumed")
    _assert_synchronised(resumed, list(range(6, 11)))
    for s, r in zip(straight, resumed):
        assert_same_training(
            *(
                {"loss": dict(d["record"]), "model": d["params"], "ema": d["ema"], "optimizer": d["optimizer"]}
                for d in (s, r)
            )
        )


def test_ddp_cwdm_with_tracking(repo_root, demo_data, tmp_path):
    _torchrun(
        repo_root,
        tmp_path,
        ["train.json", "train_cwdm.json", "demo.json", "multi_gpu_train.json"],
        "training",
        "--dataset_dir",
        demo_data,
        "--num_iterations",
        2,
        "--save_every",
        100,
        "--preview_every",
        2,
        "--preview_steps",
        2,
        "--log_every",
        1,
        "--batch_size",
        2,
        "--tracking",
        "mlflow",
    )
    _assert_synchronised(_ranks(tmp_path), [1, 2])
    assert [p.name for p in list_checkpoints(tmp_path / "models" / "unified")] == ["checkpoint_00000002.pt"]
    # one tracked run (rank 0), holding the loss of both iterations and the cWDM params
    mlflow = pytest.importorskip("mlflow")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/eval/cwdm_unified/mlruns.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert run.data.params["target_contrast"] == "unified" and run.data.params["world_size"] == "2"


def test_split_sampling_matches_one_process(repo_root, ddp_run, tmp_path):
    """2 ranks write exactly the files and voxels of a 1-process run (DDPM, uneven batches), no collisions."""
    common = {"num_samples": 5, "batch_size": 2, "sampler": "ddpm", "num_inference_steps": 4, "progress": False}
    _torchrun(
        repo_root,
        ddp_run,
        ["inference.json", "multi_gpu_inference.json"],
        "inference",
        "--output_dir",
        tmp_path / "split",
        *[x for k, v in common.items() for x in (f"--{k}", v)],
    )
    wf = ConfigWorkflow(
        config_file=[str(repo_root / "configs" / c) for c in ("inference.json",)],
        workflow_type="infer",
        bundle_root=str(ddp_run),
        output_dir=str(tmp_path / "single"),
        **common,
    )
    wf.initialize()
    wf.run()
    single = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert single == sorted(p.name for p in (tmp_path / "split").iterdir())
    assert len([n for n in single if n.endswith(".nii.gz")]) == 5
    for name in single:
        if name.endswith(".nii.gz"):
            a = nib.load(tmp_path / "single" / name).get_fdata()
            b = nib.load(tmp_path / "split" / name).get_fdata()
            assert a.std() > 0
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)
