"""Read a MONAI Label request: a case's contrast files, an uploaded stack of contrasts, request params.

No monailabel import here: these checks run (and are tested) in the bundle's own environment.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from wdm_bundle.data.io import contrast_files, nifti_stem

__all__ = [
    "RequestError",
    "case_files",
    "split_upload",
    "parse_contrasts",
    "parse_int",
    "parse_conf_value",
    "parse_params",
    "parse_sampler",
    "parse_choice",
    "check_name",
    "check_voxels",
    "redact_paths",
    "NAME_PATTERN",
    "MAX_NAME_LENGTH",
]

#: Names a client may choose (uploaded image ids, ``case``): letters, digits, ``.``, ``_``, ``-``; no path separators,
#: no leading dot (so never ``..`` or a hidden file).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 128
#: Largest seed a request may give (numpy / torch generators take 64-bit seeds; 2**32 - 1 is plenty).
MAX_SEED = 2**32 - 1
_ABS_PATH = re.compile(r"(?<![\w.~])(?:/[^/\s'\"(),:;]+)+/")


class RequestError(ValueError):
    """A request the server cannot serve; ``status`` is the HTTP code to answer with (422 by default)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message, status)  # all arguments: copies and pickles keep the status
        self.status = int(status)

    def __str__(self) -> str:
        return str(self.args[0])


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
            f"image '{os.path.basename(str(image))}' not found: pass the datastore id of one contrast file of the "
            "case (e.g. "
            "'<case>/<case>-t1n', listed by GET /datastore/?output=all), or upload the contrasts as 'file' "
            'with params {"contrasts": [...]}.',
            status=404,
        )
    stem = nifti_stem(path.name)
    # longest suffix first, so that e.g. "t1ce" wins over "ce"
    contrast = next((c for c in sorted(contrasts, key=len, reverse=True) if stem and stem.endswith(f"-{c}")), None)
    if contrast is None:
        raise RequestError(
            f"'{path.name}' is not named <case>-<contrast>.nii.gz with a contrast of {list(contrasts)}, so its "
            'case\'s other contrasts cannot be found; for an upload, pass params {"contrasts": [...]} naming '
            "the volumes of the file."
        )
    case = stem[: -len(contrast) - 1]
    return case, contrast_files(path.parent, case, contrasts)


def split_upload(
    path: str | os.PathLike, names: Sequence[str], max_voxels: int | None = None
) -> dict[str, nib.Nifti1Image]:
    """Split an uploaded NIfTI into one 3D image per contrast.

    The file holds the contrasts ``names`` in this order as volumes: (X, Y, Z, C) with C =
    ``len(names)``, or (X, Y, Z) for one contrast. Each image keeps the file's affine and header.

    Raises:
        RequestError: unreadable file, or a volume count that differs from ``len(names)``.
    """
    try:
        img = nib.load(str(path))
    except Exception as e:
        raise RequestError(f"the uploaded file cannot be read as NIfTI ({type(e).__name__}: {e}).") from e
    check_voxels(img.shape, max_voxels, "the uploaded file")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:
        raise RequestError(f"the uploaded file cannot be read as NIfTI ({type(e).__name__}: {e}).") from e
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4 or data.shape[3] != len(names):
        raise RequestError(
            f"the uploaded file has shape {tuple(img.shape)}, but 'contrasts' names {len(names)} volume(s) "
            f"{list(names)}: upload a 4D NIfTI (X, Y, Z, C) with one volume per named contrast."
        )
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


def parse_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer request param (also given as a string of digits) in [``minimum``, ``maximum``].

    Booleans, fractions, NaN, infinities (``1e400`` parses to inf) and numbers out of range are a RequestError.
    """
    number = None
    if not isinstance(value, bool) and isinstance(value, (int, float, str)) and len(str(value)) <= 32:
        try:
            as_float = float(value)
            if math.isfinite(as_float) and as_float == int(as_float):
                number = int(value) if isinstance(value, int) else int(as_float)
        except (TypeError, ValueError, OverflowError):
            number = None
    if number is None or (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        at_least = f" >= {minimum}" if minimum is not None else ""
        at_most = f" and <= {maximum}" if maximum is not None else ""
        raise RequestError(f"'{name}' must be an integer{at_least}{at_most}, got {_short(value)}.")
    return number


def _short(value: Any, length: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= length else text[: length - 3] + "..."


def parse_sampler(value: Any, allowed: Sequence[str]) -> str:
    """A sampler name from the closed set ``allowed`` (`wdm_bundle.diffusion.Sampler` values)."""
    if not isinstance(value, str) or value not in allowed:
        raise RequestError(
            f"cannot sample with {{'sampler': {_short(value)}}}: ValueError: {_short(value)} is not a "
            f"valid Sampler; use one of {', '.join(allowed)}."
        )
    return value


def parse_choice(value: Any, name: str, allowed: Sequence[str]) -> str:
    """A request value from the closed set ``allowed``."""
    if not allowed:
        raise RequestError(f"'{name}' is not supported by this server.")
    if not isinstance(value, str) or value not in allowed:
        raise RequestError(f"'{name}' must be one of {', '.join(allowed)}, got {_short(value)}.")
    return value


def check_name(value: Any, what: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """A client-chosen name (``case``, an image id): `NAME_PATTERN`, at most ``max_length`` characters."""
    if not isinstance(value, str) or not value:
        raise RequestError(f"'{what}' must be a non-empty name, got {_short(value)}.")
    if len(value) > max_length:
        raise RequestError(f"'{what}' is {len(value)} characters long; at most {max_length} are allowed.")
    if not NAME_PATTERN.fullmatch(value):
        raise RequestError(
            f"'{what}' {_short(value)} may hold only letters, digits, '.', '_' and '-' and must start "
            "with a letter or digit (no path separators)."
        )
    return value


def check_voxels(shape: Sequence[int], max_voxels: int | None, what: str) -> None:
    """413 when a volume of ``shape`` (spatial dims first) has more than ``max_voxels`` voxels."""
    voxels = int(np.prod([int(n) for n in shape[:3]], dtype=np.float64))
    if max_voxels is not None and voxels > max_voxels:
        raise RequestError(
            f"{what} has {voxels} voxels ({' x '.join(str(int(n)) for n in shape[:3])}); this server "
            f"accepts at most {max_voxels} (conf max_voxels).",
            status=413,
        )


def parse_params(text: Any) -> dict[str, Any]:
    """The ``params`` form field: a JSON object (``{}`` when empty); anything else is a RequestError."""
    if text in (None, ""):
        return {}
    if not isinstance(text, str):
        raise RequestError("'params' must be a JSON object given as text.")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    try:
        params = json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError) as e:
        raise RequestError(f"'params' is not valid JSON ({type(e).__name__}: {str(e)[:80]}).") from e
    if not isinstance(params, dict):
        raise RequestError(f"'params' must be a JSON object ({{\"key\": value, ...}}), got {type(params).__name__}.")
    return params


def redact_paths(message: str) -> str:
    """``message`` with the folders of absolute paths removed (``/srv/data/c1/c1-t1n.nii.gz`` -> ``c1-t1n.nii.gz``)."""
    return _ABS_PATH.sub("", str(message))


def parse_conf_value(text: str) -> Any:
    """A ``--conf key value`` string as a config value: JSON when it parses (``10``, ``[16,32]``, ``null``), else
    text."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text
