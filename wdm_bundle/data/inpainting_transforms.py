"""Preprocessing of inpainting data (BraTS "Local Synthesis"), the same at training and at inference.

Items hold an ``image`` (the complete t1n, training only), a ``voided`` image (the region to inpaint set to 0) and
a binary ``mask`` (1 = inpaint). Intensities of all images are clipped to percentiles of the VOIDED image and scaled
to [0, 1], because at inference the voided image is all there is; then all keys are oriented, padded/cropped and
area-resized alike, and the images mapped to the model's ``data_range``. The mask stays a fraction after resizing:
a model voxel is inpainted where it is > 0 (any of its voxels is).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import monai.transforms as mt
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms.utils_pytorch_numpy_unification import percentile

from wdm_bundle.data.masks import random_healthy_mask

__all__ = [
    "IMAGE",
    "VOIDED",
    "MASK",
    "LESION",
    "VoidImaged",
    "ScaleByPercentilesOfd",
    "RandomHealthyMaskd",
    "inpainting_framing",
    "inpainting_training_preprocessing",
]

IMAGE, VOIDED, MASK, LESION = "image", "voided", "mask", "mask_unhealthy"


def _binary(mask: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(mask) != 0


def _binary_float(mask: torch.Tensor) -> torch.Tensor:
    return (mask != 0).float()


class VoidImaged(mt.MapTransform):
    """``item[voided_key]``: a copy of ``item[image_key]`` (C, D, H, W) with the voxels where ``item[mask_key]`` is
    non-zero set to 0, as the challenge's ``-t1n-voided`` files are made."""

    def __init__(self, image_key: str = IMAGE, mask_key: str = MASK, voided_key: str = VOIDED) -> None:
        super().__init__([image_key, mask_key])
        self.image_key, self.mask_key, self.voided_key = image_key, mask_key, voided_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image, mask = d[self.image_key], d[self.mask_key]
        if tuple(image.shape[1:]) != tuple(mask.shape[1:]):
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} must be on one grid.")
        voided = image.clone()
        voided[_binary(mask).expand_as(voided)] = 0
        d[self.voided_key] = voided
        return d


