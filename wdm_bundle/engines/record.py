"""The training record: every setting the weights depend on, stored with them and read back by inference.

A record is a flat dict of plain values (loadable with ``weights_only=True``) whose keys are the
config keys of the same settings, so that an inference config can name a setting to check it:

* schedule: ``diffusion``, ``num_train_timesteps``, ``schedule``, ``beta_start``, ``beta_end``,
  ``variance_type`` (DDPM family) or ``timestep_sampling``/``timestep_loc``/``timestep_scale`` (RFlow);
* space: ``lll_scale``, ``data_range``, ``image_size`` (what the network was trained on);
* data: ``roi_size``, ``placement`` (pad/crop framing), ``clip_percentiles`` (intensity
  normalisation), ``orientation``, ``modality`` (WDM) or ``contrasts``/``target_contrast`` (cWDM);
* ``network``: `WaveletDiffusionUNet.config`, from which `WaveletDiffusionUNet.from_config` rebuilds it.

A checkpoint without a record (written before records existed) still loads: the bundle's former
defaults are assumed, with a warning. A checkpoint's content is validated key by key against
closed sets and typed ranges before use; it never reaches a config parser.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.networks.schedulers import Scheduler
from monai.networks.schedulers.ddpm import DDPMVarianceType
from monai.utils import StrEnum
from torch import nn

from wdm_bundle.data.transforms import Placement
from wdm_bundle.diffusion.inferer import unwrap_model
from wdm_bundle.diffusion.schedulers import Diffusion
from wdm_bundle.networks.wavelet_unet import PAPER_CHANNELS, WaveletDiffusionUNet
from wdm_bundle.utils import plain, torch_load

__all__ = [
    "Task",
    "RECORD_VERSION",
    "training_record",
    "validate_record",
    "read_record",
    "load_record",
    "compare_records",
    "authors_record",
    "schedule_settings",
    "recorded_network",
    "LEGACY_RECORDS",
]

logger = logging.getLogger(__name__)

RECORD_VERSION = 1


class Task(StrEnum):
    """What a model does: ``generation`` (WDM, unconditional) or ``synthesis`` (cWDM, missing contrast)."""

    GENERATION = "generation"
    SYNTHESIS = "synthesis"


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DDPM_KEYS = ("num_train_timesteps", "schedule", "beta_start", "beta_end", "variance_type")
_RFLOW_KEYS = ("num_train_timesteps", "timestep_sampling", "timestep_loc", "timestep_scale")
_SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")


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


def validate_record(record: Any, source: str = "the record") -> dict[str, Any]:
    """Check every value of a record (types, closed sets, ranges) and return a clean copy.

    Raises:
        ValueError: naming ``source``, the key and the problem; unknown keys are dropped with a warning.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"{source}: the training record must be a dict, got {type(record).__name__}.")
    r = dict(record)
    try:
        version = _number(r.get("version", RECORD_VERSION), "version", 1, 10**6, integer=True)
        if version > RECORD_VERSION:
            raise ValueError(f"version {version} is newer than this bundle's ({RECORD_VERSION}); update the bundle.")
        out: dict[str, Any] = {"version": RECORD_VERSION}
        out["task"] = _choice(r.get("task"), "task", [t.value for t in Task])
        out["diffusion"] = _choice(r.get("diffusion"), "diffusion", [d.value for d in Diffusion])
        out["num_train_timesteps"] = _number(r.get("num_train_timesteps"), "num_train_timesteps", 1, 100000, True)
        if out["diffusion"] == Diffusion.DDPM:
            out["schedule"] = _choice(r.get("schedule"), "schedule", _SCHEDULES)
            out["beta_start"] = _number(r.get("beta_start"), "beta_start", 0.0, 1.0)
            out["beta_end"] = _number(r.get("beta_end"), "beta_end", 0.0, 1.0)
            out["variance_type"] = _choice(r.get("variance_type"), "variance_type", [v.value for v in DDPMVarianceType])
        else:
            out["timestep_sampling"] = _choice(
                r.get("timestep_sampling"), "timestep_sampling", ["uniform", "logit-normal"]
            )
            out["timestep_loc"] = _number(r.get("timestep_loc"), "timestep_loc", -100.0, 100.0)
            out["timestep_scale"] = _number(r.get("timestep_scale"), "timestep_scale", 0.0, 100.0)
        out["lll_scale"] = _number(r.get("lll_scale"), "lll_scale", 1e-6, 1e6)
        out["data_range"] = _pair(r.get("data_range"), "data_range", -1e6, 1e6)
        out["image_size"] = _size(r.get("image_size"), "image_size")
        out["roi_size"] = _size(r.get("roi_size"), "roi_size")
        out["placement"] = _choice(r.get("placement"), "placement", [p.value for p in Placement])
        out["clip_percentiles"] = _pair(r.get("clip_percentiles"), "clip_percentiles", 0.0, 100.0)
        out["orientation"] = _choice(r.get("orientation"), "orientation", ["RAS", "LPS"], allow_none=True)
        out["modality"] = _name(r.get("modality") or None, "modality")
        contrasts = r.get("contrasts")
        if contrasts is not None:
            if not isinstance(contrasts, (list, tuple)) or not 2 <= len(contrasts) <= 16:
                raise ValueError(f"contrasts must be a list of 2 to 16 names, got {contrasts!r:.80}.")
            contrasts = [_name(c, "contrasts[]", allow_none=False) for c in contrasts]
            if len(set(contrasts)) != len(contrasts):
                raise ValueError(f"contrasts must be distinct, got {contrasts}.")
        out["contrasts"] = contrasts
        out["target_contrast"] = _choice(r.get("target_contrast"), "target_contrast", contrasts or [], allow_none=True)
        if out["task"] == Task.SYNTHESIS and contrasts is None:
            raise ValueError("a synthesis record must list its contrasts.")
        network = r.get("network")
        if not isinstance(network, Mapping):
            raise ValueError(f"network must be a dict of constructor arguments, got {type(network).__name__}.")
        out["network"] = plain(network)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: invalid training record: {e}") from None
    unknown = sorted(set(r) - set(out) - {"version"} - set(_RFLOW_KEYS) - set(_DDPM_KEYS))
    if unknown:
        logger.warning(f"{source}: ignoring unknown training-record keys {unknown} (written by a newer bundle?).")
    return out


