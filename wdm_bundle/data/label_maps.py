"""Tumour label maps as conditions: checking them, finding each case's brain mask, one-hot conditions, training items.

A label-conditioned model (`configs/train_label2image.json`) generates MR contrasts from a BraTS label map
(0 background, 1 NCR, 2 SNFH, 3 ET; the values are the config key ``labels``) plus a brain mask. Its conditions are
the one-hot channels ``[brain mask, label == labels[0], label == labels[1], ...]``, each {0, 1}.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, MapTransform

from wdm_bundle.data.datalists import build_datalist
from wdm_bundle.data.io import CONTRASTS, NIFTI_SUFFIXES, load_nifti, spatial_shape
from wdm_bundle.data.segmentation_transforms import BRATS_LABELS
from wdm_bundle.data.transforms import Placement, framing_transform, synthesis_preprocessing
from wdm_bundle.data.validation import InvalidDataError

__all__ = [
    "LabelConditionsd",
    "brain_mask_file",
    "check_case_name",
    "check_suffix",
    "label_datalist",
    "label_generation_preprocessing",
    "nifti_file",
    "one_hot_conditions",
    "validate_label_maps",
]

_SUFFIX = re.compile(r"^[-_][A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_suffix(suffix: str, name: str) -> str:
    """``suffix`` (e.g. ``-seg``) if it is a plain file-name ending, else a ValueError naming the key ``name``."""
    if not isinstance(suffix, str) or not _SUFFIX.match(suffix) or ".." in suffix:
        raise ValueError(
            f"{name} must look like '-seg' (a '-' or '_' then letters, digits, '_.-'), got {suffix!r:.80}."
        )
    return suffix


def check_case_name(case: str) -> str:
    """``case`` if it is a plain folder name (no path separator, no ``..``), else a ValueError naming it."""
    if not isinstance(case, str) or not _CASE.match(case) or ".." in case:
        raise ValueError(f"case name {case!r:.80} is not a plain folder name (letters, digits, '_.-').")
    return case


def nifti_file(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / f"{stem}{ext}" for ext in NIFTI_SUFFIXES) if p.is_file()), None)


def brain_mask_file(folder: str | os.PathLike, case: str, brainmask_suffix: str = "-brainmask") -> str:
    """The file whose non-zero voxels are the brain of ``case``: ``<folder>/<case><brainmask_suffix>.nii[.gz]``, else
    the first present contrast file ``<case>-{t1n,t1c,t2w,t2f}`` (skull-stripped images are 0 outside the brain).

    Raises:
        FileNotFoundError: neither exists; the message names the case and its folder.
    """
    folder, case = Path(folder), check_case_name(case)
    for stem in (case + check_suffix(brainmask_suffix, "brainmask_suffix"), *(f"{case}-{c}" for c in CONTRASTS)):
        found = nifti_file(folder, stem)
        if found is not None:
            return str(found)
    raise FileNotFoundError(
        f"case '{case}' in '{folder}' has no brain mask: no '{case}{brainmask_suffix}.nii.gz' and no contrast file "
        f"({', '.join(f'{case}-{c}.nii.gz' for c in CONTRASTS)}) to take the non-zero voxels of."
    )


def label_datalist(
    dataset_dir: str | os.PathLike | None,
    datalist: str | os.PathLike | None,
    contrasts: Sequence[str],
    label_suffix: str = "-seg",
    brainmask_suffix: str = "-brainmask",
    split: str = "training",
) -> list[dict[str, str]]:
    """Training entries ``{"case", <contrast>: file, ..., "seg": file, "brainmask": file}`` (`build_datalist`);
    ``brainmask`` is `brain_mask_file` of the label map's folder."""
    keys = {c: c for c in contrasts} | {"seg": check_suffix(label_suffix, "label_suffix")[1:]}
    entries = build_datalist(dataset_dir, datalist, keys, split)
    return [{**e, "brainmask": brain_mask_file(Path(e["seg"]).parent, e["case"], brainmask_suffix)} for e in entries]


def _label_problem(
    path: str, reference: str | None, labels: Sequence[int], allow_empty: bool, atol: float
) -> str | None:
    try:
        img, data = load_nifti(path)
    except Exception as e:  # nibabel raises many types for broken files
        return f"cannot be read as NIfTI ({type(e).__name__}: {e})"
    if data.ndim != 3:
        return f"is {len(img.shape)}D with shape {tuple(img.shape)}; a label map must be 3D (D, H, W)"
    if not np.isfinite(data).all():
        return f"contains {int((~np.isfinite(data)).sum())} NaN/inf voxels; a label map holds integers"
    if not np.array_equal(data, np.round(data)):
        odd = np.unique(data[data != np.round(data)])[:5]
        return f"holds non-integer values (e.g. {', '.join(f'{v:g}' for v in odd)}); a label map holds integers"
    values = set(np.unique(data).astype(int).tolist())
    unknown = sorted(values - {0, *labels})
    if unknown:
        return f"holds label values {unknown} outside {{0}} + labels {list(labels)}"
    if not allow_empty and not values & set(labels):
        return f"is empty: no tumour label ({list(labels)}) at all (allow_empty_labels true accepts it)"
    if reference is None:
        return None
    try:
        ref = nib.load(reference)
        ref_shape = spatial_shape(ref.shape)
    except Exception as e:
        return f"its brain mask/reference image '{reference}' cannot be read ({type(e).__name__}: {e})"
    if ref_shape != data.shape:
        return f"has shape {data.shape} but its brain mask/reference image '{reference}' has {ref_shape}"
    if not np.allclose(img.affine, ref.affine, atol=atol):
        return f"has an affine that differs from its brain mask/reference image '{reference}' (tolerance {atol})"
    return None


