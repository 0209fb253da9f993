"""`WaveletPrepareBatch`: MONAI's `DiffusionPrepareBatch` with the DWT done on the training device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines.utils import DiffusionPrepareBatch

from wdm_bundle.wavelets import HaarWavelet3D

__all__ = ["WaveletPrepareBatch"]


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class WaveletPrepareBatch(DiffusionPrepareBatch):
    """Turn a batch of images into (x0, x0 target, noise, timesteps) in wavelet space.

    The images (B, C, D, H, W) are moved to the device, then encoded there to coefficients
    (B, 8C, D/2, H/2, W/2); the target is the clean coefficients (x0 prediction). Condition
    images under ``condition_name`` are encoded the same way and passed to the inferer.

    Args:
        num_train_timesteps: T; timesteps are drawn uniformly from [0, T).
        wavelet: the coder, normally ``network.wavelet``.
        image_key: batch key of the target images.
        condition_name: batch key of condition images, or None for unconditional training.
    """

    def __init__(
        self,
        num_train_timesteps: int,
        wavelet: HaarWavelet3D,
        image_key: str = "image",
        condition_name: str | None = None,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, condition_name=condition_name)
        self.wavelet = wavelet
        self.image_key = image_key

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The network predicts x0, so the target is the clean coefficients."""
        return images

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images = _plain(batchdata[self.image_key]).to(device, non_blocking=non_blocking, **kwargs)
        x0 = self.wavelet.encode(images)
        noise = self.get_noise(x0)
        timesteps = self.get_timesteps(x0)
        infer_kwargs: dict[str, torch.Tensor] = {"noise": noise, "timesteps": timesteps}
        if self.condition_name is not None:
            condition = _plain(batchdata[self.condition_name]).to(device, non_blocking=non_blocking, **kwargs)
            infer_kwargs["condition"] = self.wavelet.encode(condition)
        return x0, self.get_target(x0, noise, timesteps), (), infer_kwargs
