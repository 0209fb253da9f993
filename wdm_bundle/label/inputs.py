"""Read a MONAI Label request: a case's contrast files, an uploaded stack of contrasts, request params.

No monailabel import here: these checks run (and are tested) in the bundle's own environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["RequestError", "case_files", "split_upload", "parse_contrasts", "parse_int", "parse_conf_value"]

_NIFTI = (".nii.gz", ".nii")


class RequestError(ValueError):
    """A request the server cannot serve; ``status`` is the HTTP code to answer with (422 by default)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = int(status)


def _stem(name: str) -> str | None:
    return next((name[: -len(ext)] for ext in _NIFTI if name.endswith(ext)), None)


def case_files(image: str | os.PathLike, contrasts: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The case of one contrast file and all its contrast files, found next to it by name.

    ``<dir>/<case>-<contrast>.nii[.gz]`` -> (``case``, {contrast: file}) for every contrast of
    ``contrasts`` that has a file ``<dir>/<case>-<contrast>.nii[.gz]``. Works for BraTS case
    folders and for flat folders holding several cases.

    Raises:
        RequestError: 404 if ``image`` is not a file; 422 if its name has no known contrast suffix.
    """
    path = Path(image) if image else None
    if path is None or not path.is_file():
        raise RequestError(
            f"image '{image}' not found: pass the datastore id of one contrast file of the case (e.g. "
            "'<case>/<case>-t1n', listed by GET /datastore/?output=all), or upload the contrasts as 'file' "
            "with params {\"contrasts\": [...]}.", status=404)
    stem = _stem(path.name)
    # longest suffix first, so that e.g. "t1ce" wins over "ce"
    contrast = next((c for c in sorted(contrasts, key=len, reverse=True) if stem and stem.endswith(f"-{c}")), None)
    if contrast is None:
        raise RequestError(
            f"'{path.name}' is not named <case>-<contrast>.nii.gz with a contrast of {list(contrasts)}, so its "
            "case's other contrasts cannot be found; for an upload, pass params {\"contrasts\": [...]} naming "
            "the volumes of the file.")
    case = stem[: -len(contrast) - 1]
    files = {}
    for c in contrasts:
        found = [f for f in (path.parent / f"{case}-{c}{ext}" for ext in _NIFTI) if f.is_file()]
        if found:
            files[c] = str(found[0])
    return case, files


def split_upload(path: str | os.PathLike, names: Sequence[str]) -> dict[str, nib.Nifti1Image]:
    """Split an uploaded NIfTI into one 3D image per contrast.

    The file holds the contrasts ``names`` in this order as volumes: (X, Y, Z, C) with C =
    ``len(names)``, or (X, Y, Z) for one contrast. Each image keeps the file's affine and header.

    Raises:
        RequestError: unreadable file, or a volume count that differs from ``len(names)``.
    """
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:
        raise RequestError(f"the uploaded file cannot be read as NIfTI ({type(e).__name__}: {e}).") from e
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4 or data.shape[3] != len(names):
        raise RequestError(
            f"the uploaded file has shape {tuple(img.shape)}, but 'contrasts' names {len(names)} volume(s) "
            f"{list(names)}: upload a 4D NIfTI (X, Y, Z, C) with one volume per named contrast.")
    header = img.header.copy()
    return {c: nib.Nifti1Image(np.ascontiguousarray(data[..., i]), img.affine, header) for i, c in enumerate(names)}


def parse_contrasts(value: Any, known: Sequence[str]) -> list[str]:
    """``["t1n", "t2w"]`` or ``"t1n,t2w"`` -> a list of distinct known contrast names."""
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
        raise RequestError(f"'contrasts' must be a non-empty list of contrast names, got {value!r}.")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RequestError(f"'contrasts' names unknown contrast(s) {unknown}; the model's contrasts are {list(known)}.")
    if len(set(names)) != len(names):
        raise RequestError(f"'contrasts' names a contrast twice: {list(names)}.")
    return list(names)


def parse_int(value: Any, name: str, minimum: int | None = None) -> int:
    """An integer request param (also given as a string of digits)."""
    try:
        number = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else None
    except (TypeError, ValueError):
        number = None
    if number is None or (minimum is not None and number < minimum):
        at_least = f" >= {minimum}" if minimum is not None else ""
        raise RequestError(f"'{name}' must be an integer{at_least}, got {value!r}.")
    return number


def parse_conf_value(text: str) -> Any:
    """A ``--conf key value`` string as a config value: JSON when it parses (``10``, ``[16,32]``, ``null``), else text."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text
