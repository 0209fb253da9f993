"""Unconditional generation report: FID on Med3D features and MS-SSIM diversity, real vs generated volumes.

Steps: load (the two folders' volumes, checked), score (FID, MS-SSIM diversity), write (``metrics.json``, a PNG).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from wdm_bundle.data.io import list_volumes, load_volume, volume_shape
from wdm_bundle.metrics.diversity import (
    MS_SSIM_WEIGHTS,
    ms_ssim_diversity,
    ms_ssim_min_size,
    rescale_to_unit,
    truncated_ms_ssim_weights,
)
from wdm_bundle.metrics.fid import FeatureStatistics
from wdm_bundle.metrics.med3d import Med3DResNet50, load_med3d_weights, med3d_normalize
from wdm_bundle.reports.summary import write_json

__all__ = ["FID_NEEDS_WEIGHTS", "GenerationEvaluator", "feature_statistics"]

logger = logging.getLogger(__name__)

FID_NEEDS_WEIGHTS = (
    "FID needs MedicalNet's pretrained Med3D ResNet-50; pass --med3d_weights path/to/resnet_50.pth "
    "(https://github.com/Tencent/MedicalNet). No FID is computed with random weights."
)


def _tqdm(it, total: int, desc: str, progress: bool):
    if not progress:
        return it
    from monai.utils import optional_import

    tqdm, has_tqdm = optional_import("tqdm", name="tqdm")
    return tqdm(it, total=total, desc=desc) if has_tqdm else it


@torch.no_grad()
def feature_statistics(
    volumes: Iterable[str | os.PathLike | np.ndarray | torch.Tensor],
    extractor: Callable[[torch.Tensor], torch.Tensor],
    data_range: Sequence[float] = (-1.0, 1.0),
    *,
    device: str | torch.device = "cpu",
    total: int | None = None,
    progress: bool = False,
    desc: str = "features",
) -> FeatureStatistics:
    """Stream ``volumes`` (paths or (D, H, W) arrays) one at a time through ``extractor`` into a FeatureStatistics.

    Each volume is rescaled from ``data_range`` to [0, 1], then z-scored over its non-zero voxels
    (:func:`med3d_normalize`, MedicalNet's preprocessing) and given to ``extractor`` as (1, 1, D, H, W).
    Only one volume and the running (d, d) statistics are held in memory.
    """
    stats = FeatureStatistics()
    for v in _tqdm(volumes, total, desc, progress):
        vol = rescale_to_unit(load_volume(v) if isinstance(v, (str, os.PathLike)) else v, data_range)
        x = med3d_normalize(vol)[None, None].to(device)
        stats.update(extractor(x).reshape(1, -1))
        del vol, x
    return stats


class GenerationEvaluator:
    """Compare a folder of generated volumes with a folder of real ones; write ``metrics.json`` and a PNG.

    Metrics:

    * ``fid``: Fréchet distance of Med3D ResNet-50 features (global average pool of ``layer4``,
      2048-d) of real vs generated volumes; lower is better. Only with ``med3d_weights``;
      otherwise reported as skipped (with the reason), never computed with random weights.
    * ``ms_ssim_fake`` / ``ms_ssim_real``: mean MS-SSIM over pairs within each set (diversity);
      lower is more diverse; a good model's value is close to the real set's.

    Args:
        real_dir, fake_dir: folders of NIfTI volumes, all of one shape.
        output_dir: where ``metrics.json`` and ``real_vs_generated.png`` go.
        data_range: intensity range of the volumes, mapped to [0, 1] (e.g. (-1, 1) for WDM samples;
            real volumes must be in the same range).
        med3d_weights: MedicalNet ``resnet_50.pth``; None skips FID.
        device: torch device for Med3D.
        max_pairs: at most this many random pairs per set for MS-SSIM (None = all pairs).
        seed: seed of the pair subset.
        progress: tqdm bars.
        ms_ssim_weights: MS-SSIM scale weights; None = the 5 standard ones when the volumes are
            large enough (>= 112 voxels per axis with kernel 7), else the most scales that fit
            (:func:`truncated_ms_ssim_weights`, e.g. 3 for 32^3), with a warning; the weights used
            are written to ``metrics.json``.
        ms_ssim_kernel_size: Gaussian kernel size (7 as in the WDM paper).
        num_preview: real and generated volumes shown in the PNG (each).
    """

    def __init__(
        self,
        real_dir: str | os.PathLike,
        fake_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        data_range: Sequence[float] = (-1.0, 1.0),
        med3d_weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        max_pairs: int | None = 1000,
        seed: int = 0,
        progress: bool = True,
        ms_ssim_weights: Sequence[float] | None = None,
        ms_ssim_kernel_size: int = 7,
        num_preview: int = 3,
    ) -> None:
        if len(data_range) != 2 or not float(data_range[1]) > float(data_range[0]):
            raise ValueError(f"'data_range' must be (lo, hi) with hi > lo; got {data_range!r}.")
        self.real_dir, self.fake_dir, self.output_dir = Path(real_dir), Path(fake_dir), Path(output_dir)
        self.data_range = (float(data_range[0]), float(data_range[1]))
        self.med3d_weights = str(med3d_weights) if med3d_weights not in (None, "") else None
        self.device = torch.device(device)
        self.max_pairs = None if max_pairs is None else int(max_pairs)
        self.seed = int(seed)
        self.progress = bool(progress)
        self.ms_ssim_weights = tuple(float(w) for w in ms_ssim_weights) if ms_ssim_weights is not None else None
        self.ms_ssim_kernel_size = int(ms_ssim_kernel_size)
        self.num_preview = int(num_preview)

    def _files(self) -> tuple[list[Path], list[Path]]:
        real = list_volumes(self.real_dir, "real_dir")
        fake = list_volumes(self.fake_dir, "fake_dir")
        ref_file, ref = real[0], volume_shape(real[0])
        for f in real[1:] + fake:
            if volume_shape(f) != ref:
                raise ValueError(
                    f"all volumes must have one shape: {f} has {volume_shape(f)} but {ref_file} has {ref}."
                )
        return real, fake

    def _weights(self, shape: tuple[int, ...]) -> tuple[float, ...]:
        if self.ms_ssim_weights is not None:
            return self.ms_ssim_weights
        kernel, full = self.ms_ssim_kernel_size, len(MS_SSIM_WEIGHTS)
        fits = [s for s in range(full, 0, -1) if min(shape) >= ms_ssim_min_size(s, kernel)]
        if not fits:
            raise ValueError(f"volumes of shape {shape} are too small for MS-SSIM with kernel {kernel}.")
        if fits[0] < full:
            logger.warning(
                "volumes of shape %s are too small for %d-scale MS-SSIM (>= %d voxels per axis): " "using %d scales",
                shape,
                full,
                ms_ssim_min_size(full, kernel),
                fits[0],
            )
        return truncated_ms_ssim_weights(fits[0])

    def _fid(self, real: list[Path], fake: list[Path]) -> dict:
        entry: dict = {"direction": "lower is better", "feature": "Med3D ResNet-50 layer4, global average pool (2048)"}
        if self.med3d_weights is None:
            return {**entry, "value": None, "skipped": FID_NEEDS_WEIGHTS}
        model = load_med3d_weights(Med3DResNet50(), self.med3d_weights).to(self.device).eval()
        kw = dict(data_range=self.data_range, device=self.device, progress=self.progress)
        s_real = feature_statistics(real, model, total=len(real), desc="Med3D real", **kw)
        s_fake = feature_statistics(fake, model, total=len(fake), desc="Med3D fake", **kw)
        if s_real.n < 2 or s_fake.n < 2:
            return {**entry, "value": None, "skipped": "FID needs at least 2 real and 2 generated volumes."}
        return {**entry, "value": s_real.frechet_distance(s_fake), "weights": self.med3d_weights}

    def _diversity(self, files: list[Path]) -> dict:
        weights = self._weights(volume_shape(files[0]))
        entry: dict = {
            "direction": "lower is more diverse; compare with the real set",
            "kernel_size": self.ms_ssim_kernel_size,
            "weights": list(weights),
        }
        if len(files) < 2:
            return {**entry, "value": None, "skipped": "MS-SSIM diversity needs at least 2 volumes."}
        result = ms_ssim_diversity(
            files,
            self.data_range,
            max_pairs=self.max_pairs,
            seed=self.seed,
            kernel_size=self.ms_ssim_kernel_size,
            weights=weights,
            progress=self.progress,
        )
        return {**entry, **result}

    def run(self) -> dict:
        """Compute the metrics, write ``metrics.json`` and the PNG; return the metrics dict."""
        real, fake = self._files()
        metrics = {
            "num_real": len(real),
            "num_fake": len(fake),
            "data_range": list(self.data_range),
            "fid": self._fid(real, fake),
            "ms_ssim_fake": self._diversity(fake),
            "ms_ssim_real": self._diversity(real),
        }
        if metrics["fid"]["value"] is None:
            logger.warning("FID skipped: %s", metrics["fid"]["skipped"])
        metrics["files"] = self._write(metrics, real, fake)
        return metrics

    def _write(self, metrics: dict, real: list[Path], fake: list[Path]) -> dict[str, str]:
        """Write the preview PNG and ``metrics.json`` (with the files' paths); return those paths."""
        from wdm_bundle.visualize import save_slices_png

        self.output_dir.mkdir(parents=True, exist_ok=True)
        k = self.num_preview
        shown = [(f"real {p.name.split('.')[0]}", p) for p in real[:k]]
        shown += [(f"gen {p.name.split('.')[0]}", p) for p in fake[:k]]
        png = save_slices_png(
            [load_volume(p) for _, p in shown],
            self.output_dir / "real_vs_generated.png",
            data_range=self.data_range,
            titles=[t for t, _ in shown],
        )
        files = {"metrics": str(self.output_dir / "metrics.json"), "preview": png}
        write_json(self.output_dir / "metrics.json", {**metrics, "files": files})
        return files