def schedule_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The `make_scheduler` keyword arguments that rebuild the recorded training schedule."""
    keys = _DDPM_KEYS if record["diffusion"] == Diffusion.DDPM else _RFLOW_KEYS
    return {k: record[k] for k in keys}


def _scheduler_settings(scheduler: Scheduler) -> dict[str, Any]:
    config = getattr(scheduler, "schedule_config", None)
    if not isinstance(config, Mapping):
        raise ValueError(f"cannot record the schedule of a {type(scheduler).__name__}; build it with make_scheduler.")
    return dict(config)


def training_record(
    task: str,
    diffusion: str,
    scheduler: Scheduler,
    network: nn.Module,
    data_range: Sequence[float],
    image_size: Sequence[int] | None = None,
    roi_size: Sequence[int] | None = None,
    placement: str = Placement.SYMMETRIC,
    clip_percentiles: Sequence[float] = (0.1, 99.9),
    orientation: str | None = None,
    modality: str | None = None,
    contrasts: Sequence[str] | None = None,
    target_contrast: str | None = None,
) -> dict[str, Any]:
    """The record of a training run (see the module docstring), validated.

    Raises:
        ValueError: the network cannot be rebuilt from a record (a backbone outside the closed set),
            or a setting is out of range.
    """
    net = unwrap_model(network)
    config = getattr(net, "config", None)
    if not isinstance(config, Mapping):
        raise ValueError(
            f"{type(net).__name__} records no constructor arguments (.config); only WaveletDiffusionUNet "
            "with MONAI's DiffusionModelUNet or the reference WDMUNet/WavUNet backbones can be recorded."
        )
    record = {
        "version": RECORD_VERSION,
        "task": Task(task).value,
        "diffusion": Diffusion(diffusion).value,
        **_scheduler_settings(scheduler),
        "lll_scale": float(config.get("lll_scale", 3.0)),
        "data_range": plain(data_range),
        "image_size": plain(image_size),
        "roi_size": plain(roi_size) or None,
        "placement": str(placement),
        "clip_percentiles": plain(clip_percentiles),
        "orientation": orientation or None,
        "modality": modality or None,
        "contrasts": plain(contrasts),
        "target_contrast": target_contrast or None,
        "network": dict(config),
    }
    return validate_record(record, "this training run")


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
    "clip_percentiles": [0.1, 99.9],
}
_BRATS = ["t1n", "t1c", "t2w", "t2f"]

#: What a checkpoint without a record is assumed to be: the bundle's training defaults before records
#: (cWDM then framed symmetrically, as MONAI pads), sampled with the reference's fixed-large variance.
LEGACY_RECORDS: dict[str, dict[str, Any]] = {
    Task.GENERATION: {
        **_SCHEDULE,
        "version": 1,
        "task": "generation",
        "data_range": [-1.0, 1.0],
        "image_size": [128, 128, 128],
        "roi_size": [256, 256, 256],
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
        "roi_size": [224, 224, 160],
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
            "roi_size": size,
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
            "roi_size": [256, 256, 256],
            "placement": "symmetric",
            "orientation": None,
            "modality": None,
            "contrasts": None,
            "target_contrast": None,
            "network": network,
        }
    return validate_record(record, f"the authors' '{config}' settings")


def _load_state(path: Path) -> Any:
    return torch_load(path, mmap=True)  # mmap: reads the small record, not the weights


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The validated record of checkpoint ``path``; None if it has none (older files).

    Imported published checkpoints of earlier bundle versions (``"reference"`` but no record) get
    the authors' record when it is unambiguous (WDM).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a checkpoint, or its record is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist; train first or pass --ckpt_path.")
    state = _load_state(path)  # an unreadable file: UnreadableCheckpointError (a ValueError) naming it
    if not isinstance(state, Mapping):
        return None
    if "record" in state:
        return validate_record(state["record"], f"'{path}'")
    reference = state.get("reference")
    if isinstance(reference, Mapping) and isinstance(reference.get("config"), str):
        config = reference["config"]
        if not config.startswith("cwdm"):
            return authors_record(config)
    return None


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


def _recorded_diffusion(path: Path) -> str:
    state = _load_state(path)
    trained = state.get("diffusion") if isinstance(state, Mapping) else None
    return Diffusion(trained).value if isinstance(trained, str) else Diffusion.DDPM.value


def load_record(
    ckpt: str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    task: str,
    given: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings to sample a checkpoint with: its record, checked against the config's values.

    Args:
        ckpt: the weight file, or several (cWDM per-contrast models, ``{contrast: file}``): their
            records must agree on everything but ``target_contrast`` and the network.
        task: `Task` the config runs; a checkpoint of the other task is refused.
        given: config values of recorded settings (None = "as recorded"); a value that differs from
            the record is refused, naming both.

    Returns:
        The record, plus ``"assumed": True`` when no file has one: then the bundle's former defaults
        (`LEGACY_RECORDS`, the file's recorded objective) updated with the ``given`` values are
        used, with a warning, or quietly if no file exists yet (loading the weights then fails with
        its own message; ``monai.bundle verify_net_in_out`` needs no weights).

    Raises:
        ValueError: a contradiction (every one is listed), records that disagree, or a wrong task.
    """
    task = Task(task).value
    if isinstance(ckpt, Mapping):
        paths = [Path(p) for p in ckpt.values()]
    elif isinstance(ckpt, (list, tuple)):
        paths = [Path(p) for p in ckpt]
    else:
        paths = [Path(ckpt)]
    existing = [p for p in paths if p.is_file()]
    records = [(p, read_record(p)) for p in existing]
    given = dict(given or {})
    recorded = [(p, r) for p, r in records if r is not None]
    if not recorded:
        base = dict(LEGACY_RECORDS[task])
        if existing:
            base["diffusion"] = _recorded_diffusion(existing[0])
        base.update({k: plain(v) for k, v in given.items() if v is not None})
        record = validate_record(base, "the assumed training settings")
        if existing:
            shown = ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("network", "version"))
            logger.warning(
                f"'{existing[0]}' holds no training record (written before records existed): assuming "
                f"{shown}; network {record['network']}. Pass any other training setting on the command "
                "line, or re-save the weights with a record."
            )
        return {**record, "assumed": True}
    path, record = recorded[0]
    if record["task"] != task:
        raise ValueError(
            f"'{path}' is a {record['task']} model; use the {record['task']} configs "
            f"({'inference.json' if record['task'] == Task.GENERATION else 'inference_cwdm.json'})."
        )
    for other, r in recorded[1:]:
        diff = compare_records({k: v for k, v in r.items() if k not in ("target_contrast", "network")}, record)
        if diff:
            raise ValueError(f"'{other}' and '{path}' were trained with different settings: " + "; ".join(diff))
    problems = compare_records(given, record)
    if problems:
        trained = f" ('{path}' was trained with diffusion='{record['diffusion']}')" if any(
            p.startswith("diffusion:") for p in problems) else ""
        raise ValueError(
            f"the config contradicts the training record of '{path}': "
            + "; ".join(problems)
            + f"{trained}. These settings are read from the checkpoint: drop them from the command line/config."
        )
    return {**record, "assumed": False}


def recorded_network(record: Mapping[str, Any], **given: Any) -> nn.Module:
    """The network a record describes (`WaveletDiffusionUNet.from_config`), untrained.

    ``given`` are network arguments from the config (``network_def#channels`` ...): each must equal
    the recorded one, or the call is refused naming both; for an assumed record (no record in the
    file) they override the assumed defaults.
    """
    config = dict(record["network"])
    if record.get("assumed"):
        config.update({k: plain(v) for k, v in given.items()})
    else:
        problems = compare_records(given, config, "network_def#")
        if problems:
            raise ValueError(
                "the config's network contradicts the training record: "
                + "; ".join(problems)
                + ". The network is rebuilt from the checkpoint: drop these network_def overrides."
            )
    return WaveletDiffusionUNet.from_config(config)
