"""Pictures: the three orthogonal middle slices of 3D volumes, as PNG files or TensorBoard images."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["middle_slices", "slices_grid", "save_slices_png"]


def middle_slices(volume: np.ndarray | torch.Tensor) -> list[np.ndarray]:
    """Middle slices of a (D, H, W) or (1, D, H, W) volume across each axis, as 2D float arrays."""
    v = volume.detach().float().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume, np.float32)
    v = v[0] if v.ndim == 4 else v
    if v.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {v.shape}.")
    d, h, w = v.shape
    return [np.rot90(v[d // 2]), np.rot90(v[:, h // 2]), np.rot90(v[:, :, w // 2])]


def slices_grid(volumes: Sequence[np.ndarray | torch.Tensor], data_range: Sequence[float]) -> np.ndarray:
    """Tile middle slices: one row per volume, three columns; returns (rows*S, 3*S) in [0, 1]."""
    rows = []
    lo, hi = data_range
    for vol in volumes:
        tiles = middle_slices(vol)
        size = max(max(t.shape) for t in tiles)
        padded = [np.pad(t, ((0, size - t.shape[0]), (0, size - t.shape[1])), constant_values=lo) for t in tiles]
        rows.append(np.concatenate(padded, axis=1))
    return np.clip((np.concatenate(rows, axis=0) - lo) / (hi - lo), 0.0, 1.0)


def save_slices_png(
    volumes: Sequence[np.ndarray | torch.Tensor],
    path: str | os.PathLike,
    data_range: Sequence[float] = (-1.0, 1.0),
    titles: Sequence[str] | None = None,
) -> str:
    """Write a PNG with the three orthogonal middle slices of each volume (one row each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(volumes)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False)
    for i, vol in enumerate(volumes):
        for j, (tile, name) in enumerate(zip(middle_slices(vol), ("axis 0", "axis 1", "axis 2"))):
            axes[i, j].imshow(tile, cmap="gray", vmin=data_range[0], vmax=data_range[1])
            axes[i, j].set_axis_off()
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
        if titles:
            axes[i, 0].text(
                -0.05, 0.5, titles[i], transform=axes[i, 0].transAxes, rotation=90, va="center", ha="right", fontsize=8
            )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