class ScaleByPercentilesOfd(mt.MapTransform):
    """Clip ``keys`` to the [``lower``, ``upper``] percentiles of ``item[reference]``'s voxels and scale them to
    [0, 1] (MONAI's `ScaleIntensityRangePercentilesd` computes each key's own percentiles; here all keys share the
    reference's, so that a target and its voided input keep one intensity scale)."""

    def __init__(self, keys: KeysCollection, reference: str, lower: float, upper: float) -> None:
        super().__init__(keys)
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}.")
        self.reference, self.lower, self.upper = reference, float(lower), float(upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = torch.as_tensor(d[self.reference])
        lo, hi = (float(percentile(ref, q)) for q in (self.lower, self.upper))
        scale = mt.ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
        for key in self.key_iterator(d):
            d[key] = scale(d[key])
        return d


class RandomHealthyMaskd(mt.Randomizable, mt.MapTransform):
    """Give an item without ``mask_key`` (a training case without a ``-mask-healthy`` file) a random healthy-tissue
    mask: a tumour-like blob inside the brain (``image > 0``), away from ``item[lesion_key]`` when present
    (`wdm_bundle.data.masks.random_healthy_mask`, the challenge's recipe). An item with a mask keeps it, or with
    probability ``prob`` gets a fresh random one instead (augmentation: one fixed mask per case is learnt by heart on
    small data sets); with ``prob`` 0 such items draw nothing. The mask (1, D, H, W) float32 gets the image's
    metadata (affine). Randomizable, so that MONAI's cached datasets stop caching before it."""

    def __init__(
        self,
        image_key: str = IMAGE,
        mask_key: str = MASK,
        lesion_key: str = LESION,
        fraction: float | Sequence[float] = (0.01, 0.04),
        prob: float = 0.0,
    ) -> None:
        mt.MapTransform.__init__(self, [image_key], allow_missing_keys=False)
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}.")
        self.prob = float(prob)
        self.image_key, self.mask_key, self.lesion_key = image_key, mask_key, lesion_key
        self.fraction = fraction
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        # torch's generator, not self.R: the training checkpoint saves and restores it (and DataLoader workers seed
        # it per epoch), so a resumed run draws the same masks as an uninterrupted one
        self._seed = int(torch.randint(0, 2**31 - 1, (1,)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if d.get(self.mask_key) is not None:
            if self.prob == 0.0 or (self.prob < 1.0 and float(torch.rand(())) >= self.prob):
                return d
        self.randomize()
        image = d[self.image_key]
        lesion = d.get(self.lesion_key)
        drawn = random_healthy_mask(
            np.asarray(torch.as_tensor(image)[0]),
            None if lesion is None else np.asarray(torch.as_tensor(lesion)[0]),
            seed=self._seed,
            fraction=self.fraction,
        )
        mask = torch.from_numpy(drawn.astype(np.float32))[None]
        d[self.mask_key] = MetaTensor(mask, meta=dict(image.meta)) if isinstance(image, MetaTensor) else mask
        return d


def inpainting_framing(
    image_keys: Sequence[str],
    reference: str,
    mask_key: str = MASK,
    orientation: str | None = "RAS",
    clip_percentiles: Sequence[float] = (0.1, 99.9),
    pad_crop_size: Sequence[int] | None = None,
    placement: str = "symmetric",
    image_size: Sequence[int] | None = None,
    data_range: Sequence[float] = (0.0, 1.0),
) -> list[mt.Transform]:
    """The transforms after loading, on channel-first items: orient all keys, scale ``image_keys`` by the percentiles
    of ``reference`` (before framing, so that padding is background), pad/crop and area-resize all keys, map the
    images from [0, 1] to ``data_range``. Every spatial step is invertible (MONAI `Invertd`)."""
    keys = [*image_keys, mask_key]
    transforms: list[mt.Transform] = []
    if orientation:
        transforms.append(mt.Orientationd(keys, axcodes=orientation))
    transforms.append(ScaleByPercentilesOfd(image_keys, reference, *clip_percentiles))
    if pad_crop_size:
        transforms.append(mt.ResizeWithPadOrCropd(keys, spatial_size=[int(s) for s in pad_crop_size], method=placement))
    if image_size:
        transforms.append(mt.Resized(keys, spatial_size=[int(s) for s in image_size], mode="area"))
    lo, hi = (float(v) for v in data_range)
    transforms.append(mt.ScaleIntensityRanged(image_keys, a_min=0.0, a_max=1.0, b_min=lo, b_max=hi))
    return transforms


def inpainting_training_preprocessing(
    pad_crop_size: Sequence[int] | None,
    placement: str,
    clip_percentiles: Sequence[float],
    data_range: Sequence[float],
    image_size: Sequence[int] | None,
    orientation: str | None = "RAS",
    mask_fraction: float | Sequence[float] = (0.01, 0.04),
    random_mask_prob: float = 0.0,
) -> mt.Compose:
    """Training items ``{"image", "mask"?, "mask_unhealthy"?}`` (file paths; ``mask`` the healthy mask) ->
    ``{"image", "voided", "mask"}`` float32 (1, D', H', W') tensors: the healthy mask file, else (or with probability
    ``random_mask_prob``) a random healthy mask (`RandomHealthyMaskd`, away from the lesion), voided as the
    challenge does (`VoidImaged`), then `inpainting_framing` with the voided image as the intensity reference,
    exactly as `wdm_bundle.engines.inpaint_volume` prepares a case at inference."""
    files = [IMAGE, MASK, LESION]
    return mt.Compose(
        [
            mt.LoadImaged(files, image_only=True, allow_missing_keys=True),
            mt.EnsureChannelFirstd(files, allow_missing_keys=True),
            RandomHealthyMaskd(fraction=mask_fraction, prob=random_mask_prob),
            mt.DeleteItemsd(LESION),
            mt.Lambdad(MASK, _binary_float),
            VoidImaged(),
            *inpainting_framing(
                [IMAGE, VOIDED],
                VOIDED,
                MASK,
                orientation,
                clip_percentiles,
                pad_crop_size,
                placement,
                image_size,
                data_range,
            ),
            mt.EnsureTyped([IMAGE, VOIDED, MASK], dtype=torch.float32, track_meta=False),
        ]
    )
