"""Export bundle weights: to the authors' reference layout, to TorchScript or ONNX, or the training record as JSON.

Runs from the repository root without installing the package; the format follows ``--dst``'s extension
(``--to`` names it)::

    python scripts/export_checkpoint.py models/model.pt --dst brats_unet_128_export.pt  # reference state_dict
    python scripts/export_checkpoint.py models/model.pt --dst models/model.ts           # TorchScript + record
    python scripts/export_checkpoint.py models/model.pt --dst models/model.onnx         # ONNX + record
    python scripts/export_checkpoint.py models/model.pt --dst models/record.json        # the record alone

The TorchScript and ONNX files hold the denoiser: `WaveletDiffusionUNet.forward(image, timesteps)` on wavelet
coefficients, traced (MONAI's `DiffusionModelUNet` cannot be scripted). The Haar transform has no weights: it
is rebuilt from the training record, which both files carry as JSON (TorchScript: the extra file
``record.json``, beside the ``metadata.json`` and configs that ``monai.bundle ckpt_export`` embeds; ONNX: the
metadata entry ``wdm_bundle.record``). `wdm_bundle.engines.export.load_exported` reads a TorchScript file back
for ``configs/inference_exported.json``. A traced file runs on the device type it was exported on.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # repo root, for `wdm_bundle`

import fire  # noqa: E402
import torch  # noqa: E402

from wdm_bundle.engines import load_record, load_weights, read_record, recorded_network  # noqa: E402
from wdm_bundle.engines.export import ONNX_RECORD_KEY, RECORD_FILE, example_inputs  # noqa: E402
from wdm_bundle.networks.reference_checkpoint import export_checkpoint_file  # noqa: E402

__all__ = ["export_checkpoint"]

#: The inference config each task's TorchScript file embeds, with configs/inference_exported.json.
_BASE_CONFIGS = {"generation": "inference.json", "synthesis": "inference_cwdm.json"}
_SUFFIXES = {".pt": "reference", ".pth": "reference", ".ts": "torchscript", ".onnx": "onnx", ".json": "record"}


def _checkpoint_record(src: str | Path) -> dict[str, Any]:
    """The checkpoint's record as sampling reads it (`load_record`: what older records lack filled in)."""
    record = read_record(src)
    if record is None:
        raise ValueError(
            f"'{src}' holds no training record, so an exported file could not say how to sample it; "
            "re-save the weights with a record (bundle training writes one) before exporting."
        )
    return {k: v for k, v in load_record(src, record["task"]).items() if k != "assumed"}


def _write_record(src: str | Path, dst: Path, key: str) -> dict[str, Any]:
    record = _checkpoint_record(src)
    dst.write_text(json.dumps({"record": record, "weights": key}, indent=4) + "\n")
    return record


def _export_torchscript(src: str | Path, dst: Path, key: str, device: str) -> dict[str, Any]:
    """`monai.bundle.ckpt_export` of ``export_net``, with the checkpoint's record as the config file ``record.json``."""
    from monai.bundle import ckpt_export

    with tempfile.TemporaryDirectory() as tmp:
        record_file = Path(tmp) / RECORD_FILE
        record = _write_record(src, record_file, key)
        configs = [ROOT / "configs" / _BASE_CONFIGS[record["task"]], ROOT / "configs" / "inference_exported.json"]
        ckpt_export(
            net_id="export_net",
            filepath=str(dst),
            ckpt_file=str(src),
            meta_file=str(ROOT / "configs" / "metadata.json"),
            config_file=[str(c) for c in configs] + [str(record_file)],
            key_in_ckpt=key,
            device=device,
        )
    return record


def _export_onnx(src: str | Path, dst: Path, key: str, dynamo: bool, opset: int | None) -> dict[str, Any]:
    """``torch.onnx.export`` of the network with ``key`` weights, inputs ``image``/``timesteps``, output ``pred``."""
    import onnx

    record = _checkpoint_record(src)
    network = load_weights(recorded_network(record), src, key).eval()
    axes = {0: "batch", 2: "depth", 3: "height", 4: "width"}
    kwargs: dict[str, Any] = {"dynamic_axes": {"image": axes, "timesteps": {0: "batch"}, "pred": axes}}
    if dynamo:
        batch, auto = torch.export.Dim("batch"), torch.export.Dim.AUTO
        kwargs = {"dynamic_shapes": {"x": {0: batch, 2: auto, 3: auto, 4: auto}, "timesteps": {0: batch}}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            example_inputs(network),
            str(dst),
            input_names=["image", "timesteps"],
            output_names=["pred"],
            opset_version=opset,
            dynamo=dynamo,
            external_data=False,
            **kwargs,
        )
    model = onnx.load(str(dst))
    model.metadata_props.add(key=ONNX_RECORD_KEY, value=json.dumps(record))
    onnx.save(model, str(dst))
    return record


