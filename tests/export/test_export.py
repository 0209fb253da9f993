"""TorchScript (`monai.bundle ckpt_export`) and ONNX export of the denoiser: same outputs as the eager network, the
training record inside the file, refusals."""

import json
import subprocess
import sys

import pytest
import torch

from wdm_bundle.engines import export, load_record
from wdm_bundle.engines.export import load_exported

TOL = 1e-4


def _record(checkpoint):
    """The record sampling reads from the checkpoint (what the exported files must carry)."""
    return {k: v for k, v in load_record(checkpoint, "generation").items() if k != "assumed"}


def _inputs(batch=2, size=16, seed=0):
    """A batch at another size than the trace's (batch 1, 8^3) with timesteps across the range."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 8, size, size, size, generator=g), torch.tensor([999, 3][:batch])


@pytest.fixture(scope="module")
def torchscript(export_script, checkpoint):
    dst = checkpoint.parent / "model.ts"
    assert export_script.export_checkpoint(str(checkpoint), str(dst)) == "generation"
    return dst


def _max_diff(a, b):
    diff = (torch.as_tensor(a) - torch.as_tensor(b)).abs().max().item()
    print(f"max |exported - eager| = {diff:.3g}")
    return diff


def test_torchscript_matches_the_eager_network(export_script, checkpoint, torchscript, demo_network):
    network, record = load_exported(torchscript, "generation")
    assert record == {**_record(checkpoint), "assumed": False}
    eager = demo_network(0)  # the EMA weights
    x, t = _inputs()
    with torch.no_grad():
        expected = eager(x, t)
        assert expected.abs().max() > 0.1
        assert _max_diff(network(x, t), expected) <= TOL
        assert _max_diff(network(x[:1], 500), eager(x[:1], 500)) <= TOL  # one int step for the batch, as eager
    # the shell around the traced denoiser: the Haar coder and size checks of the recorded network
    assert network.wavelet.lll_scale == record["lll_scale"] and network.image_size_multiple == 8
    with pytest.raises(ValueError, match="not divisible by 8"):
        network.check_image_size([32, 32, 36])


def test_torchscript_embeds_record_metadata_and_configs(repo_root, checkpoint, torchscript):
    extra = dict.fromkeys(["record.json", "metadata.json", "inference.json", "inference_exported.json"], "")
    torch.jit.load(str(torchscript), _extra_files=extra)
    assert json.loads(extra["record.json"]) == {"record": _record(checkpoint), "weights": "ema"}
    metadata = json.loads((repo_root / "configs" / "metadata.json").read_text())
    assert json.loads(extra["metadata.json"])["version"] == metadata["version"]
    for name in ("inference.json", "inference_exported.json"):
        assert json.loads(extra[name]) == json.loads((repo_root / "configs" / name).read_text())


def test_load_exported_refuses_contradictions(export_script, torchscript, tmp_path):
    with pytest.raises(ValueError, match="is a generation model, but this config runs synthesis"):
        load_exported(torchscript, "synthesis")
    with pytest.raises(ValueError, match=r"image_size: \[64, 64, 64\] given, \[32, 32, 32\] recorded"):
        load_exported(torchscript, "generation", {"image_size": [64, 64, 64], "beta_end": None})
    bare = tmp_path / "bare.ts"
    torch.jit.save(torch.jit.load(str(torchscript)), str(bare))  # the network without its record
    with pytest.raises(ValueError, match="holds no record.json"):
        load_exported(bare, "generation")
    with pytest.raises(FileNotFoundError, match="export it first"):
        load_exported(tmp_path / "missing.ts", "generation")


def test_a_file_traced_for_another_device_is_refused(export_script, torchscript, monkeypatch):
    """The trace fixes the device of the tensors it creates (the timestep embedding): CUDA files run on CUDA only."""
    assert export._traced_devices(torch.jit.load(str(torchscript))) == {"cpu"}
    monkeypatch.setattr(export, "_traced_devices", lambda module: {"cpu", "cuda"})
    with pytest.raises(
        ValueError, match=r"traced on \['cuda'\] and runs there only; export it again with --device cpu"
    ):
        load_exported(torchscript, "generation", device="cpu")


def test_export_refuses_to_overwrite_and_needs_a_record(export_script, checkpoint, torchscript, tmp_path, demo_network):
    with pytest.raises(FileExistsError, match="--overwrite true"):
        export_script.export_checkpoint(str(checkpoint), str(torchscript))
    bare = tmp_path / "bare.pt"
    torch.save({"ema": demo_network(0).state_dict()}, bare)
    with pytest.raises(ValueError, match="holds no training record"):
        export_script.export_checkpoint(str(bare), str(tmp_path / "bare.ts"))
    with pytest.raises(ValueError, match="--to must be one of"):
        export_script.export_checkpoint(str(checkpoint), str(tmp_path / "model.bin"))


def test_record_json_is_the_checkpoint_record(export_script, checkpoint, tmp_path):
    assert export_script.export_checkpoint(str(checkpoint), str(tmp_path / "record.json")) == "generation"
    assert json.loads((tmp_path / "record.json").read_text()) == {"record": _record(checkpoint), "weights": "ema"}


def _onnx_outputs(path, x, t):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "timesteps"]
    record = json.loads(session.get_modelmeta().custom_metadata_map["wdm_bundle.record"])
    return session.run(["pred"], {"image": x.numpy(), "timesteps": t.numpy()})[0], record


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"])
def test_onnx_matches_the_eager_network(export_script, checkpoint, tmp_path, dynamo, demo_network):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    dst = tmp_path / "model.onnx"
    export_script.export_checkpoint(str(checkpoint), str(dst), dynamo=dynamo)
    x, t = _inputs()
    out, record = _onnx_outputs(dst, x, t)
    assert record == _record(checkpoint)
    with torch.no_grad():
        assert _max_diff(out, demo_network(0)(x, t)) <= TOL


@pytest.mark.slow
def test_ckpt_export_cli_with_the_record_file(repo_root, export_script, checkpoint, tmp_path, demo_network):
    """The documented two commands: the record as a config file, then `python -m monai.bundle ckpt_export`."""
    record, dst = tmp_path / "record.json", tmp_path / "model.ts"
    configs = [str(repo_root / "configs" / c) for c in ("inference.json", "inference_exported.json")] + [str(record)]
    commands = [
        [sys.executable, "scripts/export_checkpoint.py", str(checkpoint), "--dst", str(record)],
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "ckpt_export",
            "export_net",
            "--filepath",
            str(dst),
            "--ckpt_file",
            str(checkpoint),
            "--key_in_ckpt",
            "model",
            "--config_file",
            repr(configs),
            "--device",
            "cpu",
        ],
    ]
    for cmd in commands:
        result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    network, _ = load_exported(dst, "generation")
    x, t = _inputs(batch=1, size=8)
    with torch.no_grad():
        assert _max_diff(network(x, t), demo_network(1)(x, t)) <= TOL  # --key_in_ckpt model: the raw weights


def test_load_exported_refuses_other_weights_than_asked_for(torchscript):
    """The file records which weights it holds (EMA by default): sampling with --use_ema false is refused."""
    load_exported(torchscript, "generation", weights="ema")
    with pytest.raises(ValueError, match="holds the 'ema' weights, but 'model' were asked for"):
        load_exported(torchscript, "generation", weights="model")
