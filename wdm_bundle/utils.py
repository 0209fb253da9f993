"""Small helpers shared across the package."""

from __future__ import annotations

__all__ = ["as_bool"]

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
