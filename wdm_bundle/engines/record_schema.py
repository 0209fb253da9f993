"""The training record's schema: its version, the closed sets and typed ranges of its keys, and comparing records.

A checkpoint's record is validated key by key (`validate_record`) before use; it never reaches a config parser.
What a record holds and where it comes from: `wdm_bundle.engines.record`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from monai.networks.schedulers.ddpm import DDPMVarianceType
from monai.utils import StrEnum

from wdm_bundle.data.transforms import Placement
from wdm_bundle.diffusion.schedulers import Diffusion, TimestepSampling
from wdm_bundle.diffusion.weighting import DEFAULT_LOSS_GAMMA, LossWeighting, TimestepDraw
from wdm_bundle.utils import plain

__all__ = [
    "RECORD_VERSION",
    "Task",
    "label_values",
    "validate_record",
    "schedule_settings",
    "objective_settings",
    "compare_records",
]

logger = logging.getLogger(__name__)

RECORD_VERSION = 1


class Task(StrEnum):
    """What a model does: ``generation`` (WDM, unconditional), ``synthesis`` (cWDM, missing contrast),
    ``inpainting`` (conditioned on a voided image and its mask), ``label_generation`` (contrasts from a tumour label
    map and a brain mask) or ``segmentation`` (a SegResNet tumour segmenter, not a diffusion model: its record is
    `wdm_bundle.engines.segmentation_record`)."""

    GENERATION = "generation"
    SYNTHESIS = "synthesis"
    INPAINTING = "inpainting"
    LABEL_GENERATION = "label_generation"
    SEGMENTATION = "segmentation"


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DDPM_KEYS = ("num_train_timesteps", "schedule", "beta_start", "beta_end", "variance_type")
_RFLOW_KEYS = ("num_train_timesteps", "timestep_sampling", "timestep_loc", "timestep_scale")
_SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")
#: The DDPM objective options (`wdm_bundle.diffusion.weighting`), optional in a record; absent: the defaults.
OBJECTIVE_DEFAULTS = {
    "loss_weighting": LossWeighting.UNIFORM.value,
    "loss_gamma": DEFAULT_LOSS_GAMMA,
    "ddpm_timestep_draw": TimestepDraw.UNIFORM.value,
    "ddpm_timestep_loc": 0.0,
    "ddpm_timestep_scale": 1.0,
}


def _size(value: Any, what: str, allow_none: bool = True) -> list[int] | None:
    if value is None and allow_none:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in value)
    ):
        raise ValueError(
            f"{what} must be 3 integers in [1, 4096]{' or null' if allow_none else ''}, got {value!r:.80}."
        )
    return [int(v) for v in value]


def _pair(value: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> list[float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        or not lo <= value[0] < value[1] <= hi
    ):
        raise ValueError(f"{what} must be 2 increasing finite numbers in [{lo}, {hi}], got {value!r:.80}.")
    return [float(v) for v in value]


def _number(value: Any, what: str, lo: float, hi: float, integer: bool = False) -> float | int:
    kind = (int,) if integer else (int, float)
    if not isinstance(value, kind) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{what} must be a{'n integer' if integer else ' number'} in [{lo}, {hi}], got {value!r:.80}.")
    return int(value) if integer else float(value)


def _spacing(value: Any, what: str) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"{what} must be 3 voxel sizes in mm or null, got {value!r:.80}.")
    return [_number(v, what, 1e-6, 1e6) for v in value]


def _choice(value: Any, what: str, allowed: Sequence[str], allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}{' or null' if allow_none else ''}, got {value!r:.80}.")
    return str(value)


def _name(value: Any, what: str, allow_none: bool = True) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{what} must be a name of letters, digits, '_', '.', '-' (at most 64), got {value!r:.80}.")
    return value


def label_values(value: Any, what: str = "labels", allow_none: bool = True) -> list[int] | None:
    """The label values of a label map (1 to 16 distinct integers in [1, 255], background 0 implied), checked."""
    if value is None and allow_none:
        return None
    if (
        not isinstance(value, (list, tuple))
        or not 1 <= len(value) <= 16
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 255 for v in value)
        or len(set(value)) != len(value)
    ):
        raise ValueError(f"{what} must be 1 to 16 distinct integers in [1, 255], got {value!r:.80}.")
    return [int(v) for v in value]


def _objective(r: Mapping[str, Any], diffusion: str) -> dict[str, Any]:
    """The DDPM objective options a record holds, checked (optional keys: records of default runs and records
    written before the options existed have none)."""
    checks = {
        "loss_weighting": lambda v: _choice(v, "loss_weighting", [w.value for w in LossWeighting]),
        "loss_gamma": lambda v: _number(v, "loss_gamma", 1e-6, 1e6),
        "ddpm_timestep_draw": lambda v: _choice(v, "ddpm_timestep_draw", [d.value for d in TimestepDraw]),
        "ddpm_timestep_loc": lambda v: _number(v, "ddpm_timestep_loc", -100.0, 100.0),
        "ddpm_timestep_scale": lambda v: _number(v, "ddpm_timestep_scale", 1e-6, 100.0),
    }
    out = {k: check(r[k]) for k, check in checks.items() if k in r}
    custom = [f"{k}={out[k]!r}" for k in ("loss_weighting", "ddpm_timestep_draw") if out.get(k, "uniform") != "uniform"]
    if custom and diffusion != Diffusion.DDPM:
        raise ValueError(f"{', '.join(custom)} are DDPM training options, not of diffusion={diffusion!r}.")
    return out


def validate_record(record: Any, source: str = "the record") -> dict[str, Any]:
    """Check every value of a record (types, closed sets, ranges) and return a clean copy.

    Raises:
        ValueError: naming ``source``, the key and the problem; unknown keys are dropped with a warning.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"{source}: the training record must be a dict, got {type(record).__name__}.")
    r = dict(record)
    if r.get("task") == Task.SEGMENTATION:
        raise ValueError(
            f"{source} is a segmentation model (SegResNet), not a diffusion model; use it as the segmenter of "
            "configs/evaluate_downstream.json or scripts/synthetic_data_experiment.py."
        )
    try:
        version = _number(r.get("version", RECORD_VERSION), "version", 1, 10**6, integer=True)
        if version > RECORD_VERSION:
            raise ValueError(f"version {version} is newer than this bundle's ({RECORD_VERSION}); update the bundle.")
        out: dict[str, Any] = {"version": RECORD_VERSION}
        out["task"] = _choice(r.get("task"), "task", [t.value for t in Task if t != Task.SEGMENTATION])
        out["diffusion"] = _choice(r.get("diffusion"), "diffusion", [d.value for d in Diffusion])
        out["num_train_timesteps"] = _number(r.get("num_train_timesteps"), "num_train_timesteps", 1, 100000, True)
        if out["diffusion"] == Diffusion.DDPM:
            out["schedule"] = _choice(r.get("schedule"), "schedule", _SCHEDULES)
            out["beta_start"] = _number(r.get("beta_start"), "beta_start", 0.0, 1.0)
            out["beta_end"] = _number(r.get("beta_end"), "beta_end", 0.0, 1.0)
            out["variance_type"] = _choice(r.get("variance_type"), "variance_type", [v.value for v in DDPMVarianceType])
        else:
            out["timestep_sampling"] = _choice(
                r.get("timestep_sampling"), "timestep_sampling", [t.value for t in TimestepSampling]
            )
            out["timestep_loc"] = _number(r.get("timestep_loc"), "timestep_loc", -100.0, 100.0)
            out["timestep_scale"] = _number(r.get("timestep_scale"), "timestep_scale", 0.0, 100.0)
        out.update(_objective(r, out["diffusion"]))
        out["lll_scale"] = _number(r.get("lll_scale"), "lll_scale", 1e-6, 1e6)
        # records written before multi-level wavelets have none: one level, the paper's
        out["wavelet_levels"] = _number(r.get("wavelet_levels", 1), "wavelet_levels", 1, 3, integer=True)
        out["data_range"] = _pair(r.get("data_range"), "data_range", -1e6, 1e6)
        out["image_size"] = _size(r.get("image_size"), "image_size")
        out["spacing"] = _spacing(r.get("spacing"), "spacing")
        # `roi_size`: the name in records written before 0.3.0
        out["pad_crop_size"] = _size(r.get("pad_crop_size", r.get("roi_size")), "pad_crop_size")
        out["placement"] = _choice(r.get("placement"), "placement", [p.value for p in Placement])
        out["clip_percentiles"] = _pair(r.get("clip_percentiles"), "clip_percentiles", 0.0, 100.0)
        out["orientation"] = _choice(r.get("orientation"), "orientation", ["RAS", "LPS"], allow_none=True)
        out["modality"] = _name(r.get("modality") or None, "modality")
        contrasts = r.get("contrasts")
        fewest = 1 if out["task"] == Task.LABEL_GENERATION else 2  # a label-conditioned model may make one contrast
        if contrasts is not None:
            if not isinstance(contrasts, (list, tuple)) or not fewest <= len(contrasts) <= 16:
                raise ValueError(f"contrasts must be a list of {fewest} to 16 names, got {contrasts!r:.80}.")
            contrasts = [_name(c, "contrasts[]", allow_none=False) for c in contrasts]
            if len(set(contrasts)) != len(contrasts):
                raise ValueError(f"contrasts must be distinct, got {contrasts}.")
        out["contrasts"] = contrasts
        out["target_contrast"] = _choice(r.get("target_contrast"), "target_contrast", contrasts or [], allow_none=True)
        if out["task"] in (Task.SYNTHESIS, Task.LABEL_GENERATION) and contrasts is None:
            raise ValueError(f"a {out['task']} record must list its contrasts.")
        out["labels"] = label_values(r.get("labels"), allow_none=out["task"] != Task.LABEL_GENERATION)
        network = r.get("network")
        if not isinstance(network, Mapping):
            raise ValueError(f"network must be a dict of constructor arguments, got {type(network).__name__}.")
        levels = _number(network.get("wavelet_levels", 1), "network wavelet_levels", 1, 3, integer=True)
        if levels != out["wavelet_levels"]:
            raise ValueError(f"network wavelet_levels {levels} differs from wavelet_levels {out['wavelet_levels']}.")
        out["network"] = plain(network)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: invalid training record: {e}") from None
    unknown = sorted(set(r) - set(out) - {"version", "roi_size"} - set(_RFLOW_KEYS) - set(_DDPM_KEYS))
    if unknown:
        logger.warning(f"{source}: ignoring unknown training-record keys {unknown} (written by a newer bundle?).")
    return out


def schedule_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The `make_scheduler` keyword arguments that rebuild the recorded training schedule."""
    keys = _DDPM_KEYS if record["diffusion"] == Diffusion.DDPM else _RFLOW_KEYS
    return {k: record[k] for k in keys}


def objective_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The five DDPM objective options a record was trained with (``loss_weighting``, ``loss_gamma``,
    ``ddpm_timestep_draw``, ``ddpm_timestep_loc``, ``ddpm_timestep_scale``), the defaults where it has none."""
    return {k: record.get(k, v) for k, v in OBJECTIVE_DEFAULTS.items()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def compare_records(given: Mapping[str, Any], record: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: given vs recorded`` for each non-null value of ``given`` that differs from ``record``."""
    out = []
    for key, value in given.items():
        if value is None or (isinstance(value, Mapping) and not value):
            continue
        if key not in record:
            out.append(f"{prefix}{key}: {value!r} is not a recorded setting")
        elif isinstance(value, Mapping) and isinstance(record[key], Mapping):
            out += compare_records(value, record[key], f"{prefix}{key}#")
        elif not _same(plain(value), record[key]):
            out.append(f"{prefix}{key}: {plain(value)!r} given, {record[key]!r} recorded")
    return out
