"""Check every input file before training starts, so bad data fails in seconds, not hours."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from wdm_bundle.data.io import spatial_shape, volume_shape

__all__ = ["InvalidDataError", "validate_images", "resolve_image_size"]


class InvalidDataError(ValueError):
    """One or more input files cannot be used; the message lists each file and its problem."""


def resolve_image_size(
    image_size: Sequence[int] | None,
    pad_crop_size: Sequence[int] | None,
    datalist: Sequence[Mapping[str, str]],
    key: str = "image",
) -> tuple[int, ...]:
    """The (D, H, W) the network sees: ``image_size``, else ``pad_crop_size``, else the first file's shape."""
    size = image_size or pad_crop_size
    if size:
        if len(size) != 3 or any(int(s) < 2 for s in size):
            raise ValueError(f"image_size/pad_crop_size must be 3 sizes >= 2, got {size}.")
        return tuple(int(s) for s in size)
    if not datalist:
        raise InvalidDataError("no input files: the datalist is empty.")
    path = datalist[0][key]
    try:
        return volume_shape(path)
    except Exception as e:
        raise InvalidDataError(f"{path}: cannot be read as NIfTI ({type(e).__name__}: {e})") from e


def _check_file(path: str, check_values: bool, size_multiple: int | None) -> str | None:
    try:
        img = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
    except Exception as e:  # nibabel raises many types for broken files
        return f"cannot be read as NIfTI ({type(e).__name__}: {e})"
    spatial = spatial_shape(shape)
    if len(spatial) != 3:
        return f"is {len(shape)}D with shape {shape}; expected a 3D volume (D, H, W)"
    if min(spatial) < 2:
        return f"has a degenerate shape {shape}"
    if size_multiple and any(s % size_multiple for s in spatial):
        return (
            f"has shape {spatial}, not divisible by {size_multiple} (the network's downsampling); "
            "set 'pad_crop_size' to pad/crop it"
        )
    if check_values:
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as e:
            return f"cannot be read ({type(e).__name__}: {e})"
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            return f"contains {int((~np.isfinite(data)).sum())} NaN/inf voxels"
    return None


def validate_images(
    datalist: Iterable[Mapping[str, str]],
    keys: Sequence[str] = ("image",),
    check_values: bool = True,
    size_multiple: int | None = None,
    same_case_shapes: bool = False,
    progress: bool = True,
) -> int:
    """Open every file of ``datalist[*][keys]`` and check it is a readable, finite 3D volume.

    Args:
        datalist: entries as from `build_datalist`.
        keys: entry keys holding file paths.
        check_values: also read the voxels and reject NaN/inf (slower; header only otherwise).
        size_multiple: if given, every spatial size must be divisible by it and all volumes must
            share one shape (use when volumes reach the network at their own size).
        same_case_shapes: the files of one entry (e.g. the contrasts of a case) must share a shape.

    Returns:
        the number of files checked.

    Raises:
        InvalidDataError: listing every bad file (path: problem).
    """
    files = [entry[k] for entry in datalist for k in keys]
    if not files:
        raise InvalidDataError("no input files to train on: the datalist is empty.")
    problems = []
    first_shape = None
    for path in tqdm(files, desc="checking input files", disable=not progress, leave=False):
        problem = _check_file(path, check_values, size_multiple)
        if problem is None and size_multiple:
            shape = volume_shape(path)
            first_shape = first_shape or (path, shape)
            if shape != first_shape[1]:
                problem = (
                    f"has shape {shape} but '{first_shape[0]}' has {first_shape[1]}; set 'pad_crop_size' to pad/crop"
                )
        if problem:
            problems.append(f"{path}: {problem}")
    if same_case_shapes:
        for entry in datalist:
            shapes = {}
            for k in keys:
                try:
                    shapes[entry[k]] = volume_shape(entry[k])
                except Exception:
                    continue  # already reported above
            if len(set(shapes.values())) > 1:
                listed = ", ".join(f"{p} {s}" for p, s in shapes.items())
                problems.append(f"case '{entry.get('case', '?')}': its files have different shapes: {listed}")
    if problems:
        shown = "\n  ".join(problems[:50]) + (f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else "")
        raise InvalidDataError(f"{len(problems)} of {len(files)} input file(s) cannot be used:\n  {shown}")
    return len(files)
