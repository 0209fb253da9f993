"""The bundle's workflows driven like the model zoo's CI: `ConfigWorkflow` with overrides, and the CLI."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from scipy.stats import wasserstein_distance
from workflow_helpers import error_messages as _messages
from workflow_helpers import workflow as _workflow

from wdm_bundle.engines import centered_affine, list_checkpoints

pytestmark = pytest.mark.slow


def _train(repo_root, root, demo_data, num_iterations, **override):
    wf = _workflow(
        repo_root,
        ["train.json", "demo.json"],
        "train",
        bundle_root=str(root),
        dataset_dir=str(demo_data),
        num_iterations=num_iterations,
        num_workers=0,
        **override,
    )
    trainer = wf.parser.get_parsed_content("train#trainer")
    record = {"loss": [], "iteration": []}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: record["loss"].append(e.state.output[0]["loss"]))
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: record["iteration"].append(e.state.iteration))
    wf.run()
    wf.finalize()
    return record


def test_train_resume_and_infer(repo_root, demo_data, tmp_path):
    record = _train(repo_root, tmp_path, demo_data, 60, save_every=30, preview_every=30, log_every=20)
    losses = np.array(record["loss"])
    assert len(losses) == 60
    assert losses[-10:].mean() < 0.6 * losses[:10].mean(), losses
    assert [p.name for p in list_checkpoints(tmp_path / "models")] == [
        "checkpoint_00000030.pt",
        "checkpoint_00000060.pt",
    ]
    assert (tmp_path / "eval" / "previews" / "preview_00000060.png").stat().st_size > 1000
    assert list((tmp_path / "eval" / "tensorboard").glob("events.out.tfevents.*"))

    # starting over in the same folder without --resume/--overwrite is refused
    with pytest.raises(Exception) as err:
        _train(repo_root, tmp_path, demo_data, 60)
    assert "already holds 2 checkpoint(s)" in _messages(err.value)

    resumed = _train(repo_root, tmp_path, demo_data, 75, resume=True, save_every=30)
    assert resumed["iteration"][0] == 61 and resumed["iteration"][-1] == 75
    assert list_checkpoints(tmp_path / "models")[-1].name == "checkpoint_00000075.pt"
    assert torch.load(tmp_path / "models" / "model.pt", weights_only=True)["iteration"] == 75

    out = tmp_path / "samples"
    wf = _workflow(
        repo_root,
        ["inference.json"],
        "infer",
        bundle_root=str(tmp_path),
        output_dir=str(out),
        num_samples=3,
        batch_size=2,
        num_inference_steps=5,
        progress=False,
    )
    wf.run()
    files = sorted(out.glob("*.nii.gz"))
    assert [f.name for f in files] == ["sample_0000.nii.gz", "sample_0001.nii.gz", "sample_0002.nii.gz"]
    spacing = wf.parser.get_parsed_content("record")["spacing"]
    assert spacing == [5.0, 6.0, 5.0]  # recorded by training: the demo data's voxel size (160x192x160 mm / 32)
    for f in files:
        img = nib.load(f)
        assert img.shape == (32, 32, 32) and img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.affine, centered_affine((32, 32, 32), spacing))
        np.testing.assert_allclose(img.header.get_zooms(), spacing)
        data = img.get_fdata()
        assert data.min() >= -1 - 1e-6 and data.max() <= 1 + 1e-6 and data.std() > 0
        assert f.with_name(f.name.replace(".nii.gz", ".png")).exists()
    with pytest.raises(Exception) as err:
        _workflow(
            repo_root,
            ["inference.json"],
            "infer",
            bundle_root=str(tmp_path),
            output_dir=str(out),
            num_samples=3,
            num_inference_steps=5,
            progress=False,
        ).run()
    assert "output file(s) already exist" in _messages(err.value)


def _held_out(repo_root, demo_data):
    wf = _workflow(
        repo_root,
        ["train.json", "demo.json"],
        "train",
        dataset_dir=str(demo_data),
        split="test",
        bundle_root="/nonexistent",
    )
    datalist = wf.parser.get_parsed_content("train#datalist")
    preprocessing = wf.parser.get_parsed_content("train#preprocessing")
    return np.stack([np.asarray(preprocessing(d)["image"][0]) for d in datalist])


def _distances(samples, real):
    rmse = float(np.sqrt(((samples.mean(0) - real.mean(0)) ** 2).mean()))
    w1 = float(wasserstein_distance(samples.ravel(), real.ravel()))
    return rmse, w1


def test_learning_is_real(repo_root, demo_data, tmp_path):
    """Short training makes samples far closer to held-out volumes than noise or the untrained model."""
    real = _held_out(repo_root, demo_data)
    assert real.shape == (8, 32, 32, 32)

    def sample(root, use_ema):
        out = root / "samples"
        wf = _workflow(
            repo_root,
            ["inference.json"],
            "infer",
            bundle_root=str(root),
            output_dir=str(out),
            num_samples=8,
            batch_size=8,
            num_inference_steps=10,
            use_ema=use_ema,
            save_png=False,
            progress=False,
        )
        wf.run()
        return np.stack([nib.load(f).get_fdata() for f in sorted(out.glob("*.nii.gz"))])

    _train(repo_root, tmp_path / "untrained", demo_data, 1)
    untrained = sample(tmp_path / "untrained", use_ema=False)
    _train(repo_root, tmp_path / "trained", demo_data, 150, save_every=150, preview_every=0)
    trained = sample(tmp_path / "trained", use_ema=False)

    from wdm_bundle.wavelets import HaarWavelet3D

    noise = HaarWavelet3D(3.0).decode(torch.randn(8, 8, 16, 16, 16, generator=torch.Generator().manual_seed(0)))
    noise = noise.clamp(-1, 1)[:, 0].numpy()

    d_trained, d_untrained, d_noise = (_distances(s, real) for s in (trained, untrained, noise))
    print(f"mean-image RMSE / W1: trained {d_trained}, untrained {d_untrained}, noise {d_noise}")
    for i, name in enumerate(("mean-image RMSE", "histogram W1")):
        assert d_trained[i] < 0.5 * d_untrained[i], (name, d_trained, d_untrained)
        assert d_trained[i] < 0.5 * d_noise[i], (name, d_trained, d_noise)
    assert trained.std(0).mean() > 0.02  # samples differ from each other: not a collapsed mean image


def _cli(repo_root, *args):
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        "['configs/train.json','configs/demo.json']",
        *args,
    ]
    return subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)


def test_cli_rejects_bad_input_before_training(repo_root, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    result = _cli(repo_root, "--bundle_root", str(tmp_path), "--dataset_dir", str(data), "--datalist", "''")
    assert result.returncode != 0 and "holds no NIfTI files" in result.stderr

    for i in range(2):
        vol = np.random.rand(32, 32, 32).astype(np.float32)
        if i == 1:
            vol[3, 4, 5] = np.nan
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(data / f"vol{i}.nii.gz"))
    result = _cli(
        repo_root, "--bundle_root", str(tmp_path), "--dataset_dir", str(data), "--datalist", "''", "--modality", "''"
    )
    assert result.returncode != 0
    assert "vol1.nii.gz: contains 1 NaN/inf voxels" in result.stderr
    assert not (tmp_path / "models").exists()


def test_image_space_ddpm_baseline_config(repo_root, demo_data, tmp_path):
    """The paper's baseline: the same U-Net on the images (no DWT), from one override file."""
    wf = _workflow(
        repo_root,
        ["train.json", "demo.json", "ddpm_image_space.json"],
        "train",
        bundle_root=str(tmp_path),
        dataset_dir=str(demo_data),
        num_iterations=4,
        save_every=4,
        preview_every=4,
        num_workers=0,
    )
    net = wf.parser.get_parsed_content("network_def")
    assert net.space == "image" and net.in_channels == 1
    wf.run()
    wf.finalize()
    wf = _workflow(
        repo_root,
        ["inference.json"],
        "infer",
        bundle_root=str(tmp_path),
        num_samples=1,
        num_inference_steps=2,
        progress=False,
    )
    wf.run()
    assert nib.load(tmp_path / "samples" / "sample_0000.nii.gz").shape == (32, 32, 32)
