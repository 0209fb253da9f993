"""`InpaintingLoss`: the wavelet-space MSE over the whole volume or only where the inpainting mask is."""

from __future__ import annotations

import torch
from torch import nn

from wdm_bundle.diffusion.schedulers import ClosedSet

__all__ = ["LossRegion", "InpaintingLoss"]


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
