"""Metrics: paired image metrics (MSE/PSNR/SSIM), synthesis baselines and the synthesis report."""

from wdm_bundle.metrics.baselines import best_correlated_baseline, histogram_match, mean_target_baseline, pearson
from wdm_bundle.metrics.paired import METRIC_KEYS, normalize_percentiles, paired_metrics
from wdm_bundle.metrics.synthesis_report import METHODS, compare_synthesis

__all__ = [
    "best_correlated_baseline", "histogram_match", "mean_target_baseline", "pearson",
    "METRIC_KEYS", "normalize_percentiles", "paired_metrics",
    "METHODS", "compare_synthesis",
]
