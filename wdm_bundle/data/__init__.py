"""Data: volume I/O and case discovery, datalists, input validation, the resumable sampler and the demo data set."""

from wdm_bundle.data.datalists import build_datalist
from wdm_bundle.data.demo import make_demo_dataset, make_demo_subject
from wdm_bundle.data.demo_inpainting import make_inpainting_dataset, make_inpainting_subject
from wdm_bundle.data.inpainting_transforms import inpainting_framing, inpainting_training_preprocessing
from wdm_bundle.data.io import CONTRASTS, NIFTI_SUFFIXES, find_case_files, find_cases, load_volume, volume_shape
from wdm_bundle.data.label_maps import validate_label_maps
from wdm_bundle.data.masks import random_healthy_mask
from wdm_bundle.data.samplers import ResumableSampler
from wdm_bundle.data.segmentation_transforms import BratsRegionsd, labels_to_regions, regions_to_labels
from wdm_bundle.data.transforms import (
    Placement,
    framing_transform,
    invert_framing,
    synthesis_preprocessing,
    training_spacing,
)
from wdm_bundle.data.validation import InvalidDataError, resolve_image_size, validate_images

__all__ = [
    "CONTRASTS",
    "NIFTI_SUFFIXES",
    "find_case_files",
    "find_cases",
    "load_volume",
    "volume_shape",
    "make_demo_dataset",
    "make_demo_subject",
    "make_inpainting_dataset",
    "make_inpainting_subject",
    "inpainting_framing",
    "inpainting_training_preprocessing",
    "random_healthy_mask",
    "build_datalist",
    "InvalidDataError",
    "resolve_image_size",
    "validate_images",
    "ResumableSampler",
    "Placement",
    "framing_transform",
    "invert_framing",
    "synthesis_preprocessing",
    "validate_label_maps",
    "BratsRegionsd",
    "labels_to_regions",
    "regions_to_labels",
]