def export_checkpoint(
    src: str,
    dst: str,
    key: str = "ema",
    config: str | None = None,
    overwrite: bool = False,
    to: str | None = None,
    device: str = "cpu",
    dynamo: bool = False,
    opset: int | None = None,
) -> str:
    """Export the ``key`` weights of bundle file ``src`` to ``dst``, in the format ``to`` (default: by extension).

    * ``reference`` (``.pt``, ``.pth``): a bare reference ``state_dict`` that the authors' ``UNetModel`` /
      ``WavUNetModel`` loads with ``load_state_dict(torch.load(dst), strict=True)``; the network must be a
      `WaveletDiffusionUNet` around a reference backbone (`WDMUNet` or `WavUNet` in a published configuration).
    * ``torchscript`` (``.ts``): ``monai.bundle ckpt_export`` of the traced denoiser, with ``metadata.json``, the
      inference configs and the training record (``record.json``) inside; ``configs/inference_exported.json``
      samples from it. Runs on the device type of ``--device`` only: export where you deploy.
    * ``onnx`` (``.onnx``): the denoiser (inputs ``image``, ``timesteps``; output ``pred``; batch and grid
      dynamic), the record in the metadata entry ``wdm_bundle.record``. ``--dynamo true`` uses PyTorch's
      ``torch.export``-based exporter (needs onnxscript) instead of the TorchScript-based one.
    * ``record`` (``.json``): the training record as a config file (``{"record": ...}``): add it to the
      ``--config_file`` list of ``python -m monai.bundle ckpt_export`` to embed it yourself.

    Refuses to overwrite ``dst`` unless ``--overwrite true``.

    Example::

        python scripts/export_checkpoint.py models/model.pt --dst brats_unet_128_export.pt
        python scripts/export_checkpoint.py models/model.pt --dst raw.pt --key model --config wdm_unet_128
        python scripts/export_checkpoint.py models/model.pt --dst models/model.ts --device cuda:0

    Args:
        src: bundle weight file (``{"model", "ema", "record", ...}``); ``reference`` also takes a bare state_dict.
        dst: file to write.
        key: ``ema`` (default) or ``model``.
        config: ``reference`` only: one of wdm_unet_128, wdm_unet_256, wdm_wavunet_128, wdm_wavunet_256,
            cwdm_unet; default: detected.
        overwrite: replace an existing ``dst``.
        to: ``reference``, ``torchscript``, ``onnx`` or ``record``; default: from ``dst``'s extension.
        device: ``torchscript`` only: where the network is traced, and so where the file runs.
        dynamo: ``onnx`` only: the ``torch.export``-based exporter.
        opset: ``onnx`` only: ONNX opset version (default: PyTorch's).

    Returns:
        The reference configuration name (``reference``), else the exported task (generation or synthesis).
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    to = to or _SUFFIXES.get(Path(dst).suffix.lower())
    if to not in set(_SUFFIXES.values()):
        raise ValueError(
            f"--to must be one of {sorted(set(_SUFFIXES.values()))} (or --dst end in one of "
            f"{sorted(_SUFFIXES)}), got to={to!r}, dst='{dst}'."
        )
    if to == "reference":
        return export_checkpoint_file(src, dst, key=key, config=config, overwrite=overwrite)
    out = Path(dst)
    if out.exists() and not overwrite:
        raise FileExistsError(f"'{out}' exists; pass --overwrite true to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    if to == "record":
        record = _write_record(src, out, key)
    elif to == "torchscript":
        record = _export_torchscript(src, out, key, device)
    else:
        record = _export_onnx(src, out, key, dynamo, opset)
    return record["task"]


if __name__ == "__main__":
    fire.Fire(export_checkpoint)
