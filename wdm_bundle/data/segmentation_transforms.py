"""BraTS tumour-segmentation data: label maps <-> TC/WT/ET region channels, intensity normalisation, preprocessing.

BraTS 2023 labels: 0 background, 1 NCR (necrotic core), 2 SNFH (oedema), 3 ET (enhancing tumour); the regions a
segmenter predicts (one sigmoid channel each, nested ET <= TC <= WT) are TC = {1, 3}, WT = {1, 2, 3}, ET = {3}.
MONAI's `ConvertToMultiChannelBasedOnBratsClassesd` assumes the pre-2023 ET label 4, so it would find no ET here.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandFlipd,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    SpatialPadd,
    Transform,
)

__all__ = [
    "BRATS_LABELS",
    "REGIONS",
    "labels_to_regions",
    "regions_to_labels",
    "normalize_intensity",
    "BratsRegionsd",
    "ClipScaled",
    "TorchSeeded",
    "segmentation_preprocessing",
]

#: BraTS 2023 label values of NCR, SNFH and ET (pre-2023 data sets: (1, 2, 4)).
BRATS_LABELS: tuple[int, int, int] = (1, 2, 3)
#: The region channels, in the order segmenters output them.
REGIONS: tuple[str, str, str] = ("TC", "WT", "ET")


def _spatial(seg: Any) -> Any:
    """``seg`` (..., X, Y, Z) with leading singleton dims dropped -> (X, Y, Z)."""
    if seg.ndim < 3 or int(np.prod(seg.shape[:-3])) != 1:
        raise ValueError(f"a label map must be (X, Y, Z) or (1, X, Y, Z), got shape {tuple(seg.shape)}.")
    return seg.reshape(tuple(seg.shape[-3:]))


def labels_to_regions(seg: Any, labels: Sequence[int] = BRATS_LABELS) -> Any:
    """BraTS label map (..., X, Y, Z) (ints; leading dims of size 1) -> (3, X, Y, Z) float32 {0, 1}: TC, WT, ET.

    ``labels``: the values of NCR, SNFH, ET. Torch in, torch out (same device); numpy otherwise.
    """
    ncr, snfh, et = (int(v) for v in labels)
    if isinstance(seg, torch.Tensor):
        s = _spatial(seg.round().to(torch.int64) if seg.is_floating_point() else seg.to(torch.int64))
        tc = (s == ncr) | (s == et)
        return torch.stack([tc, tc | (s == snfh), s == et]).to(torch.float32)
    s = _spatial(np.rint(np.asarray(seg)).astype(np.int64))
    tc = (s == ncr) | (s == et)
    return np.stack([tc, tc | (s == snfh), s == et]).astype(np.float32)


def regions_to_labels(regions: Any, labels: Sequence[int] = BRATS_LABELS) -> np.ndarray:
    """(3, X, Y, Z) TC/WT/ET (bool or {0, 1}, torch or numpy) -> (X, Y, Z) uint8 BraTS labels.

    ET -> ET label, TC minus ET -> NCR, WT minus TC -> SNFH (BraTS convention), so that
    ``labels_to_regions(regions_to_labels(r)) == r`` for nested regions (ET <= TC <= WT).
    """
    r = regions.detach().cpu().numpy() if isinstance(regions, torch.Tensor) else np.asarray(regions)
    if r.ndim != 4 or r.shape[0] != 3:
        raise ValueError(f"regions must be (3, X, Y, Z) (TC, WT, ET), got shape {r.shape}.")
    r = r > 0.5 if r.dtype != bool else r
    ncr, snfh, et = (int(v) for v in labels)
    out = np.zeros(r.shape[1:], np.uint8)
    out[r[1]] = snfh
    out[r[0]] = ncr
    out[r[2]] = et
    return out


def normalize_intensity(image: Any, clip_percentiles: Sequence[float] = (0.1, 99.9)) -> torch.Tensor:
    """Per channel of (C, X, Y, Z) raw intensities: clip to its ``clip_percentiles`` and scale them to [0, 1].

    A constant channel (e.g. all zeros) becomes zeros (no division by 0). Returns float32, on ``image``'s device.
    Training (`ClipScaled`) and inference (`Segmenter`) both call this.
    """
    lo, hi = (float(p) for p in clip_percentiles)
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"clip_percentiles must be (lower, upper) with 0 <= lower < upper <= 100, got {[lo, hi]}.")
    x = torch.as_tensor(image).to(torch.float32)
    out = torch.zeros_like(x)
    for c in range(x.shape[0]):
        # numpy: torch.quantile refuses inputs of more than 16M voxels
        a, b = np.percentile(x[c].detach().cpu().numpy(), [lo, hi])
        if b > a:
            out[c] = ((x[c].clamp(float(a), float(b)) - float(a)) / float(b - a)).to(out.dtype)
    return out


class ClipScaled(MapTransform):
    """`normalize_intensity` of each key's (C, X, Y, Z) item (metadata kept)."""

    def __init__(self, keys: KeysCollection, clip_percentiles: Sequence[float], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.clip_percentiles = [float(p) for p in clip_percentiles]
        normalize_intensity(torch.zeros(1, 1, 1, 1), self.clip_percentiles)  # checks them now

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            scaled = normalize_intensity(d[key], self.clip_percentiles)
            d[key] = d[key].clone().copy_(scaled) if isinstance(d[key], torch.Tensor) else scaled
        return d


class BratsRegionsd(MapTransform):
    """BraTS label maps (1, X, Y, Z) -> (3, X, Y, Z) float32 TC/WT/ET (`labels_to_regions`), in place or under
    ``output_keys``; a label value other than 0 and ``labels`` is an error naming the file (e.g. ET 4 of pre-2023
    data: pass ``labels=(1, 2, 4)``)."""

    def __init__(
        self,
        keys: KeysCollection,
        labels: Sequence[int] = BRATS_LABELS,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.labels = tuple(int(v) for v in labels)
        if len(self.labels) != 3 or len(set(self.labels)) != 3 or 0 in self.labels:
            raise ValueError(f"labels must be 3 distinct non-zero values (NCR, SNFH, ET), got {list(labels)}.")
        out = self.keys if output_keys is None else ([output_keys] if isinstance(output_keys, str) else output_keys)
        if len(out) != len(self.keys):
            raise ValueError(f"give one output key per key: keys {list(self.keys)}, output_keys {list(out)}.")
        self.output_keys = dict(zip(self.keys, out))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            seg = torch.as_tensor(d[key])
            unknown = sorted(set(torch.unique(seg).round().to(torch.int64).tolist()) - {0, *self.labels})
            if unknown:
                source = getattr(d[key], "meta", {}).get("filename_or_obj", key)
                raise ValueError(
                    f"'{source}': label values {unknown} are not background 0 or {list(self.labels)} (NCR, SNFH, ET); "
                    "for pre-2023 BraTS (ET = 4) set labels to [1, 2, 4]."
                )
            regions = labels_to_regions(seg, self.labels)
            meta = getattr(d[key], "meta", None)
            d[self.output_keys[key]] = type(d[key])(regions, meta=dict(meta)) if meta is not None else regions
        return d


class TorchSeeded(Randomizable, Transform):
    """Run ``transform`` (MONAI random transforms) re-seeded from torch's global generator on every call.

    MONAI random transforms draw from their own numpy generators, which a training checkpoint does not save; seeding
    them from torch's generator (saved and restored by `TrainingCheckpointer`, seeded per worker by the data loader)
    keeps a resumed run's augmentations those of an uninterrupted run.
    """

    def __init__(self, transform: Randomizable) -> None:
        self.transform = transform
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        self._seed = int(torch.randint(0, 2**31 - 1, (1,)))

    def __call__(self, data: Any) -> Any:
        self.randomize()
        self.transform.set_random_state(seed=self._seed)
        return self.transform(data)


def segmentation_preprocessing(
    contrasts: Sequence[str],
    clip_percentiles: Sequence[float],
    roi_size: Sequence[int],
    train: bool,
    labels: Sequence[int] = BRATS_LABELS,
) -> Compose:
    """Preprocessing of one case ``{contrast: file, ..., "seg": file}`` into ``image`` (C, X, Y, Z) float32 in [0, 1]
    (``contrasts`` stacked in order, RAS, `normalize_intensity`) and ``label`` (3, X, Y, Z) float32 TC/WT/ET.

    With ``train``: padded to at least ``roi_size`` (zeros), then (re-seeded from torch, `TorchSeeded`) a random
    ``roi_size`` crop, a flip of each axis with probability 0.5 and a random intensity scale and shift of 0.1
    (MONAI model zoo ``brats_mri_segmentation``).
    """
    contrasts = list(contrasts)
    roi = [int(s) for s in roi_size]
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi_size must be 3 sizes >= 1, got {list(roi_size)}.")
    keys = [*contrasts, "seg"]
    both = ["image", "label"]
    transforms = [
        LoadImaged(keys, image_only=True),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS"),
        ClipScaled(contrasts, clip_percentiles),
        ConcatItemsd(contrasts, name="image", dim=0),
        BratsRegionsd("seg", labels, output_keys="label"),
        DeleteItemsd(keys),
        EnsureTyped(both, dtype=torch.float32, track_meta=False),
    ]
    if train:
        augment = Compose(
            [
                RandSpatialCropd(both, roi_size=roi, random_size=False),
                *(RandFlipd(both, prob=0.5, spatial_axis=axis) for axis in range(3)),
                RandScaleIntensityd("image", factors=0.1, prob=1.0),
                RandShiftIntensityd("image", offsets=0.1, prob=1.0),
            ]
        )
        transforms += [SpatialPadd(both, spatial_size=roi), TorchSeeded(augment)]
    return Compose(transforms)
