"""Metrics: paired image metrics (MSE/PSNR/SSIM), synthesis baselines, generation metrics (FID, MS-SSIM).

The evaluation runners that use them (reading folders, writing reports) are in `wdm_bundle.reports`.
"""

from wdm_bundle.metrics import baselines
from wdm_bundle.metrics.baselines import *  # noqa: F401,F403 - the names of baselines.__all__, listed once there
from wdm_bundle.metrics.diversity import (
    MS_SSIM_WEIGHTS,
    ms_ssim,
    ms_ssim_diversity,
    ms_ssim_min_size,
    truncated_ms_ssim_weights,
)
from wdm_bundle.metrics.fid import FeatureStatistics, frechet_distance
from wdm_bundle.metrics.inpainting_baselines import INPAINTING_BASELINES, harmonic_fill, mean_fill
from wdm_bundle.metrics.med3d import MED3D_FEATURE_DIM, Med3DResNet50, load_med3d_weights, med3d_normalize
from wdm_bundle.metrics.paired import METRIC_KEYS, normalize_percentiles, paired_metrics
from wdm_bundle.metrics.segmentation import brats_region_metrics

__all__ = [
    *baselines.__all__,
    "METRIC_KEYS",
    "normalize_percentiles",
    "paired_metrics",
    "brats_region_metrics",
    "FeatureStatistics",
    "frechet_distance",
    "MED3D_FEATURE_DIM",
    "Med3DResNet50",
    "load_med3d_weights",
    "med3d_normalize",
    "MS_SSIM_WEIGHTS",
    "ms_ssim",
    "ms_ssim_diversity",
    "ms_ssim_min_size",
    "truncated_ms_ssim_weights",
]
__all__ += ["INPAINTING_BASELINES", "harmonic_fill", "mean_fill"]
