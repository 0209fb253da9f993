"""Import and export the published WDM / cWDM checkpoints (reference layout <-> bundle layout).

A published checkpoint is a bare ``state_dict`` of the reference ``UNetModel`` /
``WavUNetModel``. The reference backbones here (`WDMUNet`, `WavUNet`) use the same parameter
names, so the mapping is only the wrapper prefix: reference ``<key>`` <-> bundle
``backbone.<key>`` of a `WaveletDiffusionUNet`. Everything else is checking: the configuration
is detected from the keys and shapes (or given), every source key must be used and every target
key filled, with matching shapes, and the shared decoder blocks of the WavU-Net (listed twice in
its state_dict) must hold equal copies.

Bundle weight files are ``{"model": state_dict, "ema": state_dict, "iteration": int}``; an
import sets both "model" and "ema" to the published weights (the reference keeps no EMA).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wdm_bundle.engines.checkpoint_files import atomic_save
from wdm_bundle.networks.reference_unet import SkipMode, WDMUNet
from wdm_bundle.networks.wavelet_unet import PAPER_CHANNELS, WaveletDiffusionUNet
from wdm_bundle.networks.wavunet import WavUNet
from wdm_bundle.utils import torch_load

__all__ = [
    "ReferenceConfig",
    "REFERENCE_CONFIGS",
    "PUBLISHED_FILES",
    "BACKBONE_PREFIX",
    "ReferenceCheckpointError",
    "KeyReport",
    "build_reference_network",
    "reference_shapes",
    "compare_keys",
    "detect_reference_config",
    "import_reference_state_dict",
    "export_reference_state_dict",
    "import_checkpoint_file",
    "export_checkpoint_file",
]

logger = logging.getLogger(__name__)

#: Prefix of the backbone's keys in the `WaveletDiffusionUNet` state_dict.
BACKBONE_PREFIX = "backbone."
_LEVELS_128 = PAPER_CHANNELS[128]
_LEVELS_256 = PAPER_CHANNELS[256]


@dataclass(frozen=True)
class ReferenceConfig:
    """One published network configuration.

    Args:
        name: our name (``wdm_unet_128``, ...); ``reference_name`` is the run.sh ``MODEL``.
        backbone: `WDMUNet` or `WavUNet`.
        kwargs: its constructor arguments.
        condition_channels: condition images of the `WaveletDiffusionUNet` wrapper (cWDM: 3).
        image_size: image size (D, H, W) the model was trained at (wavelet grid = half of it).
    """

    name: str
    reference_name: str
    backbone: type[nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    condition_channels: int = 0
    image_size: tuple[int, int, int] = (128, 128, 128)

    def build_backbone(self) -> nn.Module:
        return self.backbone(**self.kwargs)


REFERENCE_CONFIGS: dict[str, ReferenceConfig] = {
    c.name: c
    for c in (
        ReferenceConfig("wdm_unet_128", "ours_unet_128", WDMUNet, {"channels": _LEVELS_128, "skip_mode": SkipMode.ADD}),
        ReferenceConfig(
            "wdm_unet_256",
            "ours_unet_256",
            WDMUNet,
            {"channels": _LEVELS_256, "skip_mode": SkipMode.ADD},
            image_size=(256, 256, 256),
        ),
        ReferenceConfig("wdm_wavunet_128", "ours_wnet_128", WavUNet, {"channels": _LEVELS_128}),
        ReferenceConfig(
            "wdm_wavunet_256", "ours_wnet_256", WavUNet, {"channels": _LEVELS_256}, image_size=(256, 256, 256)
        ),
        ReferenceConfig(
            "cwdm_unet",
            "cwdm",
            WDMUNet,
            {"in_channels": 32, "channels": _LEVELS_128, "skip_mode": SkipMode.CONCAT},
            condition_channels=3,
            image_size=(224, 224, 160),
        ),
    )
}

#: LFS sha256 of the published files (HuggingFace ``pfriedri/wdm-3d``) -> (file name, config).
PUBLISHED_FILES: dict[str, tuple[str, str]] = {
    "01346a0ab8e406c0cbe7be43d383dffd3885c212b36ecd2aa8c315f54cc73d48": ("brats_unet_128_1200k.pt", "wdm_unet_128"),
    "6339773bb7051454c434fd06460fba77fdbbc35c98e2c4d1491beb793f01fd75": ("lidc-idri_unet_128_1200k.pt", "wdm_unet_128"),
}


class ReferenceCheckpointError(ValueError):
    """A checkpoint does not fit a reference configuration; the message lists the keys."""


@dataclass
class KeyReport:
    """Key-by-key comparison of a state_dict with the expected keys and shapes."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # "key: checkpoint (shape) vs expected (shape)"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def num_errors(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def format(self, limit: int = 40) -> str:
        def _list(title: str, keys: list[str]) -> str:
            shown = "".join(f"\n    {k}" for k in keys[:limit])
            more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
            return f"\n  {title} ({len(keys)}):{shown}{more}" if keys else f"\n  {title}: none"

        return (
            _list("missing keys", self.missing)
            + _list("unexpected keys", self.unexpected)
            + _list("shape mismatches (checkpoint vs expected)", self.mismatched)
        )


