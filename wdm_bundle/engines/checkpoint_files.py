"""Checkpoint files: atomic writing, finding the training checkpoints, loading weights for inference.

Loading uses ``weights_only=True`` throughout (`wdm_bundle.utils.torch_load`): checkpoints from elsewhere are untrusted.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from monai.networks.schedulers import Scheduler
from torch import nn

from wdm_bundle.diffusion.inferer import unwrap_model
from wdm_bundle.diffusion.schedulers import Diffusion, check_sampler
from wdm_bundle.utils import atomic_write, torch_load

__all__ = [
    "atomic_save",
    "checkpoint_path",
    "list_checkpoints",
    "latest_checkpoint",
    "trained_diffusion",
    "load_weights",
]

logger = logging.getLogger(__name__)

#: The file name of a training checkpoint (`checkpoint_path`), its iteration as group 1.
CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")


def atomic_save(obj: Any, path: str | os.PathLike) -> str:
    """`torch.save` to a temporary file in the same folder, then rename over ``path``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())

    return str(atomic_write(path, write))


def checkpoint_path(save_dir: str | os.PathLike, iteration: int) -> Path:
    """The training checkpoint of ``iteration`` in ``save_dir``: ``checkpoint_<iteration>.pt``."""
    return Path(save_dir) / f"checkpoint_{iteration:08d}.pt"


def list_checkpoints(save_dir: str | os.PathLike) -> list[Path]:
    """Training checkpoints ``checkpoint_<iteration>.pt`` in ``save_dir``, oldest first."""
    d = Path(save_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(save_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest iteration in ``save_dir``, or None."""
    found = list_checkpoints(save_dir)
    return found[-1] if found else None


def _recorded_diffusion(state: object) -> str:
    trained = state.get("diffusion") if isinstance(state, dict) else None
    return Diffusion(trained).value if isinstance(trained, str) else Diffusion.DDPM.value


def trained_diffusion(path: str | os.PathLike) -> str | None:
    """The objective (`Diffusion`) recorded in the checkpoint at ``path`` (``"ddpm"`` if it records
    none), or None if there is no file there (`load_weights` then says so)."""
    path = Path(path)
    if not path.is_file():
        return None
    return _recorded_diffusion(torch_load(path, mmap=True))  # mmap: reads the small record, not the weights


def _key_list(keys: list[str]) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")


def _check_fit(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: Path, strict: bool) -> None:
    """Refuse weights ``state`` that do not fit a network whose state_dict is ``own``, listing every misfit."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError(
            f"checkpoint '{path}' does not fit the network: missing keys: {_key_list(missing)}; unexpected keys: "
            f"{_key_list(unexpected)}; shape mismatches (checkpoint vs network): {_key_list(mismatched)}. Check the "
            "network settings (channels, num_res_blocks, ...) match those used for training."
        )


def load_weights(
    network: nn.Module,
    path: str | os.PathLike,
    key: str | None = "ema",
    strict: bool = True,
    sampler: Scheduler | str | None = None,
    diffusion: str | None = None,
) -> nn.Module:
    """Load weights into ``network`` from a bundle ``model.pt``, a training checkpoint or a bare state_dict.

    Loads with ``weights_only=True``: checkpoints from elsewhere are untrusted.

    Args:
        key: which weights to take from a bundle checkpoint: ``"ema"`` (default; falls back to
            ``"model"`` with a warning when the file has no EMA) or ``"model"``; None for a bare
            state_dict.
        sampler: the scheduler (or sampler name) the weights will be sampled with; a checkpoint
            trained with another objective (``diffusion``, see `TrainingCheckpointer`) is refused.
            Files that record no objective count as ``"ddpm"`` (all earlier and imported ones).
        diffusion: the objective the sampler expects (``WaveletDiffusionInferer.diffusion``); a
            checkpoint that records another one is refused (cWDM: all contrast models alike).

    Raises:
        FileNotFoundError: no file at ``path``.
        UnreadableCheckpointError: (a ValueError) a truncated, empty or random file, or one that holds
            Python objects (named, with what is wrong).
        ValueError: the weights do not fit ``network`` (lists missing and unexpected keys), or
            were trained for another sampler.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist; train first or pass --ckpt_path.")
    state = torch_load(path)
    trained = _recorded_diffusion(state)
    if sampler is not None:
        check_sampler(trained, sampler, f"checkpoint '{path}'")
    if diffusion is not None and Diffusion(diffusion) != trained:
        raise ValueError(
            f"checkpoint '{path}' was trained with diffusion='{trained}', but the sampler is set up for "
            f"diffusion='{Diffusion(diffusion).value}' (what the network outputs); set diffusion to "
            f"'{trained}' or leave it to be read from the checkpoint."
        )
    if key is not None and isinstance(state, dict) and key in state and isinstance(state[key], dict):
        state = state[key]
    elif key is not None and isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        logger.warning(f"'{path}' has no '{key}' weights; using 'model'.")
        state = state["model"]
    target = unwrap_model(network)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        held = sorted(state)[:10] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"'{path}' holds no state_dict under '{key}' (keys: {held}).")
    _check_fit(state, target.state_dict(), path, strict)
    target.load_state_dict(state, strict=strict)
    return network
