"""Training and generation workflow pieces: batch preparation, handlers, checkpoints, sampling to files."""

from wdm_bundle.engines.checkpoint import (
    TrainingCheckpointer,
    atomic_save,
    latest_checkpoint,
    list_checkpoints,
    load_weights,
)
from wdm_bundle.engines.generation import VolumeGenerator, centered_affine, sample_seed
from wdm_bundle.engines.handlers import IterationBudget, PreviewSampler
from wdm_bundle.engines.prepare_batch import WaveletPrepareBatch

__all__ = [
    "WaveletPrepareBatch", "IterationBudget", "PreviewSampler", "TrainingCheckpointer", "atomic_save",
    "latest_checkpoint", "list_checkpoints", "load_weights", "VolumeGenerator", "centered_affine", "sample_seed",
]
