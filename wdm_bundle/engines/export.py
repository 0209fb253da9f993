"""The denoiser as an exported file: tracing it (TorchScript/ONNX) and loading a TorchScript file back for sampling.

The exported file holds `WaveletDiffusionUNet.forward(image, timesteps)` (MONAI's `DiffusionModelUNet` cannot be
scripted, so it is traced) and the training record as JSON; the Haar coder has no weights and is rebuilt from
the record. Writing files: ``scripts/export_checkpoint.py``; sampling: ``configs/inference_exported.json``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wdm_bundle.engines.record import recorded_network
from wdm_bundle.engines.record_schema import compare_records, validate_record

__all__ = ["RECORD_FILE", "ONNX_RECORD_KEY", "trace_network", "load_exported", "ExportedDenoiser", "example_inputs"]

#: Name of the training record inside a TorchScript file (an extra file) and of the JSON `--to record` writes.
RECORD_FILE = "record.json"
#: Metadata key of the training record inside an ONNX file.
ONNX_RECORD_KEY = "wdm_bundle.record"


def example_inputs(network: nn.Module, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of one at a small valid coefficient grid (twice the network's size multiple) and its timestep."""
    size = 2 * network.image_size_multiple // network.wavelet.scale
    x = torch.randn(1, network.in_channels, size, size, size, device=device)
    return x, torch.full((1,), 999, dtype=torch.long, device=device)


def trace_network(record: Mapping[str, Any], device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The recorded network's forward ``(image, timesteps) -> pred``, traced on ``device`` with untrained weights.

    ``monai.bundle ckpt_export`` then loads the trained weights into it (its ``export_net`` in
    ``configs/inference_exported.json``). The trace holds no size: any batch and any valid grid run through it.
    """
    network = recorded_network(record).to(device).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of shape checks (constant for a given rank)
        return torch.jit.trace(network, example_inputs(network, device), check_trace=False)  # tests compare


class ExportedDenoiser(nn.Module):
    """Calls a traced ``(image, timesteps)`` network with the backbone convention ``(x, timesteps, context)``."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            raise ValueError("the exported network takes no cross-attention context.")
        return self.module(x, timesteps)


def _traced_devices(module: torch.jit.ScriptModule) -> set[str]:
    """Device types fixed in the traced graph (tensors the forward creates, e.g. the timestep embedding)."""
    nodes = module.inlined_graph.nodes()
    return {
        torch.device(str(n.output().toIValue())).type
        for n in nodes
        if n.kind() == "prim::Constant" and n.output().type().kind() == "DeviceObjType"
    }


def load_exported(
    path: str | Path,
    task: str,
    given: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    weights: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The network and training record of a TorchScript file written by ``export_checkpoint --to torchscript``.

    The network is the `WaveletDiffusionUNet` of the record (Haar coder, size checks) around the traced
    denoiser, on ``device``; the record is validated as a checkpoint's is.

    Args:
        task: ``generation`` or ``synthesis``: what the config runs; a file of the other task is refused.
        given: config values of recorded settings (None = as recorded); one that differs is refused.
        weights: ``ema`` or ``model``: the weights the config asks for (``use_ema``); a file that records other
            weights is refused.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: no or an invalid record, another task, a contradiction, or a file traced for another device.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported network '{path}' does not exist; export it first (docs/README.md § Export).")
    extra = {RECORD_FILE: ""}
    module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    if not extra[RECORD_FILE]:
        raise ValueError(
            f"'{path}' holds no {RECORD_FILE}: export it with scripts/export_checkpoint.py, or give "
            f"ckpt_export the record written by `--to record` in its --config_file list."
        )
    content = json.loads(extra[RECORD_FILE])
    record = validate_record(content.get("record"), f"'{path}'")
    if weights is not None and content.get("weights") not in (None, weights):
        raise ValueError(
            f"'{path}' holds the '{content['weights']}' weights, but '{weights}' were asked for (use_ema); "
            f"export them with --key {weights}, or sample with --use_ema {str(content['weights'] == 'ema').lower()}."
        )
    if record["task"] != task:
        raise ValueError(f"'{path}' is a {record['task']} model, but this config runs {task}.")
    problems = compare_records(dict(given or {}), record)
    if problems:
        raise ValueError(
            f"the config contradicts the training record inside '{path}': {'; '.join(problems)}. "
            "These settings are read from the exported file: drop them from the command line/config."
        )
    traced_on = _traced_devices(module) - {torch.device(device).type}
    if traced_on:
        raise ValueError(
            f"'{path}' was traced on {sorted(traced_on)} and runs there only; export it again with "
            f"--device {device}, or sample with --device {sorted(traced_on)[0]}."
        )
    with torch.device("meta"):  # the shell's own backbone is replaced, so never allocated
        network = recorded_network(record)
    network.backbone = ExportedDenoiser(module)
    return network.to(device).eval(), {**record, "assumed": False}
