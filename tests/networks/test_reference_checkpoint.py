"""Importing / exporting published-layout checkpoints (random weights with the published keys and shapes)."""

import importlib.util
import os
import re
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from wdm_bundle.engines import authors_record, load_weights
from wdm_bundle.networks import WaveletDiffusionUNet
from wdm_bundle.networks.reference_checkpoint import (
    REFERENCE_CONFIGS,
    ReferenceCheckpointError,
    build_reference_network,
    detect_reference_config,
    export_checkpoint_file,
    export_reference_state_dict,
    import_checkpoint_file,
    import_reference_state_dict,
)

ROOT = Path(__file__).resolve().parents[2]
SPEC_CONFIGS = ("wdm_unet_128", "wdm_unet_256", "wdm_wavunet_128", "cwdm_unet")
# the WavU-Net's shared decoder blocks: output_blocks.{2,5,8,11,14}.0 == output_blocks.{1,4,7,10,13}.0
_SHARED = re.compile(r"^output_blocks\.(2|5|8|11|14)\.0\.(.+)$")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _state(spec: dict, kind: str = "randn") -> OrderedDict:
    """A state_dict with exactly the spec's keys and shapes; shared WavU-Net copies made equal."""
    make = {
        "randn": lambda s: torch.randn(s) * 0.05,
        "zeros": torch.zeros,
        "meta": lambda s: torch.empty(s, device="meta"),
    }[kind]
    wavunet = "out_res.0.0.in_layers.0.weight" in spec
    state = OrderedDict()
    for key, shape in spec.items():
        m = _SHARED.match(key) if wavunet else None
        state[key] = state[f"output_blocks.{int(m.group(1)) - 1}.0.{m.group(2)}"] if m else make(shape)
    return state


@pytest.mark.parametrize("name", SPEC_CONFIGS)
def test_detect_config(name, reference_spec):
    assert detect_reference_config(_state(reference_spec(name), "meta")) == name


@pytest.mark.parametrize("name", SPEC_CONFIGS)
def test_round_trip_in_memory(name, reference_spec):
    """import -> export gives back the same keys (same order) and identical tensors; every target key is filled."""
    state = _state(reference_spec(name))
    config, weights = import_reference_state_dict(state)
    assert config == name
    target = build_reference_network(name, device="meta").state_dict()
    assert list(weights) == list(target) == [f"backbone.{k}" for k in state]
    config, exported = export_reference_state_dict(weights)
    assert config == name and list(exported) == list(state)
    assert all(torch.equal(exported[k], state[k]) for k in state)


def test_truncated_checkpoint_lists_missing_keys(reference_spec):
    state = _state(reference_spec("wdm_unet_128"), "meta")
    removed = [k for k in state if k.startswith("output_blocks.14.") or k == "out.2.weight"]
    for k in removed:
        del state[k]
    with pytest.raises(ReferenceCheckpointError) as err:
        detect_reference_config(state)
    msg = str(err.value)
    assert "closest, 'wdm_unet_128'" in msg and f"missing keys ({len(removed)})" in msg
    assert all(k in msg for k in removed) and "unexpected keys: none" in msg


def test_foreign_checkpoint_lists_unexpected_keys():
    with torch.device("meta"):
        foreign = WaveletDiffusionUNet(channels=(8, 16), num_res_blocks=1, norm_num_groups=8).backbone.state_dict()
    with pytest.raises(ReferenceCheckpointError, match="matches none") as err:
        import_reference_state_dict(foreign)
    msg = str(err.value)
    assert "unexpected keys (" in msg and "conv_in.conv.weight" in msg and "missing keys (" in msg
    assert "time_embed.2.bias: (32,) vs (256,)" in msg  # MONAI shares a few names with the reference


def test_shape_mismatch_and_wrong_config(reference_spec):
    state = _state(reference_spec("wdm_unet_128"), "meta")
    state["input_blocks.0.0.weight"] = torch.empty(64, 4, 3, 3, 3, device="meta")
    mismatch = r"input_blocks\.0\.0\.weight: \(64, 4, 3, 3, 3\) vs \(64, 8, 3, 3, 3\)"
    with pytest.raises(ReferenceCheckpointError, match=mismatch):
        detect_reference_config(state)
    good = _state(reference_spec("wdm_unet_128"), "meta")
    with pytest.raises(ReferenceCheckpointError, match="does not match config 'cwdm_unet'"):
        import_reference_state_dict(good, config="cwdm_unet")
    with pytest.raises(ValueError, match="config must be one of"):
        import_reference_state_dict(good, config="unet")


def test_shared_copies_must_be_equal(reference_spec):
    state = _state(reference_spec("wdm_wavunet_128"), "zeros")
    key = "output_blocks.5.0.out_layers.3.bias"  # a copy of output_blocks.4.0.out_layers.3.bias
    state[key] = torch.ones_like(state[key])
    with pytest.raises(ReferenceCheckpointError, match=r"blocks\.4\.0\.out_layers\.3\.bias and output_blocks\.5"):
        import_reference_state_dict(state)


def test_module_prefix_and_bundle_checkpoint(reference_spec):
    state = _state(reference_spec("wdm_unet_128"), "zeros")
    config, weights = import_reference_state_dict({f"module.{k}": v for k, v in state.items()})
    assert config == "wdm_unet_128" and "backbone.out.2.bias" in weights
    with pytest.raises(ReferenceCheckpointError, match="bundle checkpoint"):
        import_reference_state_dict({"model": weights, "ema": weights, "iteration": 0})


