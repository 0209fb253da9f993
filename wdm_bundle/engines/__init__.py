"""Training and generation workflow pieces: batch preparation, handlers, checkpoints, sampling to files."""

from wdm_bundle.engines.checkpoint import TrainingCheckpointer
from wdm_bundle.engines.checkpoint_files import (
    atomic_save,
    latest_checkpoint,
    list_checkpoints,
    load_weights,
    trained_diffusion,
)
from wdm_bundle.engines.generation import (
    VolumeGenerator,
    centered_affine,
    generate,
    sample_seed,
    seeded_sample,
    write_volume,
)
from wdm_bundle.engines.handlers import IterationBudget, PreviewSampler
from wdm_bundle.engines.inpainter import Inpainter
from wdm_bundle.engines.inpainting import inpaint_volume, inpainting_inferer, inpainting_preprocessing
from wdm_bundle.engines.known_records import LEGACY_RECORDS, authors_record
from wdm_bundle.engines.label_generation import LabelImageGenerator
from wdm_bundle.engines.prepare_batch import (
    InpaintingPrepareBatch,
    LabelConditionPrepareBatch,
    SynthesisPrepareBatch,
    WaveletPrepareBatch,
    coefficient_mask,
    inpainting_condition,
    synthesis_inputs,
)
from wdm_bundle.engines.random_state import random_state, set_random_state
from wdm_bundle.engines.record import load_record, read_record, recorded_network, training_record
from wdm_bundle.engines.record_schema import Task, schedule_settings, validate_record
from wdm_bundle.engines.segmentation import Segmenter, load_segmenter, segmentation_record
from wdm_bundle.engines.synthesis import CaseError, CaseResult, ContrastSynthesizer, case_seed, synthesize, write_like
from wdm_bundle.engines.tracking import connect_tracking

__all__ = [
    "WaveletPrepareBatch",
    "SynthesisPrepareBatch",
    "InpaintingPrepareBatch",
    "inpainting_condition",
    "coefficient_mask",
    "synthesis_inputs",
    "IterationBudget",
    "PreviewSampler",
    "connect_tracking",
    "TrainingCheckpointer",
    "atomic_save",
    "latest_checkpoint",
    "list_checkpoints",
    "load_weights",
    "random_state",
    "set_random_state",
    "trained_diffusion",
    "VolumeGenerator",
    "ContrastSynthesizer",
    "Inpainter",
    "inpaint_volume",
    "inpainting_inferer",
    "inpainting_preprocessing",
    "CaseError",
    "CaseResult",
    "write_like",
    "centered_affine",
    "sample_seed",
    "generate",
    "seeded_sample",
    "write_volume",
    "synthesize",
    "case_seed",
    "LEGACY_RECORDS",
    "Task",
    "authors_record",
    "load_record",
    "read_record",
    "recorded_network",
    "schedule_settings",
    "training_record",
    "validate_record",
    "LabelConditionPrepareBatch",
    "LabelImageGenerator",
    "Segmenter",
    "load_segmenter",
    "segmentation_record",
]
