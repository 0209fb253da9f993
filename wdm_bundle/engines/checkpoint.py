"""The training checkpointer: atomic checkpoints during training, and exact resume from them.

Written here rather than with MONAI's `CheckpointSaver`, which saves non-atomically
(``atomic=False``) and cannot resume; a crash mid-write must never destroy the last good state.
Writing and finding the files, and loading weights for inference: `wdm_bundle.engines.checkpoint_files`;
the random state saved for an exact resume: `wdm_bundle.engines.random_state`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

from wdm_bundle.diffusion.inferer import unwrap_model
from wdm_bundle.diffusion.schedulers import Diffusion
from wdm_bundle.engines.checkpoint_files import load_weights  # noqa: F401  (imported from here by synthesis.py)
from wdm_bundle.engines.checkpoint_files import CHECKPOINT_NAME, atomic_save, checkpoint_path, list_checkpoints
from wdm_bundle.engines.random_state import random_state, set_random_state
from wdm_bundle.engines.record_schema import compare_records
from wdm_bundle.utils import UnreadableCheckpointError, as_bool, remove_stale_temp_files, torch_load

__all__ = ["TrainingCheckpointer"]

logger = logging.getLogger(__name__)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_ranks(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (a collective in a distributed run: every rank must call it)."""
    _, world = _rank_and_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _data_settings(loader: Any) -> dict[str, Any] | None:
    """Batching and sampler settings that fix the data order (None without a data loader)."""
    if loader is None or not hasattr(loader, "batch_size"):
        return None
    sampler = getattr(loader, "sampler", None)
    return {
        "batch_size": loader.batch_size,
        "drop_last": bool(getattr(loader, "drop_last", False)),
        **(sampler.settings() if hasattr(sampler, "settings") else {}),
    }


