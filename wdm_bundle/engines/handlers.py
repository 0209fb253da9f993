"""Ignite handlers for wavelet diffusion training: iteration budget and sample previews."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.data import list_data_collate
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from wdm_bundle.diffusion import WaveletDiffusionInferer, diffusion_of, make_scheduler, unwrap_model
from wdm_bundle.engines.checkpoint import _all_ranks
from wdm_bundle.utils import as_bool
from wdm_bundle.visualize import save_slices_png, slices_grid

__all__ = ["IterationBudget", "PreviewSampler", "NonFiniteLossError", "StopOnNonFiniteLoss", "LazySummaryWriter"]

logger = logging.getLogger(__name__)


class IterationBudget:
    """Stop training after exactly ``num_iterations`` iterations (also right away on a resumed run that is done)."""

    def __init__(self, num_iterations: int) -> None:
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}.")
        self.num_iterations = num_iterations

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.iteration >= self.num_iterations:
            if engine.last_event_name == Events.STARTED:
                logger.info(f"iteration budget {self.num_iterations} already reached at {engine.state.iteration}.")
            engine.terminate()


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss:
    """Stop training with `NonFiniteLossError` at the first NaN or infinite loss, before the weights are updated.

    Checks at MONAI's ``IterationEvents.LOSS_COMPLETED`` (after the loss, before backward and the
    optimizer step), so the bad iteration never reaches ``ITERATION_COMPLETED``: no checkpoint,
    ``model.pt``, preview or TensorBoard point of it is written, and the newest checkpoint on disk
    holds finite weights. Engines without that event are checked at ``ITERATION_COMPLETED``
    (attach this handler before the checkpointer then). The error names the iteration and the
    batch's cases (their files, with ``datalist``).

    Args:
        datalist: the training datalist (``{"case", key: file}`` entries), to name the batch's files.
        keys: the datalist keys whose files are named.
    """

    def __init__(self, datalist: Sequence[dict] | None = None, keys: Sequence[str] = ("image",)) -> None:
        self.files = {str(e.get("case")): [str(e[k]) for k in keys if k in e] for e in (datalist or [])}

    def attach(self, engine: Engine) -> None:
        from monai.engines.utils import IterationEvents

        event = (
            IterationEvents.LOSS_COMPLETED
            if IterationEvents.LOSS_COMPLETED in engine._allowed_events
            else Events.ITERATION_COMPLETED
        )
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output.get("loss") if isinstance(output, dict) else output
        if loss is None or bool(torch.isfinite(torch.as_tensor(loss).detach()).all()):
            return
        batch = engine.state.batch
        cases = [str(c) for c in batch.get("case", [])] if isinstance(batch, dict) else []
        files = [f for c in cases for f in self.files.get(c, [])]
        named = f" in the batch of {', '.join(files or cases)}" if (files or cases) else ""
        value = torch.as_tensor(loss).detach().float().flatten()[0].item()
        raise NonFiniteLossError(
            f"training stopped at iteration {engine.state.iteration}: the loss is {value}{named}; nothing of this "
            "iteration was saved. Check these images for NaN/infinite voxels (--validate_data true finds them), or "
            "lower --learning_rate (or turn off --amp), then resume from the newest checkpoint (--resume true)."
        )


class LazySummaryWriter(SummaryWriter):
    """A TensorBoard `SummaryWriter` that creates its event file on the first write, not when built, so a run
    refused at start-up leaves no empty event file behind."""

    def __init__(self, *args, **kwargs) -> None:
        self._lazy = True
        super().__init__(*args, **kwargs)
        self._lazy = False

    def _get_file_writer(self):
        if self._lazy:
            return None
        return super()._get_file_writer()


class PreviewSampler:
    """Every ``every`` iterations, sample a few volumes with few DDIM (or RFlow) steps and show their middle slices.

    Writes ``<output_dir>/preview_<iteration>.png`` and, with a ``summary_writer``, a TensorBoard
    image ``preview``; with a ``tracker`` (a MONAI `MLFlowHandler`, set by `connect_tracking`) the
    PNG is also logged as an MLflow artifact under ``previews/``. Sampling uses fixed noise
    (``seed``) so previews are comparable over time.

    Args:
        network: the model to sample from (normally the EMA copy).
        image_shape: (C, D, H, W) of the generated images.
        inferer: the training inferer (gives the data range).
        every: iterations between previews.
        num_samples: volumes per preview.
        num_inference_steps: DDIM steps (RFlow steps for a rectified-flow inferer).
        dataset, prepare_batch: for conditional models, the first ``num_samples`` items of
            ``dataset`` go through ``prepare_batch`` (under a fixed seed) to give the condition
            channels; their targets are shown beside the samples.
        resume, overwrite: a new run (neither set) refuses to start when ``output_dir`` already holds
            previews of another run; a resumed run replaces its own previews after the checkpoint.
    """

    def __init__(
        self,
        network: nn.Module,
        image_shape: Sequence[int],
        inferer: WaveletDiffusionInferer,
        output_dir: str | os.PathLike,
        every: int = 1000,
        num_samples: int = 2,
        num_inference_steps: int = 10,
        seed: int = 0,
        summary_writer=None,
        dataset=None,
        prepare_batch=None,
        enabled: bool = True,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        if len(image_shape) != 4:
            raise ValueError(f"image_shape must be (C, D, H, W), got {tuple(image_shape)}.")
        self.network = network
        self.image_shape = tuple(int(s) for s in image_shape)
        self.inferer = inferer
        self.output_dir = Path(output_dir)
        self.every = every
        self.num_samples = num_samples
        sampler = "rflow" if diffusion_of(inferer.scheduler) == "rflow" else "ddim"
        config = getattr(inferer.scheduler, "schedule_config", None)
        if config is None:
            raise ValueError("the inferer's scheduler has no schedule_config; build it with make_scheduler.")
        # the training schedule (T, betas), not make_scheduler's defaults: previews show what inference will
        self.scheduler = make_scheduler(sampler, num_inference_steps, **config)
        self.seed = seed
        self.summary_writer = summary_writer
        self.dataset = dataset
        self.prepare_batch = prepare_batch
        self.enabled = as_bool(enabled, "enabled")
        self.resume = as_bool(resume, "resume")
        self.overwrite = as_bool(overwrite, "overwrite")
        self.tracker = None

    def _refusal(self) -> str | None:
        if not self.enabled or self.every <= 0 or self.resume or self.overwrite or not self.output_dir.is_dir():
            return None
        found = sorted(self.output_dir.glob("preview_*.png"))
        if not found:
            return None
        return (
            f"'{self.output_dir}' already holds {len(found)} preview(s) of another run (e.g. {found[0].name}) "
            "that this run would replace; choose another --output_dir, move them, or pass --overwrite true."
        )

    def attach(self, engine: Engine) -> None:
        refusals = [r for r in _all_ranks(self._refusal()) if r]  # every rank refuses together
        if refusals:
            raise FileExistsError(refusals[0])
        if self.enabled and self.every > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        model = unwrap_model(self.network)
        device = next(model.parameters()).device
        shape = (self.num_samples, *model.wavelet.coefficient_shape(self.image_shape))
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(self.seed)).to(device)
        conditioning, targets = self._conditioning(device)
        was_training = model.training
        model.eval()
        try:
            images = self.inferer.sample(
                noise[: len(conditioning) if conditioning is not None else None],
                model,
                scheduler=self.scheduler,
                conditioning=conditioning,
                verbose=False,
            )
        finally:
            model.train(was_training)
        it = engine.state.iteration
        vols, titles = [], []
        for i, img in enumerate(images):
            if targets is not None:
                vols.append(targets[i, 0])
                titles.append(f"target {i}")
            vols.append(img[0])
            titles.append(f"sample {i}")
        path = save_slices_png(vols, self.output_dir / f"preview_{it:08d}.png", self.inferer.data_range, titles=titles)
        if self.summary_writer is not None:
            grid = slices_grid(vols, self.inferer.data_range)
            self.summary_writer.add_image("preview", grid, it, dataformats="HW")
        run = getattr(self.tracker, "cur_run", None)
        if run is not None:
            self.tracker.client.log_artifact(run.info.run_id, str(path), artifact_path="previews")
        logger.info(f"preview at iteration {it}: {path}")

    def _conditioning(self, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Condition channels and decoded targets of the first dataset items, or (None, None)."""
        if self.dataset is None or self.prepare_batch is None:
            return None, None
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)  # same items (random masks) and targets every preview, training RNG untouched
            items = [self.dataset[i] for i in range(min(self.num_samples, len(self.dataset)))]
            x0, _, _, kwargs = self.prepare_batch(list_data_collate(items), device)
        condition = kwargs.get("condition")
        if condition is None:
            return None, None
        return condition, unwrap_model(self.network).wavelet.decode(x0)
