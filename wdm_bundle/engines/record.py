"""The training record: every setting the weights depend on, stored with them and read back by inference.

A record is a flat dict of plain values (loadable with ``weights_only=True``) whose keys are the
config keys of the same settings, so that an inference config can name a setting to check it:

* schedule: ``diffusion``, ``num_train_timesteps``, ``schedule``, ``beta_start``, ``beta_end``,
  ``variance_type`` (DDPM family) or ``timestep_sampling``/``timestep_loc``/``timestep_scale`` (RFlow);
* objective (DDPM, optional: only options other than the paper's are written): ``loss_weighting`` (with
  ``loss_gamma`` for ``min_snr``), ``ddpm_timestep_draw`` (with ``ddpm_timestep_loc``/``ddpm_timestep_scale``);
  training facts, not needed to sample (`wdm_bundle.diffusion.weighting`);
* space: ``lll_scale``, ``wavelet_levels`` (1 in records written before it existed), ``data_range``,
  ``image_size`` (what the network was trained on), ``spacing`` (its voxel size in mm, written into generated volumes);
* data: ``pad_crop_size``, ``placement`` (pad/crop framing), ``clip_percentiles`` (intensity
  normalisation), ``orientation``, ``modality`` (WDM) or ``contrasts``/``target_contrast`` (cWDM; the generated
  contrasts of a label-conditioned model), ``labels`` (the label values a label-conditioned model is conditioned on);
* ``network``: `WaveletDiffusionUNet.config`, from which `WaveletDiffusionUNet.from_config` rebuilds it.

A checkpoint without a record (written before records existed) still loads: the bundle's former
defaults are assumed, with a warning (`wdm_bundle.engines.known_records`). A checkpoint's content is
validated key by key against closed sets and typed ranges before use (`wdm_bundle.engines.record_schema`);
it never reaches a config parser.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.networks.schedulers import Scheduler
from torch import nn

from wdm_bundle.data.transforms import Placement
from wdm_bundle.diffusion.inferer import unwrap_model
from wdm_bundle.diffusion.schedulers import Diffusion
from wdm_bundle.engines.checkpoint_files import trained_diffusion
from wdm_bundle.engines.known_records import LEGACY_RECORDS, authors_record
from wdm_bundle.engines.record_schema import RECORD_VERSION, Task, compare_records, validate_record
from wdm_bundle.networks.wavelet_unet import WaveletDiffusionUNet
from wdm_bundle.utils import plain, torch_load

__all__ = ["training_record", "read_record", "load_record", "recorded_network"]

logger = logging.getLogger(__name__)


#: The inference config of each task's models.
INFERENCE_CONFIGS = {
    Task.GENERATION: "inference.json",
    Task.SYNTHESIS: "inference_cwdm.json",
    Task.INPAINTING: "inference_inpaint.json",
    Task.LABEL_GENERATION: "inference_label2image.json",
}


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
    spacing: Sequence[float] | None = None,
    pad_crop_size: Sequence[int] | None = None,
    placement: str = Placement.SYMMETRIC,
    clip_percentiles: Sequence[float] = (0.1, 99.9),
    orientation: str | None = None,
    modality: str | None = None,
    contrasts: Sequence[str] | None = None,
    target_contrast: str | None = None,
    labels: Sequence[int] | None = None,
    objective: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a training run (see the module docstring), validated.

    ``objective``: the DDPM objective options to record (`WaveletPrepareBatch.objective_record`), None = defaults.

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
        **dict(objective or {}),
        "lll_scale": float(config.get("lll_scale", 3.0)),
        "wavelet_levels": config.get("wavelet_levels", 1),
        "data_range": plain(data_range),
        "image_size": plain(image_size),
        "spacing": plain(spacing),
        "pad_crop_size": plain(pad_crop_size) or None,
        "placement": str(placement),
        "clip_percentiles": plain(clip_percentiles),
        "orientation": orientation or None,
        "modality": modality or None,
        "contrasts": plain(contrasts),
        "target_contrast": target_contrast or None,
        "labels": plain(labels),
        "network": dict(config),
    }
    return validate_record(record, "this training run")


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
    state = torch_load(path, mmap=True)  # mmap: reads the small record, not the weights; an unreadable file:
    # UnreadableCheckpointError (a ValueError) naming it
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


def load_record(
    ckpt: str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    task: str | Sequence[str],
    given: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings to sample a checkpoint with: its record, checked against the config's values.

    Args:
        ckpt: the weight file, or several (cWDM per-contrast models, ``{contrast: file}``): their
            records must agree on everything but ``target_contrast`` and the network.
        task: `Task` the config runs, or several it accepts (the first with a former default is assumed for a
            file without a record); a checkpoint of another task is refused.
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
    tasks = [Task(t).value for t in ([task] if isinstance(task, str) else task)]
    task = next((t for t in tasks if t in LEGACY_RECORDS), tasks[0])
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
            base["diffusion"] = trained_diffusion(existing[0])
        base.update({k: plain(v) for k, v in given.items() if v is not None})
        if given.get("wavelet_levels") is not None:  # the assumed network follows a given level count
            base["network"] = {**base["network"], "wavelet_levels": base["wavelet_levels"]}
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
    if record.get("spacing") is None:  # recorded before the voxel size was: the given one, else the former default
        spacing = plain(given.get("spacing")) or LEGACY_RECORDS.get(record["task"], {}).get("spacing")
        record = validate_record({**record, "spacing": spacing}, f"'{path}' with spacing {spacing}")
    if record["task"] not in tasks:
        raise ValueError(
            f"'{path}' is a {record['task']} model; use the {record['task']} configs "
            f"({INFERENCE_CONFIGS[record['task']]})."
        )
    for other, r in recorded[1:]:
        diff = compare_records({k: v for k, v in r.items() if k not in ("target_contrast", "network")}, record)
        if diff:
            raise ValueError(f"'{other}' and '{path}' were trained with different settings: " + "; ".join(diff))
    problems = compare_records(given, record)
    if problems:
        trained = (
            f" ('{path}' was trained with diffusion='{record['diffusion']}')"
            if any(p.startswith("diffusion:") for p in problems)
            else ""
        )
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
