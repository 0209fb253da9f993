"""The published-size override configs merge onto train.json and build the reference networks; inference rebuilds
them from the checkpoint's record alone."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from wdm_bundle.data import training_spacing
from wdm_bundle.engines import atomic_save, authors_record
from wdm_bundle.networks.reference_checkpoint import reference_shapes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
OVERRIDES = {  # override file -> (reference config, image size, spacing)
    "wdm_unet_128": ("wdm_unet_128", [128] * 3, [2.0] * 3),
    "wdm_unet_256": ("wdm_unet_256", [256] * 3, [1.0] * 3),
    "wdm_wavunet_128": ("wdm_wavunet_128", [128] * 3, [2.0] * 3),
    "wdm_wavunet_256": ("wdm_wavunet_256", [256] * 3, [1.0] * 3),
}


@pytest.fixture(scope="module")
def brats_like(tmp_path_factory):
    """A header-only stand-in for a BraTS volume: 240x240x155 at 1 mm, rotated (oblique) and LPS-ordered."""
    angle = np.deg2rad(10)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, -1.0, 1.0])
    path = tmp_path_factory.mktemp("brats") / "case-t1n.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((240, 240, 155), np.uint8), affine), path)
    return path


def _parse(files, **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update(overrides)
    with torch.device("meta"):  # shapes only: no weights allocated
        return parser, parser.get_parsed_content("network_def")


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_override_builds_reference_network(name, reference_spec, brats_like):
    config, size, spacing = OVERRIDES[name]
    parser, net = _parse(["train.json", f"{name}.json"])
    shapes = {k: tuple(v.shape) for k, v in net.backbone.state_dict().items()}
    assert shapes == reference_shapes(config)
    if config != "wdm_wavunet_256":  # the only one without a published specification
        assert shapes == reference_spec(config)
    assert parser["image_size"] == size and parser["pad_crop_size"] == [256] * 3
    # the recorded voxel size of BraTS-like 1 mm volumes (240x240x155, oblique) framed into 256^3, pooled to size
    assert training_spacing([{"image": str(brats_like)}], "image", size, parser["pad_crop_size"], "RAS") == spacing
    net.check_image_size(size)
    assert parser.get_parsed_content("noise_scheduler").variance_type == "fixed_large"  # the reference's sampler


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_inference_rebuilds_the_reference_network_from_the_record(name, tmp_path):
    """An imported checkpoint records the authors' settings: inference.json needs no override at all."""
    config, size, _ = OVERRIDES[name]
    atomic_save({"model": {}, "record": authors_record(config)}, tmp_path / "model.pt")
    parser, net = _parse(["inference.json"], ckpt_path=str(tmp_path / "model.pt"))
    assert {k: tuple(v.shape) for k, v in net.backbone.state_dict().items()} == reference_shapes(config)
    assert parser.get_parsed_content("record")["image_size"] == size
    scheduler = parser.get_parsed_content("noise_scheduler")
    assert scheduler.variance_type == "fixed_large" and scheduler.alphas_cumprod.dtype == torch.float64


def test_cwdm_backbone_override(reference_spec):
    _, net = _parse(["train.json", "train_cwdm.json", "cwdm_unet_backbone.json"], target_contrast="t2f")
    assert net.in_channels == 32 and net.out_channels == 8 and net.backbone.skip_mode == "concat"
    assert {k: tuple(v.shape) for k, v in net.backbone.state_dict().items()} == reference_spec("cwdm_unet")
    net.check_image_size((224, 224, 160))
