"""Metrics: paired image metrics (MSE/PSNR/SSIM), synthesis baselines and report, generation metrics (FID, MS-SSIM)."""

from wdm_bundle.metrics.baselines import (
    best_correlated_baseline,
    histogram_match,
    mean_target_baseline,
    pearson,
    quantile_function,
    training_histogram_baseline,
)
from wdm_bundle.metrics.paired import METRIC_KEYS, normalize_percentiles, paired_metrics
from wdm_bundle.metrics.synthesis_report import METHODS, compare_synthesis
from wdm_bundle.metrics.fid import FeatureStatistics, frechet_distance
from wdm_bundle.metrics.med3d import MED3D_FEATURE_DIM, Med3DResNet50, load_med3d_weights, med3d_normalize
from wdm_bundle.metrics.diversity import (
    MS_SSIM_WEIGHTS, ms_ssim, ms_ssim_diversity, ms_ssim_min_size, truncated_ms_ssim_weights,
)
from wdm_bundle.metrics.generation_report import FID_NEEDS_WEIGHTS, GenerationEvaluator, feature_statistics

__all__ = [
    "best_correlated_baseline", "histogram_match", "mean_target_baseline", "pearson", "quantile_function",
    "training_histogram_baseline",
    "METRIC_KEYS", "normalize_percentiles", "paired_metrics",
    "METHODS", "compare_synthesis",
    "FeatureStatistics", "frechet_distance",
    "MED3D_FEATURE_DIM", "Med3DResNet50", "load_med3d_weights", "med3d_normalize",
    "MS_SSIM_WEIGHTS", "ms_ssim", "ms_ssim_diversity", "ms_ssim_min_size", "truncated_ms_ssim_weights",
    "FID_NEEDS_WEIGHTS", "GenerationEvaluator", "feature_statistics",
]
