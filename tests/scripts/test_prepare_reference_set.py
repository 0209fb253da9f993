"""scripts/prepare_reference_set.py: the real set of configs/evaluate.json, preprocessed as WDM training sees it."""

import importlib.util
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from wdm_bundle.diffusion import make_scheduler
from wdm_bundle.engines import training_record
from wdm_bundle.networks import WaveletDiffusionUNet

SETTINGS = {"pad_crop_size": [16, 16, 16], "image_size": [8, 8, 8]}


@pytest.fixture(scope="module")
def script(repo_root):
    path = repo_root / "scripts" / "prepare_reference_set.py"
    spec = importlib.util.spec_from_file_location("prepare_reference_set", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    """Three BraTS-layout cases (t1n and t2f) of random intensities on a 20x18x14 grid in LPS orientation."""
    root = tmp_path_factory.mktemp("brats")
    rng = np.random.default_rng(0)
    for i in range(3):
        case = root / f"BraTS-GLI-0000{i}-000"
        case.mkdir()
        for contrast in ("t1n", "t2f"):
            data = rng.gamma(2.0, 100.0, size=(20, 18, 14)).astype(np.float32)
            nib.save(
                nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0])), str(case / f"{case.name}-{contrast}.nii.gz")
            )
    return root


def _training_volumes(repo_root, brats, **settings):
    """What the training dataset of configs/train.json yields for these cases."""
    parser = ConfigParser()
    parser.read_config(str(repo_root / "configs" / "train.json"))
    parser.update({"dataset_dir": str(brats), "cache_rate": 0.0, "num_workers": 0, **settings})
    dataset = parser.get_parsed_content("train#dataset")
    return {item["case"]: item["image"][0].numpy() for item in (dataset[i] for i in range(len(dataset)))}


def test_reference_set_is_the_training_preprocessing(repo_root, script, brats, tmp_path):
    written = script.prepare_reference_set(str(brats), str(tmp_path / "real"), **SETTINGS)
    expected = _training_volumes(repo_root, brats, **SETTINGS)
    assert sorted(p.rsplit("/", 1)[1] for p in written) == [f"{case}.nii.gz" for case in sorted(expected)]
    for case, volume in expected.items():
        img = nib.load(tmp_path / "real" / f"{case}.nii.gz")
        assert img.shape == (8, 8, 8)
        np.testing.assert_allclose(img.get_fdata(), volume, atol=1e-6)
        assert -1.0 <= volume.min() < volume.max() <= 1.0
        np.testing.assert_allclose(img.header.get_zooms(), [2.0, 2.0, 2.0])  # training's: 1 mm framed 16, resized to 8
    with pytest.raises(FileExistsError, match="--overwrite true"):
        script.prepare_reference_set(str(brats), str(tmp_path / "real"), **SETTINGS)
    assert (
        len(script.prepare_reference_set(str(brats), str(tmp_path / "real"), overwrite=True, num_volumes=2, **SETTINGS))
        == 2
    )


def _checkpoint(path, **kw):
    net = WaveletDiffusionUNet(channels=(8, 8), num_res_blocks=1, norm_num_groups=8)
    args = dict(
        task="generation",
        diffusion="ddpm",
        scheduler=make_scheduler("ddpm"),
        network=net,
        data_range=(-1, 1),
        image_size=SETTINGS["image_size"],
        pad_crop_size=SETTINGS["pad_crop_size"],
        spacing=(3.0, 3.0, 3.0),
        modality="t2f",
        orientation="RAS",
    )
    args.update(kw)
    torch.save({"ema": net.state_dict(), "record": training_record(**args)}, path)
    return path


def test_settings_come_from_the_checkpoint_record(repo_root, script, brats, tmp_path):
    ckpt = _checkpoint(tmp_path / "model.pt")
    script.prepare_reference_set(str(brats), str(tmp_path / "real"), ckpt=str(ckpt))
    expected = _training_volumes(repo_root, brats, modality="t2f", **SETTINGS)  # the recorded contrast
    for case, volume in expected.items():
        img = nib.load(tmp_path / "real" / f"{case}.nii.gz")
        np.testing.assert_allclose(img.get_fdata(), volume, atol=1e-6)
        np.testing.assert_allclose(img.header.get_zooms(), [3.0, 3.0, 3.0])  # the recorded voxel spacing
    with pytest.raises(ValueError, match=r"image_size: \[16, 16, 16\] given, \[8, 8, 8\] recorded"):
        script.prepare_reference_set(str(brats), str(tmp_path / "other"), ckpt=str(ckpt), image_size=[16, 16, 16])
    torch.save({"ema": {}}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="holds no training record"):
        script.prepare_reference_set(str(brats), str(tmp_path / "other"), ckpt=str(tmp_path / "bare.pt"))


def test_a_record_without_reorientation_keeps_the_file_orientation(repo_root, script, brats, tmp_path):
    ckpt = _checkpoint(tmp_path / "model.pt", orientation=None, pad_crop_size=None, image_size=None)
    (written,) = script.prepare_reference_set(str(brats), str(tmp_path / "real"), ckpt=str(ckpt), num_volumes=1)
    out = nib.load(written).get_fdata()
    source = nib.load(brats / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t2f.nii.gz").get_fdata()
    assert out.shape == source.shape  # no pad/crop or resize
    assert np.corrcoef(out.ravel(), source.ravel())[0, 1] > 0.95  # nor the LPS -> RAS flip training applies
    ras = _training_volumes(repo_root, brats, modality="t2f", pad_crop_size=None, image_size=None)[
        "BraTS-GLI-00000-000"
    ]
    np.testing.assert_allclose(ras, out[::-1, ::-1], atol=1e-6)


@pytest.mark.slow
def test_command_line(repo_root, brats, tmp_path):
    cmd = [
        sys.executable,
        "scripts/prepare_reference_set.py",
        "--dataset_dir",
        str(brats),
        "--output_dir",
        str(tmp_path / "real"),
        "--pad_crop_size",
        "[16,16,16]",
        "--image_size",
        "[8,8,8]",
    ]
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "real").glob("*.nii.gz"))) == 3
