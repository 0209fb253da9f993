"""Small helpers shared across the package."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["as_bool", "atomic_write", "autocast_dtype", "plain", "plain_config"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", "none", ""}


def as_bool(value: object, name: str = "value") -> bool:
    """Read a switch given in a config or on the command line.

    `monai.bundle run` passes ``--resume true`` as the *string* ``"true"`` (fire only parses
    Python literals), and ``"false"`` would be truthy; this accepts bools, 0/1 and the usual
    words in any case.

    Raises:
        ValueError: naming ``name`` for anything else.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if value is None:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it over ``path``.

    Readers see the old file or the complete new one, never a partial write; on error the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"  # keep e.g. ".nii.gz": writers pick the format from it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


_AMP_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
               "half": torch.float16}


def autocast_dtype(name: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """The ``torch.autocast`` dtype for config value ``name`` (``"bfloat16"``, ``"float16"`` or None).

    None picks bfloat16 on CPU (CPU autocast supports it best) and float16 on CUDA (every GPU
    supports it; pick bfloat16 on Ampere or newer, whose range cannot overflow).

    Raises:
        ValueError: for any other name.
    """
    if isinstance(name, torch.dtype):
        if name not in (torch.bfloat16, torch.float16):
            raise ValueError(f"amp_dtype must be bfloat16 or float16, got {name}.")
        return name
    if name is None or (isinstance(name, str) and name.strip().lower() in ("", "none", "null", "auto")):
        return torch.bfloat16 if torch.device(device).type == "cpu" else torch.float16
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in _AMP_DTYPES:
        raise ValueError(f"amp_dtype must be 'bfloat16', 'float16' or null (automatic), got {name!r}.")
    return _AMP_DTYPES[key]


def plain(value: object) -> object:
    """``value`` as plain JSON-like Python types (tuples -> lists, enums -> str, numpy/torch scalars -> numbers).

    Raises:
        TypeError: for anything else (a module, a tensor): a record must stay loadable with ``weights_only``.
    """
    if value is None or isinstance(value, (bool, int, float)) and not hasattr(value, "value"):
        return value
    if isinstance(value, str):
        return str(value)  # StrEnum -> its value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        return value.item()
    raise TypeError(f"cannot record a {type(value).__name__} ({value!r}); only numbers, strings, lists and dicts.")


def plain_config(**kwargs: object) -> dict:
    """Constructor arguments as a plain dict (see `plain`), recorded with the weights to rebuild the module."""
    return {k: plain(v) for k, v in kwargs.items()}