def _get_config(config: str) -> ReferenceConfig:
    if config not in REFERENCE_CONFIGS:
        raise ValueError(f"--config must be one of {sorted(REFERENCE_CONFIGS)}, got {config!r}.")
    return REFERENCE_CONFIGS[config]


def build_reference_network(config: str, device: torch.device | str | None = None) -> WaveletDiffusionUNet:
    """The bundle network (`WaveletDiffusionUNet` around the reference backbone) of ``config``.

    ``device="meta"`` builds it without allocating or initialising weights.
    """
    cfg = _get_config(config)
    with torch.device(device) if device is not None else nullcontext():
        return WaveletDiffusionUNet(
            image_channels=1, condition_channels=cfg.condition_channels, backbone=cfg.build_backbone()
        )


@lru_cache(maxsize=None)
def _meta_backbone(config: str) -> nn.Module:
    with torch.device("meta"):
        return _get_config(config).build_backbone()


def reference_shapes(config: str) -> dict[str, tuple[int, ...]]:
    """Reference state_dict keys of ``config`` (in order) and their shapes."""
    return {k: tuple(v.shape) for k, v in _meta_backbone(config).state_dict().items()}


def _shared_key_groups(config: str) -> list[list[str]]:
    """Groups of state_dict keys that are one parameter (the WavU-Net's shared decoder blocks)."""
    groups: dict[int, list[str]] = {}
    for name, p in _meta_backbone(config).named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def compare_keys(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> KeyReport:
    """Missing, unexpected and shape-mismatched keys of ``state`` against ``expected`` shapes."""
    return KeyReport(
        missing=[k for k in expected if k not in state],
        unexpected=[k for k in state if k not in expected],
        mismatched=[
            f"{k}: {tuple(state[k].shape)} vs {expected[k]}"
            for k in expected
            if k in state and tuple(state[k].shape) != expected[k]
        ],
    )


def _check_tensors(state: Any, what: str) -> None:
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kind = f"keys {sorted(map(str, state))[:10]}" if isinstance(state, Mapping) else type(state).__name__
        hint = (
            " It looks like a bundle checkpoint ({'model', 'ema', ...}); use scripts/export_checkpoint.py "
            "for the other direction."
            if isinstance(state, Mapping) and "model" in state
            else ""
        )
        raise ReferenceCheckpointError(f"{what} is not a state_dict of tensors ({kind}).{hint}")


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a leading ``module.`` (DataParallel/DDP) from every key if all keys have it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def detect_reference_config(state: Mapping[str, torch.Tensor]) -> str:
    """Name of the configuration whose keys and shapes ``state`` (reference layout) matches exactly.

    Raises:
        ReferenceCheckpointError: no exact match; the message compares with the closest config.
    """
    reports = {name: compare_keys(state, reference_shapes(name)) for name in REFERENCE_CONFIGS}
    exact = [name for name, r in reports.items() if r.ok]
    if exact:
        return exact[0]
    closest = min(reports, key=lambda n: reports[n].num_errors)
    raise ReferenceCheckpointError(
        f"the checkpoint ({len(state)} keys) matches none of the reference configurations "
        f"{sorted(REFERENCE_CONFIGS)}; compared with the closest, '{closest}':{reports[closest].format()}"
    )


def _check_against(state: Mapping[str, torch.Tensor], config: str | None, what: str) -> str:
    if config is None:
        return detect_reference_config(state)
    report = compare_keys(state, reference_shapes(_get_config(config).name))
    if not report.ok:
        raise ReferenceCheckpointError(f"{what} does not match config '{config}':{report.format()}")
    return config


def _check_shared_copies(state: Mapping[str, torch.Tensor], config: str) -> None:
    for group in _shared_key_groups(config):
        differ = [k for k in group[1:] if not torch.equal(state[k], state[group[0]])]
        if differ:
            raise ReferenceCheckpointError(
                f"{group[0]} and {', '.join(differ)} are one shared module in '{config}' but hold different tensors."
            )


def import_reference_state_dict(
    state: Mapping[str, torch.Tensor], config: str | None = None
) -> tuple[str, dict[str, torch.Tensor]]:
    """Reference state_dict -> (config name, `WaveletDiffusionUNet` state_dict with every key filled).

    Args:
        state: the published ``state_dict`` (a leading ``module.`` is stripped).
        config: a `REFERENCE_CONFIGS` name, or None to detect it from the keys and shapes.

    Raises:
        ReferenceCheckpointError: missing, unexpected or mis-shaped keys (listed), or unequal
            copies of a shared module.
    """
    _check_tensors(state, "the checkpoint")
    state = _strip_module_prefix(state)
    config = _check_against(state, config, "the checkpoint")
    _check_shared_copies(state, config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    network = build_reference_network(config, device="meta")
    network.backbone.load_state_dict(state, strict=True, assign=True)
    target = network.state_dict()
    unfilled = [k for k, v in target.items() if v.is_meta]  # e.g. a wrapper key outside the backbone
    if unfilled:
        raise ReferenceCheckpointError(f"keys of the bundle network left unfilled by the checkpoint: {unfilled}")
    return config, target


def export_reference_state_dict(
    state: Mapping[str, torch.Tensor], config: str | None = None
) -> tuple[str, OrderedDict[str, torch.Tensor]]:
    """`WaveletDiffusionUNet` state_dict -> (config name, reference state_dict in reference key order).

    Raises:
        ReferenceCheckpointError: keys outside ``backbone.``, or backbone keys that do not fit.
    """
    _check_tensors(state, "the bundle weights")
    outside = [k for k in state if not k.startswith(BACKBONE_PREFIX)]
    backbone = {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    config = _check_against(backbone, config, "the bundle weights' backbone")
    if outside:
        raise ReferenceCheckpointError(f"the bundle weights hold keys the reference has no place for: {outside}")
    _check_shared_copies(backbone, config)
    return config, OrderedDict((k, backbone[k].detach().contiguous()) for k in reference_shapes(config))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_paths(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool) -> tuple[Path, Path]:
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint '{src}' does not exist.")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"'{dst}' already exists; pass --overwrite true to replace it.")
    if dst.resolve() == src.resolve():
        raise ValueError(f"source and destination are the same file '{src}'.")
    return src, dst


def import_checkpoint_file(
    src: str | os.PathLike,
    dst: str | os.PathLike = "models/model.pt",
    config: str | None = None,
    iteration: int = 0,
    overwrite: bool = False,
    target_contrast: str | None = None,
) -> str:
    """Published checkpoint ``src`` -> bundle weight file ``dst`` ("model" = "ema" = the weights).

    The file also holds the authors' training record (`wdm_bundle.engines.authors_record`: schedule,
    variance, data range, framing, network...), so inference needs no other setting, and
    ``"reference": {"config", "source", "sha256"}``. A cWDM checkpoint synthesises one contrast:
    ``target_contrast`` (t1n, t1c, t2w or t2f) is required for it. Returns the config name.
    """
    from wdm_bundle.engines.known_records import authors_record

    if config is not None:
        _get_config(config)  # a wrong name fails before a large file is read
        if config.startswith("cwdm"):
            authors_record(config, target_contrast)  # a missing or wrong target fails before the file is read
    src, dst = _check_paths(src, dst, overwrite)
    sha = _sha256(src)
    state = torch_load(src)  # errors name the file
    config, weights = import_reference_state_dict(state, config)
    known = PUBLISHED_FILES.get(sha)
    if known:
        logger.info(f"'{src}' is the published file {known[0]} (sha256 {sha}).")
        if known[1] != config:
            logger.warning(f"the published file {known[0]} is '{known[1]}', imported as '{config}'.")
    record = authors_record(config, target_contrast if config.startswith("cwdm") else None)
    atomic_save(
        {
            "model": weights,
            "ema": weights,
            "iteration": int(iteration),
            "diffusion": record["diffusion"],
            "record": record,
            "reference": {"config": config, "source": src.name, "sha256": sha},
        },
        dst,
    )
    logger.info(f"imported '{src}' ({config}, {len(weights)} tensors) to '{dst}'.")
    return config


def export_checkpoint_file(
    src: str | os.PathLike, dst: str | os.PathLike, key: str = "ema", config: str | None = None, overwrite: bool = False
) -> str:
    """Bundle weight file ``src`` (its ``key`` weights, or a bare state_dict) -> reference state_dict ``dst``.

    Returns the config name.
    """
    if config is not None:
        _get_config(config)
    src, dst = _check_paths(src, dst, overwrite)
    ckpt = torch_load(src)
    if isinstance(ckpt, Mapping) and ckpt.get("diffusion", "ddpm") != "ddpm":
        raise ValueError(
            f"'{src}' was trained with diffusion='{ckpt['diffusion']}'; the reference code samples "
            "x0-predicting DDPM models only, so it would misread these weights."
        )
    if isinstance(ckpt, Mapping) and ("model" in ckpt or "ema" in ckpt):
        if key not in ckpt:
            raise KeyError(f"'{src}' has no '{key}' weights; it holds {sorted(ckpt)}. Pass --key model or --key ema.")
        ckpt = ckpt[key]
    config, state = export_reference_state_dict(ckpt, config)
    atomic_save(state, dst)
    logger.info(f"exported '{src}' ({config}) to '{dst}' in the reference layout.")
    return config
