"""`WaveletPrepareBatch`: MONAI's `DiffusionPrepareBatch` with the DWT done on the training device."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.schedulers import RFlowScheduler, Scheduler

from wdm_bundle.diffusion.schedulers import Diffusion, velocity_from_x0
from wdm_bundle.diffusion.weighting import DEFAULT_LOSS_GAMMA, LossWeighting, TimestepDraw, draw_timesteps, loss_weights
from wdm_bundle.wavelets import HaarWavelet3D

__all__ = [
    "WaveletPrepareBatch",
    "SynthesisPrepareBatch",
    "InpaintingPrepareBatch",
    "LabelConditionPrepareBatch",
    "synthesis_inputs",
    "inpainting_condition",
    "label_condition",
    "coefficient_mask",
]


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class WaveletPrepareBatch(DiffusionPrepareBatch):
    """Turn a batch of images into (x0, x0 target, noise, timesteps) in wavelet space.

    The images (B, C, D, H, W) are moved to the device, then encoded there to coefficients
    (B, 8C, D/2, H/2, W/2); the target is the clean coefficients (x0 prediction), or the velocity
    x0 - noise for rectified flow (as MONAI's MAISI trains with `RFlowScheduler`; for
    ``"rflow_x0"`` in the form `velocity_from_x0` gives it). Condition images under
    ``condition_name`` are encoded the same way and passed to the inferer.

    DDPM objective options (`wdm_bundle.diffusion.weighting`; the defaults are the paper's and leave batches as
    before): ``loss_weighting`` other than ``uniform`` appends to the target one channel holding each sample's
    weight w_t (mean 1 over t uniform), for `wdm_bundle.diffusion.WeightedDiffusionLoss`; ``ddpm_timestep_draw``
    chooses how t is drawn. Rectified flow accepts only the defaults (it draws t with its scheduler).

    Args:
        num_train_timesteps: T; timesteps are drawn uniformly from [0, T), by ``ddpm_timestep_draw``, or by
            ``scheduler`` (RFlow).
        wavelet: the coder, normally ``network.wavelet``.
        image_key: batch key of the target images.
        condition_name: batch key of condition images, or None for unconditional training.
        diffusion: training objective, ``"ddpm"`` (x0 target), ``"rflow"`` or ``"rflow_x0"``
            (velocity target).
        scheduler: the training scheduler; an `RFlowScheduler` draws the timesteps
            (``sample_timesteps``: uniform or logit-normal, see `make_scheduler`); a DDPM one's float64
            ``alphas_cumprod`` gives the loss weights (required for a non-uniform ``loss_weighting``).
        loss_weighting: `LossWeighting`: ``uniform`` (the paper), ``eps``, ``v`` or ``min_snr``.
        loss_gamma: gamma of ``min_snr``.
        ddpm_timestep_draw: `TimestepDraw`: ``uniform`` (the paper) or ``logit-normal``.
        ddpm_timestep_loc, ddpm_timestep_scale: loc and scale of ``logit-normal``.
    """

    def __init__(
        self,
        num_train_timesteps: int,
        wavelet: HaarWavelet3D,
        image_key: str = "image",
        condition_name: str | None = None,
        diffusion: str = Diffusion.DDPM,
        scheduler: Scheduler | None = None,
        loss_weighting: str = LossWeighting.UNIFORM,
        loss_gamma: float = DEFAULT_LOSS_GAMMA,
        ddpm_timestep_draw: str = TimestepDraw.UNIFORM,
        ddpm_timestep_loc: float = 0.0,
        ddpm_timestep_scale: float = 1.0,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_name)
        self.wavelet = wavelet
        self.image_key = image_key
        self.diffusion = Diffusion(diffusion)
        if scheduler is not None and scheduler.num_train_timesteps != num_train_timesteps:
            raise ValueError(
                f"scheduler has T = {scheduler.num_train_timesteps}, num_train_timesteps is {num_train_timesteps}."
            )
        self.scheduler = scheduler
        self._set_objective(loss_weighting, loss_gamma, ddpm_timestep_draw, ddpm_timestep_loc, ddpm_timestep_scale)

    def _set_objective(self, weighting: str, gamma: float, draw: str, loc: float, scale: float) -> None:
        """Check and keep the DDPM objective options; the float64 weight table (T,) or None (uniform)."""
        self.loss_weighting = LossWeighting.named(weighting, "loss_weighting")
        self.ddpm_timestep_draw = TimestepDraw.named(draw, "ddpm_timestep_draw")
        self.loss_gamma, self.ddpm_timestep_loc, self.ddpm_timestep_scale = float(gamma), float(loc), float(scale)
        if not self.loss_gamma > 0:
            raise ValueError(f"loss_gamma must be > 0, got {gamma}.")
        if not (math.isfinite(self.ddpm_timestep_loc) and math.isfinite(self.ddpm_timestep_scale)):
            raise ValueError(f"ddpm_timestep_loc and ddpm_timestep_scale must be finite, got {loc} and {scale}.")
        if not self.ddpm_timestep_scale > 0:
            raise ValueError(f"ddpm_timestep_scale must be > 0, got {scale}.")
        custom = [
            f"{k}='{v.value}'"
            for k, v in (("loss_weighting", self.loss_weighting), ("ddpm_timestep_draw", self.ddpm_timestep_draw))
            if v != "uniform"
        ]
        if custom and (self.diffusion != Diffusion.DDPM or isinstance(self.scheduler, RFlowScheduler)):
            raise ValueError(
                f"{' and '.join(custom)}: DDPM training options; rectified flow (diffusion="
                f"'{self.diffusion.value}') trains with its unweighted velocity loss and draws t by "
                "timestep_sampling: set loss_weighting and ddpm_timestep_draw to 'uniform'."
            )
        self.weights: torch.Tensor | None = None
        if self.loss_weighting != LossWeighting.UNIFORM:
            table = getattr(self.scheduler, "alphas_cumprod", None)
            if table is None or len(table) != self.num_train_timesteps:
                raise ValueError(
                    f"loss_weighting='{self.loss_weighting.value}' needs the DDPM training scheduler (its "
                    "alphas_cumprod); pass scheduler."
                )
            self.weights = loss_weights(table, self.loss_weighting, self.loss_gamma)

    def objective_record(
        self,
        loss_weighting: str = LossWeighting.UNIFORM,
        loss_gamma: float = DEFAULT_LOSS_GAMMA,
        ddpm_timestep_draw: str = TimestepDraw.UNIFORM,
        ddpm_timestep_loc: float = 0.0,
        ddpm_timestep_scale: float = 1.0,
    ) -> dict[str, Any]:
        """The training-record entries of the objective options this batch preparer trains with, after checking that
        they are the config's (the arguments): a config whose ``train#prepare_batch`` is not given the options
        (cWDM, inpainting, label-conditioned) is refused when it asks for other than the defaults.

        Only options that differ from the paper are recorded (``loss_gamma`` with ``min_snr``,
        ``ddpm_timestep_loc``/``ddpm_timestep_scale`` with ``logit-normal``): the record of a default run is as before.
        """
        used = {
            "loss_weighting": self.loss_weighting.value,
            "loss_gamma": self.loss_gamma,
            "ddpm_timestep_draw": self.ddpm_timestep_draw.value,
            "ddpm_timestep_loc": self.ddpm_timestep_loc,
            "ddpm_timestep_scale": self.ddpm_timestep_scale,
        }
        asked = {
            "loss_weighting": LossWeighting.named(loss_weighting, "loss_weighting").value,
            "loss_gamma": loss_gamma,
            "ddpm_timestep_draw": TimestepDraw.named(ddpm_timestep_draw, "ddpm_timestep_draw").value,
            "ddpm_timestep_loc": ddpm_timestep_loc,
            "ddpm_timestep_scale": ddpm_timestep_scale,
        }
        relevant = ["loss_weighting", "ddpm_timestep_draw"]
        if asked["loss_weighting"] == LossWeighting.MIN_SNR:
            relevant.append("loss_gamma")
        if asked["ddpm_timestep_draw"] == TimestepDraw.LOGIT_NORMAL:
            relevant += ["ddpm_timestep_loc", "ddpm_timestep_scale"]
        differ = [f"{k}={asked[k]!r} (it uses {used[k]!r})" for k in relevant if asked[k] != used[k]]
        if differ:
            raise ValueError(
                f"train#prepare_batch ({type(self).__name__}) is not configured with "
                + ", ".join(differ)
                + ": this config does not pass the objective options to it; use the defaults or add them to its "
                "train#prepare_batch."
            )
        out: dict[str, Any] = {}
        if self.loss_weighting != LossWeighting.UNIFORM:
            out["loss_weighting"] = self.loss_weighting.value
            if self.loss_weighting == LossWeighting.MIN_SNR:
                out["loss_gamma"] = self.loss_gamma
        if self.ddpm_timestep_draw != TimestepDraw.UNIFORM:
            out["ddpm_timestep_draw"] = self.ddpm_timestep_draw.value
            out["ddpm_timestep_loc"] = self.ddpm_timestep_loc
            out["ddpm_timestep_scale"] = self.ddpm_timestep_scale
        return out

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        """Training timesteps (B,) long in [0, T): the RFlow scheduler's draw, else ``ddpm_timestep_draw``'s
        (``uniform``: MONAI's)."""
        if isinstance(self.scheduler, RFlowScheduler):
            return self.scheduler.sample_timesteps(images).long().clamp_(0, self.num_train_timesteps - 1)
        if self.ddpm_timestep_draw != TimestepDraw.UNIFORM:
            return draw_timesteps(
                images.shape[0],
                self.num_train_timesteps,
                self.ddpm_timestep_draw,
                self.ddpm_timestep_loc,
                self.ddpm_timestep_scale,
                images.device,
            )
        return super().get_timesteps(images)

    def weighted_target(self, target: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``target`` (B, C, ...) and, for a non-uniform ``loss_weighting``, one more channel holding each sample's
        weight w_t (looked up in float64, cast to the target's dtype)."""
        if self.weights is None:
            return target
        device = torch.device("cpu") if target.device.type == "mps" else target.device  # MPS has no float64
        w = self.weights.to(device)[timesteps.to(device)].to(target.device, target.dtype)
        channel = w.reshape(-1, 1, *(1,) * (target.ndim - 2)).expand(-1, 1, *target.shape[2:])
        return torch.cat([target, channel], dim=1)

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The clean coefficients (x0 prediction), or the rectified-flow velocity ``x0 - noise``."""
        if self.diffusion == Diffusion.RFLOW_X0:
            frac = (timesteps.to(images.dtype) / self.num_train_timesteps).reshape(-1, *(1,) * (images.ndim - 1))
            return velocity_from_x0(images, (1 - frac) * images + frac * noise, timesteps, self.num_train_timesteps)
        return images - noise if self.diffusion == Diffusion.RFLOW else images

    def get_inputs(
        self, batchdata: Mapping[str, torch.Tensor], to_device: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Clean coefficients x0 and condition coefficients (or None), encoded on the device."""
        x0 = self.wavelet.encode(to_device(batchdata[self.image_key]))
        if self.condition_name is None:
            return x0, None
        return x0, self.wavelet.encode(to_device(batchdata[self.condition_name]))

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        x0, condition = self.get_inputs(batchdata, lambda t: _plain(t).to(device, non_blocking=non_blocking, **kwargs))
        noise = self.get_noise(x0)
        timesteps = self.get_timesteps(x0)
        infer_kwargs: dict[str, torch.Tensor] = {"noise": noise, "timesteps": timesteps}
        if condition is not None:
            infer_kwargs["condition"] = condition
        return x0, self.weighted_target(self.get_target(x0, noise, timesteps), timesteps), (), infer_kwargs


class SynthesisPrepareBatch(WaveletPrepareBatch):
    """cWDM batches: one contrast is the target, the others are wavelet-encoded conditions.

    The batch holds all contrasts stacked on the channel axis under ``contrasts_key``:
    (B, K, D, H, W), in the order of the config's ``contrasts`` list.

    * ``target_index`` given (one model per target contrast, as in the cWDM paper): the target is
      that channel; the condition is the DWT of the other K-1 channels in order, 8(K-1) channels.
    * ``target_index`` None (one model for any missing contrast): per sample a target is drawn at
      random; the condition is the DWT of all K channels with the target's 8 coefficient channels
      zeroed, followed by K one-hot channels that say which contrast is the target:
      8K + K channels.

    Args:
        num_train_timesteps: T.
        wavelet: the coder, normally ``network.wavelet``.
        num_contrasts: K.
        target_index: index of the fixed target contrast, or None for the unified model.
        contrasts_key: batch key of the stacked contrasts.
        diffusion: training objective, ``"ddpm"``, ``"rflow"`` or ``"rflow_x0"`` (see `WaveletPrepareBatch`).
        scheduler: the training scheduler (see `WaveletPrepareBatch`).
        objective: the DDPM objective options of `WaveletPrepareBatch` (``loss_weighting`` ...).
    """

    def __init__(
        self,
        num_train_timesteps: int,
        wavelet: HaarWavelet3D,
        num_contrasts: int,
        target_index: int | None = None,
        contrasts_key: str = "images",
        diffusion: str = Diffusion.DDPM,
        scheduler: Scheduler | None = None,
        **objective: Any,
    ) -> None:
        super().__init__(
            num_train_timesteps,
            wavelet,
            image_key=contrasts_key,
            condition_name=None,
            diffusion=diffusion,
            scheduler=scheduler,
            **objective,
        )
        if num_contrasts < 2:
            raise ValueError(f"num_contrasts must be >= 2 (a target and a source), got {num_contrasts}.")
        if target_index is not None and not 0 <= target_index < num_contrasts:
            raise ValueError(f"target_index must be in [0, {num_contrasts}) or None, got {target_index}.")
        self.num_contrasts = num_contrasts
        self.target_index = target_index

    def get_target_indices(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Target contrast per sample, (B,) long: fixed, or uniform at random for the unified model."""
        if self.target_index is not None:
            return torch.full((batch_size,), self.target_index, dtype=torch.long, device=device)
        return torch.randint(0, self.num_contrasts, (batch_size,), device=device)

    def get_inputs(
        self, batchdata: Mapping[str, torch.Tensor], to_device: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick targets, then split the stacked contrasts into x0 and the condition (see `synthesis_inputs`)."""
        stack = to_device(batchdata[self.image_key])
        if stack.shape[1] != self.num_contrasts:
            raise ValueError(
                f"expected {self.num_contrasts} contrasts on the channel axis, got shape {tuple(stack.shape)}."
            )
        targets = self.get_target_indices(stack.shape[0], stack.device)
        return synthesis_inputs(self.wavelet, stack, targets, unified=self.target_index is None)


def synthesis_inputs(
    wavelet: HaarWavelet3D, stack: torch.Tensor, targets: torch.Tensor, unified: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split stacked contrasts (B, K, D, H, W) into target coefficients and condition channels.

    The target channel may hold anything (zeros at inference): it never reaches the condition.

    Returns:
        x0 (B, 8, d, h, w) of the targets and the condition: (B, 8(K-1), d, h, w) for fixed-target
        models, (B, 8K + K, d, h, w) with the target slot zeroed plus one-hot channels if ``unified``.
    """
    b, k = stack.shape[:2]
    coeffs = wavelet.encode(stack)  # (B, 8K, d, h, w); channel 8c + band
    spatial = coeffs.shape[2:]
    n = wavelet.bands
    per_contrast = coeffs.reshape(b, k, n, *spatial)
    onehot = torch.nn.functional.one_hot(targets, k).to(coeffs.dtype)  # (B, K)
    x0 = (per_contrast * onehot.view(b, k, 1, 1, 1, 1)).sum(1)
    if unified:
        kept = per_contrast * (1 - onehot).view(b, k, 1, 1, 1, 1)
        indicator = onehot.view(b, k, 1, 1, 1).expand(b, k, *spatial)
        condition = torch.cat([kept.reshape(b, n * k, *spatial), indicator], dim=1)
    else:
        keep = ~onehot.bool()
        condition = per_contrast[keep].reshape(b, n * (k - 1), *spatial)
    return x0, condition


def coefficient_mask(mask: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """(B, 1, D, H, W) image mask -> (B, 1, D/s, H/s, W/s) float {0, 1}: 1 where any voxel of the s x s x s block
    that a wavelet coefficient covers is masked (non-zero); s = ``scale``, the coder's ``2**wavelet_levels``."""
    return torch.nn.functional.max_pool3d((mask != 0).float(), kernel_size=scale)


def inpainting_condition(wavelet: HaarWavelet3D, voided: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inpainting model's condition: DWT of the voided image and of the binary mask (mask > 0), both (B, 1, D, H, W)
    in the model's grid -> (B, 16, D/2, H/2, W/2)."""
    return torch.cat([wavelet.encode(voided), wavelet.encode((mask > 0).to(voided.dtype))], dim=1)


class InpaintingPrepareBatch(WaveletPrepareBatch):
    """Inpainting batches: the target is the whole ``image``; the condition is `inpainting_condition` of ``voided`` and
    ``mask`` (keys of the batch, each (B, 1, D, H, W); see `wdm_bundle.data.inpainting_training_preprocessing`).

    The returned target has one more channel than the model's output: `coefficient_mask` of the mask, which
    `wdm_bundle.diffusion.InpaintingLoss` uses to weight the loss (SupervisedTrainer passes the target, not the batch,
    to the loss).

    Args:
        num_train_timesteps, wavelet, diffusion, scheduler: as `WaveletPrepareBatch`.
        image_key, voided_key, mask_key: batch keys.
        objective: the DDPM timestep-draw options of `WaveletPrepareBatch` (``ddpm_timestep_draw`` ...); a
            ``loss_weighting`` other than ``uniform`` is refused (the target's extra channel is the mask).
    """

    def __init__(
        self,
        num_train_timesteps: int,
        wavelet: HaarWavelet3D,
        image_key: str = "image",
        voided_key: str = "voided",
        mask_key: str = "mask",
        diffusion: str = Diffusion.DDPM,
        scheduler: Scheduler | None = None,
        **objective: Any,
    ) -> None:
        weighting = LossWeighting.named(objective.get("loss_weighting", LossWeighting.UNIFORM), "loss_weighting").value
        if weighting != LossWeighting.UNIFORM:
            raise ValueError(
                f"loss_weighting='{weighting}' is not supported by inpainting training (its loss is InpaintingLoss, "
                "weighted by the mask): use loss_weighting='uniform'."
            )
        super().__init__(
            num_train_timesteps, wavelet, image_key=image_key, diffusion=diffusion, scheduler=scheduler, **objective
        )
        self.voided_key, self.mask_key = voided_key, mask_key

    def get_inputs(
        self, batchdata: Mapping[str, torch.Tensor], to_device: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean coefficients of the image and the condition, encoded on the device."""
        x0 = self.wavelet.encode(to_device(batchdata[self.image_key]))
        condition = inpainting_condition(
            self.wavelet, to_device(batchdata[self.voided_key]), to_device(batchdata[self.mask_key])
        )
        return x0, condition

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        x0, target, args, infer_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        # the mask's low-pass coefficient (the first condition channel of the mask) is > 0 exactly where
        # `coefficient_mask` is 1 (the mask is >= 0): derived on the device from the condition already there
        n = self.wavelet.bands
        weight = (infer_kwargs["condition"][:, n : n + 1] > 0).to(target.dtype)
        return x0, torch.cat([target, weight], dim=1), args, infer_kwargs


def label_condition(wavelet: HaarWavelet3D, conditions: torch.Tensor) -> torch.Tensor:
    """The label-conditioned model's condition: the DWT of the one-hot channels (B, 1 + L, D, H, W) in {0, 1}
    ([brain mask, label == l, ...], `wdm_bundle.data.label_maps.one_hot_conditions`) -> (B, 8(1 + L), D/2, H/2, W/2)."""
    return wavelet.encode(conditions)


class LabelConditionPrepareBatch(WaveletPrepareBatch):
    """Label-conditioned batches: the target is all K contrasts ``images`` (B, K, D, H, W) at once; the condition is
    `label_condition` of ``conditions`` (B, 1 + L, D, H, W) (see `wdm_bundle.data.label_maps`).

    Args:
        num_train_timesteps, wavelet, diffusion, scheduler: as `WaveletPrepareBatch`.
        num_contrasts: K, the generated contrasts.
        num_conditions: 1 + L, the brain mask and one channel per label value.
        image_key, condition_key: batch keys.
        objective: the DDPM objective options of `WaveletPrepareBatch` (``loss_weighting`` ...).
    """

    def __init__(
        self,
        num_train_timesteps: int,
        wavelet: HaarWavelet3D,
        num_contrasts: int,
        num_conditions: int,
        image_key: str = "images",
        condition_key: str = "conditions",
        diffusion: str = Diffusion.DDPM,
        scheduler: Scheduler | None = None,
        **objective: Any,
    ) -> None:
        super().__init__(
            num_train_timesteps,
            wavelet,
            image_key=image_key,
            condition_name=condition_key,
            diffusion=diffusion,
            scheduler=scheduler,
            **objective,
        )
        if num_contrasts < 1 or num_conditions < 2:
            raise ValueError(
                f"num_contrasts must be >= 1 and num_conditions >= 2 (brain mask + a label), got {num_contrasts}, "
                f"{num_conditions}."
            )
        self.num_contrasts, self.num_conditions = num_contrasts, num_conditions

    def get_inputs(
        self, batchdata: Mapping[str, torch.Tensor], to_device: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean coefficients of the contrasts (B, 8K, ...) and the condition (B, 8(1 + L), ...), on the device."""
        images, conditions = to_device(batchdata[self.image_key]), to_device(batchdata[self.condition_name])
        if images.shape[1] != self.num_contrasts or conditions.shape[1] != self.num_conditions:
            raise ValueError(
                f"expected {self.num_contrasts} contrast and {self.num_conditions} condition channels, got shapes "
                f"{tuple(images.shape)} and {tuple(conditions.shape)}."
            )
        return self.wavelet.encode(images), label_condition(self.wavelet, conditions)
