"""The published-size override configs merge onto train.json and build the reference networks; inference rebuilds
them from the checkpoint's record alone."""

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from wdm_bundle.engines import atomic_save, authors_record
from wdm_bundle.networks.reference_checkpoint import reference_shapes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
OVERRIDES = {  # override file -> (reference config, image size, spacing)
    "wdm_unet_128": ("wdm_unet_128", [128] * 3, [2.0] * 3),
    "wdm_unet_256": ("wdm_unet_256", [256] * 3, [1.0] * 3),
    "wdm_wavunet_128": ("wdm_wavunet_128", [128] * 3, [2.0] * 3),
    "wdm_wavunet_256": ("wdm_wavunet_256", [256] * 3, [1.0] * 3),
}


def _parse(files, **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update(overrides)
    with torch.device("meta"):  # shapes only: no weights allocated
        return parser, parser.get_parsed_content("network_def")


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_override_builds_reference_network(name, reference_spec):
    config, size, spacing = OVERRIDES[name]
    parser, net = _parse(["train.json", f"{name}.json"])
    shapes = {k: tuple(v.shape) for k, v in net.backbone.state_dict().items()}
    assert shapes == reference_shapes(config)
    if config != "wdm_wavunet_256":  # the only one without a published specification
        assert shapes == reference_spec(config)
    assert parser["image_size"] == size and parser["spacing"] == spacing and parser["roi_size"] == [256] * 3
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
