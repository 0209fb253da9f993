"""The one definition of the cWDM preprocessing (training and inference alike) and the grid framing it uses.

Framing is MONAI's invertible `ResizeWithPadOrCropd`: every pad and crop is recorded on the
`MetaTensor` and undone exactly by `invert_framing` (MONAI `Invertd`), whatever the sizes; a fresh
pad/crop back to the input size is not an inverse for odd size differences (155 -> 160 pads
2 + 3, but 160 -> 155 crops 3 + 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    DivisiblePadd,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)
from monai.utils import StrEnum

__all__ = ["Placement", "framing_transform", "synthesis_preprocessing", "invert_framing", "training_spacing"]


class Placement(StrEnum):
    """Where padding goes when an axis is smaller than the framed size (crops are always centred).

    ``symmetric``: half before, half after (the odd voxel after), as MONAI pads; the reference WDM
    framing of BraTS (240x240x155 into 256^3 at [8:248, 8:248, 50:205]) is this. ``end``: all
    padding after the last voxel, as the reference cWDM pads 155 -> 160 slices (ARCHITECTURE.md §5).
    """

    SYMMETRIC = "symmetric"
    END = "end"


def framing_transform(
    keys: str | Sequence[str],
    pad_crop_size: Sequence[int] | None,
    placement: str = Placement.SYMMETRIC,
    size_multiple: int | None = None,
    allow_missing_keys: bool = False,
):
    """Invertible pad/crop of (C, D, H, W) items to ``pad_crop_size``, or (no ROI) pad up to a multiple of ``size_multiple``.

    Raises:
        ValueError: an unknown ``placement`` (the message lists the allowed ones) or neither size given.
    """
    method = Placement(placement).value
    if pad_crop_size:
        return ResizeWithPadOrCropd(
            keys, spatial_size=[int(s) for s in pad_crop_size], method=method, allow_missing_keys=allow_missing_keys
        )
    if not size_multiple:
        raise ValueError("framing needs pad_crop_size or size_multiple (the network's input multiple).")
    return DivisiblePadd(keys, k=int(size_multiple), method=method, allow_missing_keys=allow_missing_keys)


def synthesis_preprocessing(
    contrasts: Sequence[str],
    pad_crop_size: Sequence[int] | None,
    placement: str = Placement.END,
    clip_percentiles: Sequence[float] = (0.1, 99.9),
    data_range: Sequence[float] = (0.0, 1.0),
    size_multiple: int | None = None,
    load: bool = True,
    stack_key: str | None = "images",
) -> Compose:
    """cWDM preprocessing of one case ``{contrast: file or (D, H, W) / (1, D, H, W) volume}``.

    Per contrast: channel first, clip to the ``clip_percentiles`` of its voxels and scale them to
    [0, 1] (the reference's normalisation), frame the grid (`framing_transform`, zero padding), then
    map [0, 1] linearly to ``data_range``. With ``stack_key`` the contrasts are concatenated in ``contrasts`` order
    into one (K, D', H', W') float32 tensor (training); without it each stays a (1, D', H', W')
    `MetaTensor` that remembers its framing for `invert_framing` (inference, where missing contrasts
    are simply absent keys).
    """
    keys = list(contrasts)
    if len(data_range) != 2 or float(data_range[0]) >= float(data_range[1]):
        raise ValueError(f"data_range must be (min, max) with min < max, got {list(data_range)}.")
    lo, hi = (float(p) for p in clip_percentiles)
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"clip_percentiles must be (lower, upper) with 0 <= lower < upper <= 100, got {[lo, hi]}.")
    missing_ok = stack_key is None
    transforms = [LoadImaged(keys, image_only=True)] if load else []
    transforms += [
        EnsureChannelFirstd(keys, channel_dim=None if load else "no_channel", allow_missing_keys=missing_ok),
        ScaleIntensityRangePercentilesd(
            keys, lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True, allow_missing_keys=missing_ok
        ),
        framing_transform(keys, pad_crop_size, placement, size_multiple, allow_missing_keys=missing_ok),
    ]
    if tuple(map(float, data_range)) != (0.0, 1.0):  # after framing: padding is background, data_range[0]
        transforms.append(
            ScaleIntensityRanged(
                keys,
                a_min=0.0,
                a_max=1.0,
                b_min=float(data_range[0]),
                b_max=float(data_range[1]),
                allow_missing_keys=missing_ok,
            )
        )
    if stack_key is not None:
        transforms += [
            ConcatItemsd(keys, name=stack_key, dim=0),
            DeleteItemsd(keys),
            EnsureTyped(stack_key, dtype=torch.float32, track_meta=False),
        ]
    return Compose(transforms)


def invert_framing(volume: torch.Tensor, like: MetaTensor, preprocessing: Compose, key: str) -> torch.Tensor:
    """Undo the framing of ``preprocessing`` on ``volume`` (1, D', H', W'), exactly as it was applied to ``like``.

    ``like`` is the preprocessed item ``key``; returns a (1, D, H, W) tensor on the input grid.
    Intensity steps are not inverted (`Invertd` skips non-invertible transforms).
    """
    data = {key: like, "_pred": MetaTensor(torch.as_tensor(volume).detach())}
    inverted = Invertd("_pred", preprocessing, orig_keys=key, nearest_interp=False, to_tensor=True)(data)["_pred"]
    return torch.as_tensor(inverted)


def training_spacing(
    datalist: Sequence[Mapping[str, str]],
    key: str = "image",
    image_size: Sequence[int] | None = None,
    pad_crop_size: Sequence[int] | None = None,
    orientation: str | None = "RAS",
) -> list[float]:
    """Voxel size (mm, per axis of the network's grid) of the training volumes after preprocessing.

    The first file's voxel size (header only), in the axis order after reorienting to ``orientation``,
    times the resampling factor: the framed size (``pad_crop_size``, else the file's shape) over ``image_size``.
    Generation writes its samples with it.
    """
    path = datalist[0][key]
    img = nib.load(path)
    if orientation:  # axis order after MONAI's Orientationd; RAS and LPS share it
        img = nib.as_closest_canonical(img)
    zooms = np.asarray(img.header.get_zooms()[:3], float)
    frame = np.asarray(pad_crop_size or img.shape[:3], float)
    size = np.asarray(image_size or frame, float)
    return [round(float(v), 6) for v in zooms * frame / size]
