"""Names shared by the wavelet code."""

from __future__ import annotations

__all__ = ["SUBBANDS", "PYWT_KEYS", "LLL_INDEX"]

#: Sub-band order of `dwt3d` per image channel; first letter = depth axis (L = low-pass, H = high-pass).
SUBBANDS: tuple[str, ...] = ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")
#: The matching `pywt.dwtn(x, "haar")` keys (a = approximation, d = detail).
PYWT_KEYS: tuple[str, ...] = tuple(b.replace("L", "a").replace("H", "d") for b in SUBBANDS)
#: Channel of the low-pass band within each group of 8.
LLL_INDEX = 0
