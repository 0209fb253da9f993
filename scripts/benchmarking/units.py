"""How the benchmark reports write bytes and seconds."""

from __future__ import annotations

__all__ = ["gb", "seconds"]


def gb(b: float | None) -> str:
    """Bytes as ``"8.57 GB"`` (from 0.1 GB on) or ``"46.7 MB"``; None as ``"–"``."""
    return "–" if b is None else (f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.1f} MB")


def seconds(x: float | None, digits: int = 2) -> str:
    """Seconds as ``"3.98 s"``, below one second ``"926.18 ms"``; None as ``"–"``."""
    if x is None:
        return "–"
    return f"{x * 1e3:.{digits}f} ms" if x < 1 else f"{x:.{digits}f} s"
