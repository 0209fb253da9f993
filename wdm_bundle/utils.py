"""Small helpers shared across the package."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "as_bool",
    "atomic_write",
    "autocast_dtype",
    "plain",
    "plain_config",
    "UnreadableCheckpointError",
    "torch_load",
    "remove_stale_temp_files",
    "install_error_report",
]

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


def remove_stale_temp_files(folder: str | os.PathLike, names: Callable[[str], bool]) -> list[Path]:
    """Delete the temporary files `atomic_write` leaves when killed mid-write (``.<name>.<random><suffix>``) in
    ``folder`` for the target names where ``names(name)`` is true; returns the deleted paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = re.compile(r"^\.(.+?)\.[A-Za-z0-9_]{8}(\.[^.]+)*$")  # tempfile.mkstemp's 8 random characters
    removed = []
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m and p.is_file() and names(m.group(1)):
            p.unlink()
            removed.append(p)
    return removed


class UnreadableCheckpointError(ValueError):
    """A checkpoint file exists but cannot be loaded (truncated, empty, not a PyTorch file, or unsafe); names it."""


def torch_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` whose errors name the file and say what is wrong with it.

    Args:
        mmap: map the file instead of reading it (files in torch's legacy format are read instead).

    Raises:
        FileNotFoundError: no file at ``path``.
        UnreadableCheckpointError: a truncated, empty or random file, or one holding Python objects other than
            tensors and plain data (never loaded: checkpoints from elsewhere are untrusted).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist.")
    size = path.stat().st_size
    if size == 0:
        raise UnreadableCheckpointError(
            f"checkpoint '{path}' is empty (0 bytes): an interrupted copy or write? "
            "Copy it again, or resume from an older checkpoint."
        )
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location=map_location, weights_only=True)  # legacy format: cannot be mapped
    except Exception as e:  # pickle.UnpicklingError, RuntimeError (zip reader), EOFError, ...
        text = str(e)
        if "Unsupported global" in text or "GLOBAL " in text:
            problem = (
                "holds Python objects other than tensors and plain data, so it is not loaded (a checkpoint "
                "from elsewhere could run code); it is not a bundle checkpoint or state_dict"
            )
        else:
            first = next((ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln), "")
            problem = (
                f"is truncated, corrupt or not a PyTorch checkpoint ({size} bytes; {type(e).__name__}"
                + (f": {first[:120]}" if first and "Weights only load failed" not in first else "")
                + ")"
            )
        raise UnreadableCheckpointError(
            f"checkpoint '{path}' {problem}. Copy it again, or resume from an older " "checkpoint."
        ) from None


_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_MONAI_WRAPPERS = (os.sep + os.path.join("monai", "bundle") + os.sep, os.path.join("monai", "utils", "module.py"))


def _raised_in(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename if tb is not None else ""


def _user_error(exc: BaseException) -> BaseException:
    """The first error of ``exc``'s chain that MONAI's config machinery did not just wrap (outermost first)."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    for e in chain:
        if not any(w in _raised_in(e) for w in _MONAI_WRAPPERS):
            return e
    return chain[-1]


def _report(exc_type: type, exc: BaseException, tb: Any, stream: Any = None) -> None:
    stream = stream or sys.stderr
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: Python's own report
        sys.__excepthook__(exc_type, exc, tb)
        return
    error = _user_error(exc)
    where = _raised_in(error)
    ours = where.startswith(_PACKAGE_DIR) and not os.environ.get("WDM_TRACEBACK")
    sys.stdout.flush()
    if not ours:  # unexpected: the whole traceback, then the cause again at the end
        traceback.print_exception(exc_type, exc, tb, file=stream)
        stream.write("\n")
    else:
        stream.write(
            f"(raised in {os.path.relpath(where, os.path.dirname(_PACKAGE_DIR))}; set WDM_TRACEBACK=1 for "
            "the full traceback)\n"
        )
    message = f"ERROR {type(error).__name__}: {error}"
    stream.write(message + "\n")
    stream.flush()
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")  # under torchrun: its closing summary shows the cause
    if error_file and not os.path.exists(error_file):
        import json
        import time

        try:
            with open(error_file, "w") as f:
                info = {"py_callstack": message, "timestamp": str(int(time.time()))}
                json.dump({"message": {"message": message, "extraInfo": info}}, f)
        except OSError:
            pass


def install_error_report() -> None:
    """Make an uncaught error end the output with its cause: which file, what is wrong.

    MONAI's bundle runner wraps every error raised in a config expression or component in
    ``RuntimeError('Failed to evaluate ConfigExpression ...')`` (tens of lines); this hook prints the
    first error of the chain that is not such a wrapper as the last line. Errors raised by this
    package (a check on the user's input) print only that, with where it was raised; others print
    the full traceback first. ``WDM_TRACEBACK=1`` always prints the full traceback.
    """
    if sys.excepthook is not _report:
        sys.excepthook = _report


def _run_by_monai_bundle() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "monai.bundle.__main__"


if _run_by_monai_bundle():  # `python -m monai.bundle run ...` (also under torchrun) with this package's configs
    install_error_report()


_AMP_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


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
