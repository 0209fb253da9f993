"""`--diffusion rflow` through the bundle configs: train, sample with `--sampler rflow`, refuse other samplers."""

import nibabel as nib
import pytest
import torch
from workflow_helpers import error_messages as _messages
from workflow_helpers import workflow as _workflow

pytestmark = pytest.mark.slow


def test_rflow_train_and_sample(repo_root, demo_data, tmp_path):
    wf = _workflow(
        repo_root,
        ["train.json", "demo.json"],
        "train",
        bundle_root=str(tmp_path),
        dataset_dir=str(demo_data),
        num_iterations=20,
        save_every=20,
        preview_every=20,
        num_workers=0,
        diffusion="rflow",
        activation_checkpointing="true",
        preview_steps=3,
    )
    wf.run()
    wf.finalize()
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert state["diffusion"] == "rflow" and state["iteration"] == 20
    assert (tmp_path / "eval" / "previews" / "preview_00000020.png").exists()

    out = tmp_path / "samples"
    _workflow(
        repo_root,
        ["inference.json"],
        "infer",
        bundle_root=str(tmp_path),
        output_dir=str(out),
        num_samples=2,
        batch_size=2,
        sampler="rflow",
        num_inference_steps=4,
        progress=False,
    ).run()
    files = sorted(out.glob("*.nii.gz"))
    assert len(files) == 2
    data = nib.load(files[0]).get_fdata()
    assert data.shape == (32, 32, 32) and data.min() >= -1 - 1e-6 and data.max() <= 1 + 1e-6

    with pytest.raises(Exception) as err:
        _workflow(
            repo_root,
            ["inference.json"],
            "infer",
            bundle_root=str(tmp_path),
            output_dir=str(tmp_path / "ddim"),
            sampler="ddim",
            progress=False,
        ).run()
    assert "trained with diffusion='rflow'" in _messages(err.value)


def test_rflow_cwdm_configs(repo_root, demo_data, tmp_path):
    """The cWDM training override passes the objective to its batch preparation and checkpoints."""
    wf = _workflow(
        repo_root,
        ["train.json", "train_cwdm.json", "demo.json"],
        "train",
        bundle_root=str(tmp_path),
        dataset_dir=str(demo_data),
        num_iterations=3,
        save_every=3,
        preview_every=0,
        num_workers=0,
        diffusion="rflow",
    )
    assert wf.parser.get_parsed_content("train#prepare_batch").diffusion == "rflow"
    wf.run()
    wf.finalize()
    assert torch.load(tmp_path / "models" / "unified" / "model.pt", weights_only=True)["diffusion"] == "rflow"


def test_rflow_x0_objective_is_read_from_the_checkpoint(repo_root, demo_data, tmp_path):
    """`--diffusion rflow_x0` trains with the configured timestep draw; inference reads the objective from model.pt."""
    wf = _workflow(
        repo_root,
        ["train.json", "demo.json"],
        "train",
        bundle_root=str(tmp_path),
        dataset_dir=str(demo_data),
        num_iterations=3,
        save_every=3,
        preview_every=0,
        num_workers=0,
        diffusion="rflow_x0",
        timestep_loc=1.5,
        timestep_scale=0.5,
    )
    sched = wf.parser.get_parsed_content("train#prepare_batch").scheduler
    assert sched.sample_method == "logit-normal"
    assert (sched.distribution.loc.item(), sched.distribution.scale.item()) == (1.5, 0.5)
    assert wf.parser.get_parsed_content("inferer").diffusion == "rflow_x0"
    wf.run()
    wf.finalize()
    assert torch.load(tmp_path / "models" / "model.pt", weights_only=True)["diffusion"] == "rflow_x0"

    out = tmp_path / "samples"
    infer = _workflow(
        repo_root,
        ["inference.json"],
        "infer",
        bundle_root=str(tmp_path),
        output_dir=str(out),
        num_samples=1,
        sampler="rflow",
        num_inference_steps=2,
        progress=False,
    )
    assert infer.parser.get_parsed_content("inferer").diffusion == "rflow_x0"
    infer.run()
    assert len(list(out.glob("*.nii.gz"))) == 1

    with pytest.raises(Exception) as err:  # an override that contradicts the checkpoint
        _workflow(
            repo_root,
            ["inference.json"],
            "infer",
            bundle_root=str(tmp_path),
            output_dir=str(tmp_path / "v"),
            sampler="rflow",
            diffusion="rflow",
            progress=False,
        ).run()
    assert "trained with diffusion='rflow_x0'" in _messages(err.value)