def test_export_rejects_other_networks():
    small = WaveletDiffusionUNet(channels=(8, 16), num_res_blocks=1, norm_num_groups=8).state_dict()
    with pytest.raises(ReferenceCheckpointError, match="matches none"):
        export_reference_state_dict(small)
    with pytest.raises(ReferenceCheckpointError, match="does not match config 'wdm_unet_128'"):
        export_reference_state_dict(small, config="wdm_unet_128")


def test_files_refuse_overwrite_and_missing_key(tmp_path):
    src, dst = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"x": torch.zeros(1)}, src)
    torch.save({"model": {"x": torch.zeros(1)}, "iteration": 0}, dst)
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_checkpoint_file(src, dst)
    with pytest.raises(FileNotFoundError):
        import_checkpoint_file(tmp_path / "missing.pt", tmp_path / "c.pt")
    with pytest.raises(KeyError, match="no 'ema' weights"):
        export_checkpoint_file(dst, tmp_path / "c.pt")
    with pytest.raises(ReferenceCheckpointError, match="matches none"):
        import_checkpoint_file(src, tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()
    with pytest.raises(ValueError, match="--config must be one of"):
        _load_script("import_checkpoint").import_checkpoint(str(src), str(tmp_path / "c.pt"), config="unet")


# published input sizes (cwdm_unet: 32 x 112x112x80, ~60 s and 5 GB on 2 CPU cores) except wdm_unet_256
# (published 8 x 128^3, ~8.4 TFLOP) at 32^3; set WDM_FULL_SIZE_TESTS=1 for that one.
_FULL = bool(os.environ.get("WDM_FULL_SIZE_TESTS"))
FORWARD_SIZES = {
    "wdm_unet_128": (64, 64, 64),
    "wdm_unet_256": (128, 128, 128) if _FULL else (32, 32, 32),
    "wdm_wavunet_128": (64, 64, 64),
    "cwdm_unet": (112, 112, 80),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SPEC_CONFIGS)
def test_import_forward_export_files(name, reference_spec, tmp_path):
    """The command-line path: reference .pt -> bundle model.pt -> load_weights (strict) -> forward -> export."""
    state = _state(reference_spec(name))
    src, dst, out = tmp_path / "published.pt", tmp_path / "models" / "model.pt", tmp_path / "exported.pt"
    torch.save(state, src)
    target = "t2f" if name.startswith("cwdm") else None
    script = _load_script("import_checkpoint").import_checkpoint
    if target:
        with pytest.raises(ValueError, match="--target_contrast"):  # before the large file is read
            script(str(src), str(dst), config=name)
    assert script(str(src), str(dst), iteration=1_200_000, target_contrast=target) == name
    ckpt = torch.load(dst, map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 1_200_000 and ckpt["reference"]["config"] == name
    assert list(ckpt["model"]) == list(ckpt["ema"]) == [f"backbone.{k}" for k in state]
    assert ckpt["record"] == authors_record(name, target) and ckpt["record"]["variance_type"] == "fixed_large"
    _samples_with_the_authors_settings(name, dst, target)

    net = load_weights(build_reference_network(name), dst, "ema", strict=True).eval()
    x = torch.randn(1, net.in_channels, *FORWARD_SIZES[name])
    start = time.perf_counter()
    with torch.no_grad():
        y = net(x, torch.tensor([500]))
    print(f"{name} forward {tuple(x.shape)}: {time.perf_counter() - start:.1f} s")
    assert y.shape == (1, 8, *FORWARD_SIZES[name]) and torch.isfinite(y).all()
    del net, x, y

    assert _load_script("export_checkpoint").export_checkpoint(str(dst), str(out)) == name
    exported = torch.load(out, map_location="cpu", weights_only=True)
    assert list(exported) == list(state) and all(torch.equal(exported[k], state[k]) for k in state)
    with pytest.raises(FileExistsError):
        import_checkpoint_file(src, dst)


def _samples_with_the_authors_settings(name, path, target):
    """The inference configs with only the weight file given: the authors' sampler, data range, grid and network."""
    configs = Path(__file__).resolve().parents[2] / "configs"
    parser = ConfigParser()
    if target is None:
        parser.read_config(str(configs / "inference.json"))
        parser.update({"ckpt_path": str(path)})
    else:
        parser.read_config(str(configs / "inference_cwdm.json"))
        parser.update({"ckpt_paths": {target: str(path)}})
    scheduler = parser.get_parsed_content("noise_scheduler")
    assert scheduler.num_train_timesteps == 1000 and scheduler.variance_type == "fixed_large"
    assert scheduler.betas.dtype == torch.float64
    assert scheduler.betas[0].item() == pytest.approx(1e-4, abs=1e-15) and scheduler.betas[-1].item() == 0.02
    if target is None:
        assert parser.get_parsed_content("inferer").data_range == (-1.0, 1.0)
        size = list(REFERENCE_CONFIGS[name].image_size)
        assert parser.get_parsed_content("generator").image_shape == (1, *size)
        parser.get_parsed_content("initialize")  # strict load into the network rebuilt from the record
        expected = build_reference_network(name, "meta").backbone
        assert type(parser.get_parsed_content("network").backbone) is type(expected)
    else:
        synth = parser.get_parsed_content("synthesizer")
        assert synth.data_range == (0.0, 1.0) and synth.pad_crop_size == (224, 224, 160)
        assert synth.record["placement"] == "end" and synth.contrasts == ["t1n", "t1c", "t2w", "t2f"]
        net, _ = synth.network_for(target)  # strict load, 3 conditions, concatenation skips
        assert net.in_channels == 32 and net.backbone.skip_mode == "concat"


def test_registry_covers_spec_configs():
    assert set(SPEC_CONFIGS) < set(REFERENCE_CONFIGS) and "wdm_wavunet_256" in REFERENCE_CONFIGS