class TrainingCheckpointer:
    """Save model, EMA, optimizer and trainer state every ``save_every`` iterations and at the end.

    Each save writes ``checkpoint_<iteration>.pt`` (everything needed to resume) and refreshes
    ``model.pt`` (``{"model", "ema", "iteration", "diffusion"}`` weights for inference), both
    atomically; only the newest ``n_saved`` checkpoints are kept. Both record the training
    objective ``diffusion``, so inference refuses a sampler that does not fit it and a resumed run
    refuses to switch objective.

    Resume is exact: checkpoints also hold every rank's random state (`random_state`, with the
    training data loader's ``generator``) and the data settings; on resume, at the first epoch
    start (after every start-up handler), the random state is restored and a `ResumableSampler`
    is set to the batch the run stopped before, so data order, noise, timestep (and cWDM target)
    draws, EMA and optimizer continue as if never interrupted. What prevents that (an older
    checkpoint, another sampler, a data loader without ``generator``, changed data settings or
    world size) is logged as a warning. In a distributed run every rank must attach it (``enabled``
    on one), as saving gathers the ranks' random states.

    Args:
        save_dir: output folder (the bundle's ``models/``).
        network: the trained network (DDP/compile wrappers are unwrapped for saving).
        optimizer: its optimizer.
        ema_model: the EMA copy of the network, or None.
        save_every: iterations between saves.
        n_saved: checkpoints to keep.
        resume: load the latest checkpoint, if any, and continue at its iteration.
        overwrite: allow starting a new run in a folder that already holds checkpoints or a ``model.pt``
            (they are deleted); without it, that is an error (also for a lone ``model.pt``, e.g. imported
            weights), so nothing is replaced by accident. In a distributed run every rank refuses together.
        resume (continued): an unreadable newest checkpoint is skipped for the newest readable one, and
            ``model.pt`` is rewritten from it when a save was interrupted between its two writes; temporary
            files of interrupted saves are deleted.
        map_location: device for loading on resume.
        enabled: False on non-zero distributed ranks: they load but never write.
        diffusion: training objective (``"ddpm"``, ``"rflow"`` or ``"rflow_x0"``), recorded in every file.
        ema_handler: the ignite `EMAHandler` that updates ``ema_model``: on resume its momentum warm-up
            goes on from the checkpoint's iteration (ignite's own restarts it from 0).
        record: the training record (`wdm_bundle.engines.training_record`: every setting the weights
            depend on), stored in every file; inference reads it back, and a resumed run whose
            settings differ from the checkpoint's record is refused, naming each difference.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        ema_model: nn.Module | None = None,
        save_every: int = 1000,
        n_saved: int = 2,
        resume: bool = False,
        overwrite: bool = False,
        map_location: str | torch.device | None = "cpu",
        enabled: bool = True,
        diffusion: str = Diffusion.DDPM,
        ema_handler: Any = None,
        record: dict[str, Any] | None = None,
    ) -> None:
        if save_every < 1 or n_saved < 1:
            raise ValueError(f"save_every and n_saved must be >= 1, got {save_every}, {n_saved}.")
        self.save_dir = Path(save_dir)
        self.objects: dict[str, Any] = {"model": network}
        if ema_model is not None:
            self.objects["ema"] = ema_model
        if optimizer is not None:
            self.objects["optimizer"] = optimizer
        self.save_every = save_every
        self.n_saved = n_saved
        self.resume = as_bool(resume, "resume")
        self.overwrite = as_bool(overwrite, "overwrite")
        self.map_location = map_location
        self.enabled = as_bool(enabled, "enabled")
        self.diffusion = Diffusion(diffusion).value
        self._last_saved = -1
        self.ema_handler = ema_handler
        self.record = dict(record) if record is not None else None
        self._pending: tuple[Path, Any, Any] | None = None  # (checkpoint, random states, data settings) to restore

    def _state_objects(self, engine: Engine) -> dict[str, Any]:
        objects = {k: unwrap_model(v) if isinstance(v, nn.Module) else v for k, v in self.objects.items()}
        objects["trainer"] = engine
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            objects["scaler"] = scaler
        return objects

    def _refusal(self) -> str | None:
        """Why starting this run would replace files of another run (None if it would not)."""
        existing = list_checkpoints(self.save_dir)
        weights = self.save_dir / "model.pt"
        if self.overwrite or (self.resume and existing):
            return None
        if existing:
            return (
                f"'{self.save_dir}' already holds {len(existing)} checkpoint(s) (latest: {existing[-1].name}); "
                "pass --resume true to continue that run, or --overwrite true to start over and delete them."
            )
        if weights.exists():
            return (
                f"'{weights}' already exists (imported or trained weights without training checkpoints) and this "
                "run would replace it; choose another --ckpt_dir (or --bundle_root), move the file, or pass "
                "--overwrite true to replace it."
            )
        return None

    def attach(self, engine: Engine) -> None:
        # every rank learns rank 0's verdict, so all refuse together (a lone refusing rank hangs the others)
        refusals = [r for r in _all_ranks(self._refusal() if self.enabled else None) if r]
        if refusals:
            raise FileExistsError(refusals[0])
        if self.enabled:
            for p in remove_stale_temp_files(
                self.save_dir, lambda name: name == "model.pt" or CHECKPOINT_NAME.match(name)
            ):
                logger.warning(f"removed '{p}', left by an interrupted save.")
        existing = list_checkpoints(self.save_dir)
        if self.resume and existing:
            self._resume(existing, engine)
        elif self.resume:
            logger.info(f"resume: no checkpoint in '{self.save_dir}', starting from iteration 0.")
        elif self.enabled and self.overwrite:
            for p in [*existing, self.save_dir / "model.pt"]:
                if p.exists():
                    p.unlink()
                    logger.info(f"overwrite: deleted '{p}'.")
        engine.add_event_handler(Events.EPOCH_STARTED, self._restore_data_and_random_state)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_every), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def _resume(self, existing: list[Path], engine: Engine) -> None:
        """Load the newest readable checkpoint (an unreadable newer one, e.g. cut off by a full disk, is skipped
        with a warning) and bring a stale ``model.pt`` (a kill between the two writes of `save`) up to it."""
        unreadable = []
        for path in reversed(existing):
            try:
                state = torch_load(path, map_location=self.map_location)
            except UnreadableCheckpointError as e:
                logger.warning(f"{e} Trying the previous checkpoint.")
                unreadable.append(path.name)
                continue
            self.load(path, engine, state=state)
            if unreadable:
                logger.warning(
                    f"resumed from '{path}', the newest readable checkpoint; unreadable: "
                    f"{', '.join(unreadable)} (left in place; they are pruned as the run goes on)."
                )
            if self.enabled:
                self._refresh_weights(state, path)
            return
        raise UnreadableCheckpointError(
            f"no checkpoint in '{self.save_dir}' can be read ({', '.join(unreadable)}: truncated, empty or not "
            "PyTorch files); restore them from a backup, or pass --resume false --overwrite true to start over."
        )

    def _refresh_weights(self, state: dict[str, Any], path: Path) -> None:
        weights = self.save_dir / "model.pt"
        iteration = state["trainer"].get("iteration") if isinstance(state.get("trainer"), dict) else None
        try:
            current = torch_load(weights, mmap=True).get("iteration") if weights.exists() else None
        except (UnreadableCheckpointError, AttributeError):
            current = None
        if iteration is None or current == iteration:
            return
        record = {"record": state["record"]} if "record" in state else {}
        atomic_save(
            {
                **{k: state[k] for k in ("model", "ema") if k in state},
                "iteration": iteration,
                "diffusion": state.get("diffusion", self.diffusion),
                **record,
            },
            weights,
        )
        logger.warning(
            f"'{weights}' was at iteration {current}, not the newest checkpoint's ({path.name}, iteration "
            f"{iteration}): an interrupted save; rewritten from '{path}'."
        )

    def load(self, path: str | os.PathLike, engine: Engine, state: dict[str, Any] | None = None) -> None:
        """Restore every object (and the trainer's iteration) from checkpoint ``path`` (``state``: its content,
        if already loaded)."""
        if state is None:
            state = torch_load(path, map_location=self.map_location)
        if not isinstance(state, dict):
            raise UnreadableCheckpointError(
                f"checkpoint '{path}' holds a {type(state).__name__}, not a training " "checkpoint."
            )
        trained = state.get("diffusion", Diffusion.DDPM.value)
        if trained != self.diffusion:
            raise ValueError(
                f"checkpoint '{path}' was trained with diffusion='{trained}' but this run uses "
                f"diffusion='{self.diffusion}'; resume with --diffusion {trained} or start a new run."
            )
        if self.record is not None and isinstance(state.get("record"), dict):
            diff = compare_records({k: v for k, v in self.record.items() if v is not None}, state["record"])
            if diff:
                raise ValueError(
                    f"checkpoint '{path}' was trained with other settings than this run: "
                    + "; ".join(diff).replace(" given, ", " now, ")
                    + ". Resume with the checkpoint's settings or start a new run."
                )
        objects = self._state_objects(engine)
        missing = [k for k in objects if k not in state]
        if missing:
            raise KeyError(f"checkpoint '{path}' lacks {missing}; it holds {sorted(state)}.")
        max_epochs = engine.state.max_epochs
        for key, obj in objects.items():
            obj.load_state_dict(state[key])
        # the loaded trainer state carries the old budget; a longer budget in the config wins
        if max_epochs is not None and (engine.state.max_epochs is None or engine.state.max_epochs < max_epochs):
            engine.state.max_epochs = max_epochs
        self._last_saved = engine.state.iteration
        self._pending = (Path(path), state.get("rng"), state.get("data"))
        logger.info(f"resumed from '{path}' at iteration {engine.state.iteration}.")

    def _restore_data_and_random_state(self, engine: Engine) -> None:
        """On the first epoch start after `load`: continue the data order and the random draws where they stopped."""
        if self._pending is None:
            return
        (path, rng, data), self._pending = self._pending, None
        warmup = getattr(self.ema_handler, "momentum_scheduler", None)
        if warmup is not None:  # counts its own calls, once an iteration: the iterations trained so far
            warmup.event_index = engine.state.iteration
        loader = engine.state.dataloader
        sampler, generator = getattr(loader, "sampler", None), getattr(loader, "generator", None)
        problems = []
        if hasattr(sampler, "resume_at") and getattr(loader, "batch_size", None) is not None:
            sampler.resume_at(engine.state.iteration, loader.batch_size, loader.drop_last)
        else:
            problems.append(
                f"the data loader's sampler ({type(sampler).__name__}) cannot start mid-pass "
                "(use wdm_bundle.data.ResumableSampler), so the data order differs"
            )
        if loader is not None and generator is None:
            problems.append(
                "the data loader has no generator of its own, so its iterators draw from the global " "random state"
            )
        now = _data_settings(loader)
        if data is not None and now is not None and data != now:
            changed = {k: (data.get(k), now.get(k)) for k in data.keys() | now.keys() if data.get(k) != now.get(k)}
            problems.append(f"the data settings changed (saved, now): {changed}")
        rank, world = _rank_and_world()
        if rng is None:
            problems.append("the checkpoint holds no random state (written by an older version)")
        elif len(rng) != world:
            problems.append(f"the checkpoint holds the random state of {len(rng)} process(es), this run has {world}")
        else:
            set_random_state(rng[rank], generator)
        if problems:
            logger.warning(
                f"resume from '{path}' is not exact, the run will differ from an uninterrupted one: "
                + "; ".join(problems)
                + "."
            )

    def save(self, engine: Engine) -> None:
        iteration = engine.state.iteration
        if iteration == self._last_saved or iteration == 0:
            return
        loader = engine.state.dataloader
        rng = _all_ranks(random_state(getattr(loader, "generator", None)))  # every rank, so before `enabled`
        self._last_saved = iteration
        if not self.enabled:
            return
        objects = self._state_objects(engine)
        record = {} if self.record is None else {"record": self.record}
        atomic_save(
            {
                **{k: v.state_dict() for k, v in objects.items()},
                "diffusion": self.diffusion,
                "rng": rng,
                "data": _data_settings(loader),
                **record,
            },
            checkpoint_path(self.save_dir, iteration),
        )
        weights = {k: objects[k].state_dict() for k in ("model", "ema") if k in objects}
        atomic_save(
            {**weights, "iteration": iteration, "diffusion": self.diffusion, **record}, self.save_dir / "model.pt"
        )
        for old in list_checkpoints(self.save_dir)[: -self.n_saved]:
            old.unlink()
        logger.info(f"saved checkpoint at iteration {iteration} to '{self.save_dir}'.")
