"""Records of checkpoints that carry none: the bundle's former defaults (`LEGACY_RECORDS`) and the settings of
the authors' published checkpoints (`authors_record`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wdm_bundle.data.io import CONTRASTS
from wdm_bundle.engines.record_schema import Task, validate_record
from wdm_bundle.networks.wavelet_unet import PAPER_CHANNELS

__all__ = ["LEGACY_RECORDS", "authors_record"]


def _wdm_network(channels: Sequence[int], **extra: Any) -> dict[str, Any]:
    return {
        "image_channels": 1,
        "condition_channels": 0,
        "extra_channels": 0,
        "channels": list(channels),
        "num_res_blocks": 2,
        "attention_levels": None,
        "norm_num_groups": 32,
        "resblock_updown": True,
        "mid_block_attention": False,
        "lll_scale": 3.0,
        "wavelet_levels": 1,
        "space": "wavelet",
        **extra,
    }


_SCHEDULE = {
    "diffusion": "ddpm",
    "timestep_sampling": "logit-normal",
    "timestep_loc": 0.8,
    "timestep_scale": 0.8,
    "num_train_timesteps": 1000,
    "schedule": "linear_beta",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "variance_type": "fixed_large",
    "lll_scale": 3.0,
    "wavelet_levels": 1,
    "clip_percentiles": [0.1, 99.9],
}
_BRATS = list(CONTRASTS)

#: What a checkpoint without a record is assumed to be: the bundle's training defaults before records
#: (cWDM then framed symmetrically, as MONAI pads), sampled with the reference's fixed-large variance.
LEGACY_RECORDS: dict[str, dict[str, Any]] = {
    Task.GENERATION: {
        **_SCHEDULE,
        "version": 1,
        "task": "generation",
        "data_range": [-1.0, 1.0],
        "image_size": [128, 128, 128],
        "spacing": [2.0, 2.0, 2.0],  # the former inference default
        "pad_crop_size": [256, 256, 256],
        "placement": "symmetric",
        "orientation": "RAS",
        "modality": "t1n",
        "contrasts": None,
        "target_contrast": None,
        "network": _wdm_network(PAPER_CHANNELS[128]),
    },
    Task.SYNTHESIS: {
        **_SCHEDULE,
        "version": 1,
        "task": "synthesis",
        "data_range": [0.0, 1.0],
        "image_size": [224, 224, 160],
        "pad_crop_size": [224, 224, 160],
        "placement": "symmetric",
        "orientation": None,
        "modality": None,
        "contrasts": _BRATS,
        "target_contrast": None,
        "network": _wdm_network(PAPER_CHANNELS[128], condition_channels=4, extra_channels=4),
    },
}


def authors_record(config: str, target_contrast: str | None = None) -> dict[str, Any]:
    """The record of a published checkpoint of reference configuration ``config`` (ARCHITECTURE.md §0, §5).

    WDM: images in [-1, 1] framed symmetrically into 256^3 (then pooled to 128^3), no reorientation.
    cWDM: one model per ``target_contrast``, images in [0, 1], padded at the end to 240x240x160 and
    cropped to 224x224x160. Both: linear betas 1e-4 -> 0.02, T = 1000, x0 prediction, fixed-large
    variance, LLL / 3, 0.1/99.9 percentile clipping.
    """
    from wdm_bundle.networks.reference_checkpoint import REFERENCE_CONFIGS, build_reference_network

    if config not in REFERENCE_CONFIGS:
        raise ValueError(f"config must be one of {sorted(REFERENCE_CONFIGS)}, got {config!r}.")
    network = build_reference_network(config, device="meta").config
    size = list(REFERENCE_CONFIGS[config].image_size)
    if config.startswith("cwdm"):
        if target_contrast not in _BRATS:
            raise ValueError(f"a cWDM checkpoint synthesises one contrast: pass --target_contrast, one of {_BRATS}.")
        record = {
            **_SCHEDULE,
            "task": "synthesis",
            "data_range": [0.0, 1.0],
            "image_size": size,
            "pad_crop_size": size,
            "placement": "end",
            "orientation": None,
            "modality": None,
            "contrasts": _BRATS,
            "target_contrast": target_contrast,
            "network": network,
        }
    else:
        record = {
            **_SCHEDULE,
            "task": "generation",
            "data_range": [-1.0, 1.0],
            "image_size": size,
            "spacing": [256.0 / s for s in size],  # BraTS 1 mm, framed into 256^3
            "pad_crop_size": [256, 256, 256],
            "placement": "symmetric",
            "orientation": None,
            "modality": None,
            "contrasts": None,
            "target_contrast": None,
            "network": network,
        }
    return validate_record(record, f"the authors' '{config}' settings")
