"""Wavelet-space losses: `InpaintingLoss` (the MSE over the whole volume or only where the inpainting mask is) and
`WeightedDiffusionLoss` (the MSE weighted per sample by its timestep's `LossWeighting`)."""

from __future__ import annotations

import torch
from torch import nn

from wdm_bundle.diffusion.schedulers import ClosedSet, Diffusion
from wdm_bundle.diffusion.weighting import LossWeighting

__all__ = ["LossRegion", "InpaintingLoss", "WeightedDiffusionLoss", "training_loss"]


class LossRegion(ClosedSet):
    """Where the inpainting loss is taken: ``volume`` (every coefficient, the paper's MSE) or ``mask`` (only the
    coefficients whose 2x2x2 block touches the mask: the model is judged only where it has to invent tissue)."""

    VOLUME = "volume"
    MASK = "mask"


class InpaintingLoss(nn.Module):
    """MSE between the prediction (B, C, d, h, w) and ``target`` (B, C + 1, d, h, w), whose last channel is the
    coefficient mask of `wdm_bundle.engines.InpaintingPrepareBatch` (1 = the block touches the mask).

    ``region="volume"`` equals ``MSELoss()(pred, target[:, :-1])``. ``region="mask"`` is the mean squared error over
    the masked positions (all C channels there); a batch without a masked position gives 0.
    """

    def __init__(self, region: str = LossRegion.VOLUME) -> None:
        super().__init__()
        self.region = LossRegion(region)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] != pred.shape[1] + 1 or target.shape[2:] != pred.shape[2:]:
            raise ValueError(
                f"target {tuple(target.shape)} must be the prediction {tuple(pred.shape)} plus one mask channel."
            )
        squared = (pred - target[:, :-1]) ** 2
        if self.region == LossRegion.VOLUME:
            return squared.mean()
        weight = target[:, -1:]
        count = weight.sum() * pred.shape[1]
        return (squared * weight).sum() / count.clamp(min=1.0)


class WeightedDiffusionLoss(nn.Module):
    """Per-sample weighted MSE between the prediction (B, C, ...) and ``target`` (B, C + 1, ...), whose last channel
    holds each sample's weight (constant over the volume; `wdm_bundle.engines.WaveletPrepareBatch` with a
    non-uniform ``loss_weighting``): ``mean((pred - target[:, :-1]) ** 2 * target[:, -1:])``, i.e. the mean over the
    batch of weight_b * MSE_b."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if (
            target.shape[1] != pred.shape[1] + 1
            or target.shape[2:] != pred.shape[2:]
            or target.shape[0] != pred.shape[0]
        ):
            raise ValueError(
                f"target {tuple(target.shape)} must be the prediction {tuple(pred.shape)} plus one weight channel "
                "(a WaveletPrepareBatch with the same loss_weighting)."
            )
        return ((pred - target[:, :-1]) ** 2 * target[:, -1:]).mean()


def training_loss(loss_weighting: str = LossWeighting.UNIFORM, diffusion: str = Diffusion.DDPM) -> nn.Module:
    """The loss of a training run: ``torch.nn.MSELoss()`` for ``uniform`` (the paper), else `WeightedDiffusionLoss`.

    Raises:
        ValueError: an unknown weighting (listing the allowed ones), or a non-uniform one for a rectified flow.
    """
    try:
        weighting = LossWeighting(loss_weighting)
    except ValueError as e:
        raise ValueError(f"loss_weighting: {e}") from None
    if weighting == LossWeighting.UNIFORM:
        return nn.MSELoss()
    if Diffusion(diffusion) != Diffusion.DDPM:
        raise ValueError(
            f"loss_weighting='{weighting.value}' weights the x0 loss of diffusion='ddpm'; rectified flow "
            f"(diffusion='{Diffusion(diffusion).value}') trains with loss_weighting='uniform'."
        )
    return WeightedDiffusionLoss()
