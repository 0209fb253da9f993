"""Capture and restore a process's random state, so that a resumed training run draws what it would have drawn."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

__all__ = ["random_state", "set_random_state"]

logger = logging.getLogger(__name__)


def random_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """This process's random state: torch (CPU, every CUDA device), numpy, ``random`` and ``generator`` (if given).

    Tensors and plain types only, so a checkpoint holding it loads with ``weights_only=True``.
    """
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_random_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore a `random_state` (its ``generator`` state into ``generator``, if both are there)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = [s.cpu() for s in state.get("cuda", [])]
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(
                f"random state of {len(cuda)} CUDA device(s) saved, {torch.cuda.device_count()} here: "
                "the CUDA random state is not restored."
            )
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())
