"""Volume I/O and case discovery: the NIfTI suffixes, reading a volume, BraTS case folders and their contrast files.

The one place that knows how volumes are stored on disk: ``<root>/<case>/<case>-<contrast>.nii.gz``
(BraTS layout), flat folders of ``*.nii`` / ``*.nii.gz`` files, and 3D volumes that some tools write
as 4D with a trailing singleton dimension (X, Y, Z, 1), which are read as 3D.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "CONTRASTS",
    "NIFTI_SUFFIXES",
    "contrast_files",
    "find_case_files",
    "find_cases",
    "is_nifti",
    "list_volumes",
    "load_nifti",
    "load_volume",
    "nifti_stem",
    "require_folder",
    "spatial_shape",
    "volume_shape",
]

#: The four BraTS MR contrasts, in the order the models stack them.
CONTRASTS: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
#: File name endings read as NIfTI, longest first.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


def nifti_stem(name: str) -> str | None:
    """``name`` without its NIfTI suffix (``c1-t1n.nii.gz`` -> ``c1-t1n``), or None if it is not a NIfTI name."""
    return next((name[: -len(ext)] for ext in NIFTI_SUFFIXES if name.endswith(ext)), None)


def is_nifti(path: str | os.PathLike) -> bool:
    """``path`` is a file with a NIfTI suffix."""
    path = Path(path)
    return path.is_file() and path.name.endswith(NIFTI_SUFFIXES)


def spatial_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as ints, a trailing singleton 4th dim dropped ((X, Y, Z, 1) -> (X, Y, Z))."""
    shape = tuple(int(s) for s in shape)
    return shape[:3] if len(shape) == 4 and shape[3] == 1 else shape


def volume_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Spatial shape of a NIfTI file from its header (a trailing singleton 4th dim is dropped)."""
    return spatial_shape(nib.load(str(path)).shape)


def load_nifti(path: str | os.PathLike) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The NIfTI image (header, affine) and its (D, H, W) float32 voxels (a trailing singleton 4th dim dropped)."""
    img = nib.load(str(path))
    arr = np.asarray(img.dataobj, dtype=np.float32)
    return img, (arr[..., 0] if spatial_shape(arr.shape) != arr.shape else arr)


def load_volume(path: str | os.PathLike) -> np.ndarray:
    """(D, H, W) float32 voxels of a NIfTI file in its own voxel order (a trailing singleton 4th dim dropped)."""
    return load_nifti(path)[1]


def require_folder(folder: str | os.PathLike, name: str) -> Path:
    """``folder`` as a Path; FileNotFoundError naming the argument ``name`` if it is not an existing folder."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{name} '{root}' does not exist or is not a folder.")
    return root


def list_volumes(folder: str | os.PathLike, name: str) -> list[Path]:
    """Sorted ``*.nii`` / ``*.nii.gz`` files directly in ``folder``.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: no NIfTI file in it.
    """
    root = require_folder(folder, name)
    files = sorted(p for p in root.iterdir() if is_nifti(p))
    if not files:
        raise ValueError(f"{name} '{root}' holds no NIfTI files (*.nii, *.nii.gz).")
    return files


def find_cases(root: str | os.PathLike, name: str = "input_dir", require_nifti: bool = True) -> list[Path]:
    """Sorted case folders of ``root``: its sub-folders that hold a NIfTI file (all of them if not ``require_nifti``).

    Raises:
        FileNotFoundError: ``root`` (the argument ``name``) is not an existing folder.
    """
    root = require_folder(root, name)
    return sorted(p for p in root.iterdir() if p.is_dir() and (not require_nifti or any(map(is_nifti, p.iterdir()))))


def find_case_files(case_dir: str | os.PathLike) -> dict[str, str]:
    """Map contrast suffix -> file for a case folder ``<case>/<case>-<suffix>.nii.gz``.

    Files that do not start with ``<case>-`` are keyed by their full stem.
    """
    case_dir = Path(case_dir)
    prefix = f"{case_dir.name}-"
    files = {}
    for f in sorted(case_dir.iterdir()):
        if is_nifti(f):
            stem = nifti_stem(f.name)
            files[stem.removeprefix(prefix)] = str(f)
    return files


def contrast_files(folder: str | os.PathLike, case: str, contrasts: Sequence[str]) -> dict[str, str]:
    """``{contrast: file}`` for each of ``contrasts`` with a file ``<folder>/<case>-<contrast>.nii[.gz]``.

    Works in BraTS case folders and in flat folders holding several cases.
    """
    files = {}
    for c in contrasts:
        found = [f for f in (Path(folder) / f"{case}-{c}{ext}" for ext in NIFTI_SUFFIXES) if f.is_file()]
        if found:
            files[c] = str(found[0])
    return files
