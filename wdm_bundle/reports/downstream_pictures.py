"""The picture of the downstream report: one slice through the tumour per input variant, with region contours."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from wdm_bundle.metrics.segmentation import REGIONS, region_masks

__all__ = ["REGION_COLOURS", "save_downstream_png", "tumour_slice"]

#: Contour colour of each region.
REGION_COLOURS: dict[str, str] = {"WT": "yellow", "TC": "red", "ET": "cyan"}


def tumour_slice(ref_labels: np.ndarray) -> int:
    """Index along the last axis of the (D, H, W) labels with the largest WT + TC + ET area; the middle if none.

    Summing the three regions breaks the ties of the whole tumour towards slices that show the core too.
    """
    area = sum(m.sum(axis=(0, 1)) for m in region_masks(ref_labels).values())
    return int(np.argmax(area)) if area.any() else ref_labels.shape[-1] // 2


def _draw(ax, image: np.ndarray, labels: np.ndarray, k: int, title: str) -> None:
    ax.imshow(np.rot90(image[..., k]), cmap="gray", vmin=0.0, vmax=1.0)
    for region, mask in region_masks(labels).items():
        tile = mask[..., k]
        if tile.any() and not tile.all():  # a contour needs both levels
            ax.contour(np.rot90(tile.astype(np.float32)), levels=[0.5], colors=REGION_COLOURS[region], linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def save_downstream_png(
    images: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    ref_labels: np.ndarray,
    ground_truth: np.ndarray,
    titles: Mapping[str, str],
    path: str | os.PathLike,
) -> str:
    """Write one slice (:func:`tumour_slice`) of the missing contrast per variant with its predicted regions.

    Args:
        images: ``{variant: (D, H, W) missing contrast in [0, 1]}``; labels: ``{variant: (D, H, W) labels 0..3}``.
        ref_labels: (D, H, W) reference labels, drawn on ``ground_truth`` ((D, H, W) in [0, 1]) in a last panel.
        titles: ``{variant: panel title}`` (e.g. with the Dice).
        path: the PNG file (folders are created).

    Returns:
        ``path`` as a string.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = tumour_slice(ref_labels)
    n = len(images) + 1
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax, variant in zip(axes.flat, images):
        _draw(ax, images[variant], labels[variant], k, titles.get(variant, variant))
    _draw(axes.flat[n - 1], ground_truth, ref_labels, k, "ground truth, reference labels")
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    legend = ", ".join(f"{r} {REGION_COLOURS[r]}" for r in REGIONS)
    fig.suptitle(f"slice {k} of the last axis; contours: {legend}", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
