"""Evaluation runners: read a folder of results, score it with `wdm_bundle.metrics`, write a report.

* :func:`compare_synthesis` (`reports/synthesis.py`): missing-contrast predictions vs ground truth and baselines.
* :func:`evaluate_inpainting` (`reports/inpainting.py`): inpainting vs ground truth and baselines, BraTS metrics.
* :class:`GenerationEvaluator` (`reports/generation.py`): generated vs real volumes (FID, MS-SSIM diversity).
* :func:`evaluate_downstream` (`reports/downstream.py`): a segmenter's Dice/HD95 with the synthesised contrast vs
  all real contrasts and the baselines.
* :func:`run_synthetic_data_experiment` (`reports/synthetic_experiment.py`): segmenters trained on real, synthetic
  and real + synthetic cases, scored on held-out real cases.
"""

from wdm_bundle.reports.downstream import evaluate_downstream
from wdm_bundle.reports.generation import FID_NEEDS_WEIGHTS, GenerationEvaluator, feature_statistics
from wdm_bundle.reports.inpainting import (
    INPAINTING_METRIC_KEYS,
    InpaintingEvaluationError,
    challenge_metrics,
    evaluate_inpainting,
)
from wdm_bundle.reports.synthesis import METHODS, compare_synthesis
from wdm_bundle.reports.synthetic_experiment import run_synthetic_data_experiment

__all__ = ["FID_NEEDS_WEIGHTS", "GenerationEvaluator", "feature_statistics", "METHODS", "compare_synthesis"]
__all__ += ["INPAINTING_METRIC_KEYS", "InpaintingEvaluationError", "challenge_metrics", "evaluate_inpainting"]
__all__ += ["evaluate_downstream", "run_synthetic_data_experiment"]