def validate_label_maps(
    entries: Iterable[Mapping[str, str]],
    labels: Sequence[int] = BRATS_LABELS,
    allow_empty: bool = False,
    label_key: str = "seg",
    reference_key: str | None = "brainmask",
    atol: float = 1e-3,
) -> int:
    """Read every label map ``entry[label_key]`` and check it before any work; returns the number checked.

    A label map must be a readable 3D volume of integers in {0} + ``labels``, with at least one tumour voxel unless
    ``allow_empty``, on the grid (shape, affine within ``atol``) of ``entry[reference_key]`` (its brain mask or the
    contrast the mask is taken from).

    Raises:
        InvalidDataError: listing every bad file with its problem (path: problem).
    """
    entries = list(entries)
    if not entries:
        raise InvalidDataError("no label maps: the list of cases is empty.")
    labels = [int(v) for v in labels]
    problems = []
    for e in entries:
        problem = _label_problem(
            e[label_key], e.get(reference_key) if reference_key else None, labels, allow_empty, atol
        )
        if problem:
            problems.append(f"{e[label_key]}: {problem}")
    if problems:
        shown = "\n  ".join(problems[:50]) + (f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else "")
        raise InvalidDataError(f"{len(problems)} of {len(entries)} label map(s) cannot be used:\n  {shown}")
    return len(entries)


def one_hot_conditions(label: torch.Tensor, brain: torch.Tensor, labels: Sequence[int] = BRATS_LABELS) -> torch.Tensor:
    """Condition channels of a label map and a brain image, both (1, D, H, W) (the brain: any image whose non-zero
    voxels are the brain) -> (1 + L, D, H, W) float32 in {0, 1}: ``[brain != 0, label == labels[0], ...]``."""
    label, brain = torch.as_tensor(label), torch.as_tensor(brain)
    if label.shape != brain.shape:
        raise ValueError(f"label map {tuple(label.shape)} and brain mask {tuple(brain.shape)} differ in shape.")
    channels = [brain != 0] + [label == v for v in labels]
    return torch.cat(channels, dim=0).to(torch.float32)


class LabelConditionsd(MapTransform):
    """``{"seg": (1, D, H, W), "brainmask": (1, D, H, W)}`` -> ``{"conditions": (1 + L, D, H, W)}`` (`one_hot_conditions`),
    keeping the label map's meta data (affine, applied operations); the two inputs are removed."""

    def __init__(
        self,
        labels: Sequence[int] = BRATS_LABELS,
        label_key: str = "seg",
        mask_key: str = "brainmask",
        output_key: str = "conditions",
    ) -> None:
        super().__init__([label_key, mask_key])
        self.labels, self.label_key, self.mask_key, self.output_key = list(labels), label_key, mask_key, output_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        label, brain = d.pop(self.label_key), d.pop(self.mask_key)
        conditions = one_hot_conditions(label, brain, self.labels)
        d[self.output_key] = MetaTensor(conditions, meta=label.meta) if isinstance(label, MetaTensor) else conditions
        return d


def label_generation_preprocessing(
    contrasts: Sequence[str],
    labels: Sequence[int] = BRATS_LABELS,
    pad_crop_size: Sequence[int] | None = None,
    placement: str = Placement.END,
    clip_percentiles: Sequence[float] = (0.1, 99.9),
    data_range: Sequence[float] = (0.0, 1.0),
    size_multiple: int | None = None,
) -> Compose:
    """Training items ``{<contrast>: file, ..., "seg": file, "brainmask": file}`` -> ``{"images": (K, D', H', W'),
    "conditions": (1 + L, D', H', W')}`` float32 tensors.

    The contrasts are `synthesis_preprocessing` (per contrast: percentile clipping to [0, 1], framing, then
    ``data_range``); the conditions are the one-hot `one_hot_conditions` in {0, 1}, framed alike (zero padding).
    """
    cond = "conditions"
    return Compose(
        [
            LoadImaged(["seg", "brainmask"], image_only=True),
            EnsureChannelFirstd(["seg", "brainmask"]),
            LabelConditionsd(labels, output_key=cond),
            framing_transform(cond, pad_crop_size, placement, size_multiple),
            EnsureTyped(cond, dtype=torch.float32, track_meta=False),
            synthesis_preprocessing(contrasts, pad_crop_size, placement, clip_percentiles, data_range, size_multiple),
        ]
    )
