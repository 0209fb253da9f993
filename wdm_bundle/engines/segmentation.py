"""A BraTS tumour segmenter: MONAI `SegResNet` (model zoo ``brats_mri_segmentation``), its record, loading, inference.

Trained by ``configs/train_segmentation.json``: the contrasts (t1n, t1c, t2w, t2f) in, 3 sigmoid channels out
(TC, WT, ET; `wdm_bundle.data.segmentation_transforms`). Its ``model.pt`` holds a segmentation record
(`segmentation_record`) from which `load_segmenter` rebuilds the network and the preprocessing.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SegResNet

from wdm_bundle.data.io import load_nifti
from wdm_bundle.data.segmentation_transforms import BRATS_LABELS, REGIONS, normalize_intensity, regions_to_labels
from wdm_bundle.engines.checkpoint_files import load_weights
from wdm_bundle.engines.record_schema import RECORD_VERSION, Task, _choice, _name, _number, _pair, _size, label_values
from wdm_bundle.utils import torch_load

__all__ = [
    "BratsSegResNet",
    "CosineAnnealing",
    "build_segmenter",
    "segmentation_record",
    "validate_segmentation_record",
    "load_segmenter",
    "Segmenter",
]

logger = logging.getLogger(__name__)

_NETWORK_KEYS = (
    "spatial_dims",
    "in_channels",
    "out_channels",
    "init_filters",
    "blocks_down",
    "blocks_up",
    "dropout_prob",
    "norm_num_groups",
)
_RECORD_KEYS = (
    "version",
    "task",
    "contrasts",
    "clip_percentiles",
    "roi_size",
    "orientation",
    "regions",
    "labels",
    "network",
)


class BratsSegResNet(SegResNet):
    """MONAI `SegResNet` (group norm, ReLU) whose constructor arguments are kept in ``config`` for the record.

    Input (N, in_channels, X, Y, Z) with X, Y, Z multiples of ``2 ** (len(blocks_down) - 1)``; output
    (N, out_channels, X, Y, Z) logits.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        out_channels: int = 3,
        init_filters: int = 16,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        dropout_prob: float | None = None,
        norm_num_groups: int = 8,
    ) -> None:
        self.config = _check_network(
            {
                "spatial_dims": spatial_dims,
                "in_channels": in_channels,
                "out_channels": out_channels,
                "init_filters": init_filters,
                "blocks_down": list(blocks_down),
                "blocks_up": list(blocks_up),
                "dropout_prob": dropout_prob,
                "norm_num_groups": norm_num_groups,
            }
        )
        c = self.config
        super().__init__(
            spatial_dims=c["spatial_dims"],
            init_filters=c["init_filters"],
            in_channels=c["in_channels"],
            out_channels=c["out_channels"],
            dropout_prob=c["dropout_prob"],
            norm=("GROUP", {"num_groups": c["norm_num_groups"]}),
            blocks_down=tuple(c["blocks_down"]),
            blocks_up=tuple(c["blocks_up"]),
        )

    @property
    def size_multiple(self) -> int:
        """Input sizes must be multiples of this (the down-sampling factor)."""
        return 2 ** (len(self.config["blocks_down"]) - 1)


class CosineAnnealing:
    """Anneal each optimizer group's learning rate from its initial value to ``eta_min`` over ``num_iterations``
    (cosine, as the zoo's ``CosineAnnealingLR``), set at every iteration start from ``engine.state.iteration``.

    Stateless (a torch scheduler's state is not in the training checkpoint), so a resumed run goes on exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, num_iterations: int, eta_min: float = 0.0) -> None:
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}.")
        self.optimizer = optimizer
        self.num_iterations = int(num_iterations)
        self.eta_min = float(eta_min)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        done = min(engine.state.iteration - 1, self.num_iterations) / self.num_iterations
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.eta_min + (base - self.eta_min) * 0.5 * (1.0 + math.cos(math.pi * done))


def build_segmenter(**network_args: Any) -> BratsSegResNet:
    """The segmentation network of a config's ``network_def`` (`BratsSegResNet` arguments)."""
    return BratsSegResNet(**network_args)


def _blocks(value: Any, what: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 8:
        raise ValueError(f"{what} must be a list of 1 to 8 block counts, got {value!r:.80}.")
    return [_number(v, f"{what}[]", 1, 64, integer=True) for v in value]


def _check_network(network: Any) -> dict[str, Any]:
    """The SegResNet arguments of a record, checked (closed set of keys, types, ranges); ValueError naming the key."""
    if not isinstance(network, Mapping):
        raise ValueError(f"network must be a dict of SegResNet arguments, got {type(network).__name__}.")
    unknown = sorted(set(network) - set(_NETWORK_KEYS))
    missing = sorted(set(_NETWORK_KEYS) - set(network))
    if unknown or missing:
        raise ValueError(
            f"network must have exactly the keys {list(_NETWORK_KEYS)}; unknown {unknown}, missing {missing}."
        )
    n = {
        "spatial_dims": _number(network["spatial_dims"], "network#spatial_dims", 3, 3, integer=True),
        "in_channels": _number(network["in_channels"], "network#in_channels", 1, 16, integer=True),
        "out_channels": _number(network["out_channels"], "network#out_channels", 1, 16, integer=True),
        "init_filters": _number(network["init_filters"], "network#init_filters", 1, 1024, integer=True),
        "blocks_down": _blocks(network["blocks_down"], "network#blocks_down"),
        "blocks_up": _blocks(network["blocks_up"], "network#blocks_up"),
        "dropout_prob": None,
        "norm_num_groups": _number(network["norm_num_groups"], "network#norm_num_groups", 1, 1024, integer=True),
    }
    if network["dropout_prob"] is not None:
        n["dropout_prob"] = _number(network["dropout_prob"], "network#dropout_prob", 0.0, 0.99)
    if len(n["blocks_up"]) != len(n["blocks_down"]) - 1:
        raise ValueError(
            f"network#blocks_up must have one entry fewer than blocks_down, got {n['blocks_up']} and "
            f"{n['blocks_down']}."
        )
    if n["init_filters"] % n["norm_num_groups"]:
        raise ValueError(
            f"network#init_filters ({n['init_filters']}) must be a multiple of norm_num_groups "
            f"({n['norm_num_groups']}) for group normalisation."
        )
    return n


def segmentation_record(
    network: BratsSegResNet | Mapping[str, Any],
    contrasts: Sequence[str],
    clip_percentiles: Sequence[float],
    roi_size: Sequence[int],
    orientation: str = "RAS",
    regions: Sequence[str] = REGIONS,
    labels: Sequence[int] = BRATS_LABELS,
) -> dict[str, Any]:
    """The record of a segmentation training run (``network``: the network or its ``config``), validated."""
    record = {
        "version": RECORD_VERSION,
        "task": Task.SEGMENTATION.value,
        "contrasts": list(contrasts),
        "clip_percentiles": list(clip_percentiles),
        "roi_size": list(roi_size),
        "orientation": orientation,
        "regions": list(regions),
        "labels": list(labels),
        "network": dict(getattr(network, "config", network)),
    }
    return validate_segmentation_record(record, "this training run")


def validate_segmentation_record(record: Any, source: str = "the record") -> dict[str, Any]:
    """Check every value of a segmentation record (types, closed sets, ranges) and return a clean copy.

    Raises:
        ValueError: naming ``source``, the key and the problem (also for a diffusion model's record).
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"{source}: the segmentation record must be a dict, got {type(record).__name__}.")
    if record.get("task") != Task.SEGMENTATION:
        raise ValueError(
            f"{source} is not a segmentation model: its record has task {record.get('task')!r:.40} (a diffusion "
            "model's); give a model.pt trained by configs/train_segmentation.json."
        )
    try:
        version = _number(record.get("version"), "version", 1, 10**6, integer=True)
        if version > RECORD_VERSION:
            raise ValueError(f"version {version} is newer than this bundle's ({RECORD_VERSION}); update the bundle.")
        unknown = sorted(set(record) - set(_RECORD_KEYS))
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        contrasts = record.get("contrasts")
        if not isinstance(contrasts, (list, tuple)) or not 1 <= len(contrasts) <= 16:
            raise ValueError(f"contrasts must be a list of 1 to 16 names, got {contrasts!r:.80}.")
        contrasts = [_name(c, "contrasts[]", allow_none=False) for c in contrasts]
        if len(set(contrasts)) != len(contrasts):
            raise ValueError(f"contrasts must be distinct, got {contrasts}.")
        regions = record.get("regions")
        if not isinstance(regions, (list, tuple)) or list(regions) != list(REGIONS):
            raise ValueError(f"regions must be {list(REGIONS)} (the output channels), got {regions!r:.80}.")
        labels = label_values(record.get("labels"), allow_none=False)
        if len(labels) != 3:
            raise ValueError(f"labels must be the 3 label values of NCR, SNFH, ET, got {labels}.")
        out = {
            "version": RECORD_VERSION,
            "task": Task.SEGMENTATION.value,
            "contrasts": contrasts,
            "clip_percentiles": _pair(record.get("clip_percentiles"), "clip_percentiles", 0.0, 100.0),
            "roi_size": _size(record.get("roi_size"), "roi_size", allow_none=False),
            "orientation": _choice(record.get("orientation"), "orientation", ["RAS", "LPS"]),
            "regions": list(REGIONS),
            "labels": labels,
            "network": _check_network(record.get("network")),
        }
        net = out["network"]
        if net["in_channels"] != len(contrasts) or net["out_channels"] != len(REGIONS):
            raise ValueError(
                f"network#in_channels/out_channels ({net['in_channels']}, {net['out_channels']}) must be the number of "
                f"contrasts and regions ({len(contrasts)}, {len(REGIONS)})."
            )
        multiple = 2 ** (len(net["blocks_down"]) - 1)
        if any(s % multiple for s in out["roi_size"]):
            raise ValueError(
                f"roi_size {out['roi_size']} must be multiples of {multiple} (the network's down-sampling)."
            )
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: invalid segmentation record: {e}") from None
    return out


class Segmenter:
    """A trained segmenter: raw contrasts on any grid -> BraTS labels (0 background, NCR, SNFH, ET) on that grid.

    Preprocessing as in training: reorient to the record's orientation (axis permutation and flips only, as MONAI
    `Orientationd`), `normalize_intensity`; then sliding-window inference over ``roi_size`` windows, sigmoid > 0.5 per
    region (TC, WT, ET), `regions_to_labels`, and back to the input's voxel order.

    Attributes:
        contrasts: the input contrasts, in the network's channel order.
        record: the validated segmentation record.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        record: Mapping[str, Any],
        device: str | torch.device = "cpu",
        roi_size: Sequence[int] | None = None,
        sw_batch_size: int = 1,
        overlap: float = 0.5,
    ) -> None:
        self.record = validate_segmentation_record(record, "the segmenter's record")
        self.contrasts: list[str] = list(self.record["contrasts"])
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        roi = [int(r) for r in roi_size] if roi_size else self.record["roi_size"]
        multiple = 2 ** (len(self.record["network"]["blocks_down"]) - 1)
        if len(roi) != 3 or any(r < 1 or r % multiple for r in roi):
            raise ValueError(f"roi_size must be 3 multiples of {multiple} (the network's down-sampling), got {roi}.")
        self.inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=sw_batch_size, overlap=overlap)

    def _check(self, volumes: Mapping[str, np.ndarray], affine: np.ndarray) -> tuple[int, ...]:
        missing = [c for c in self.contrasts if c not in volumes]
        if missing:
            raise ValueError(f"no volume for contrast(s) {missing}; the segmenter needs {self.contrasts}.")
        shapes = {c: tuple(np.shape(volumes[c])) for c in self.contrasts}
        first = shapes[self.contrasts[0]]
        bad = {c: s for c, s in shapes.items() if s != first or len(s) != 3}
        if bad:
            raise ValueError(
                f"the contrasts must be 3D volumes of one shape; got shapes {shapes} ({list(bad)} differ)."
            )
        if np.shape(affine) != (4, 4) or not np.isfinite(affine).all():
            raise ValueError(f"affine must be a finite 4x4 matrix, got shape {np.shape(affine)}.")
        return first

    @torch.no_grad()
    def segment(self, volumes: Mapping[str, np.ndarray], affine: np.ndarray) -> np.ndarray:
        """BraTS labels (X, Y, Z) uint8 in {0, NCR, SNFH, ET} of raw-intensity (X, Y, Z) volumes ``{contrast: array}``
        sharing one grid with voxel-to-world ``affine`` (as nibabel loads them).

        Raises:
            ValueError: a contrast missing or of another shape (named), or a bad affine.
        """
        self._check(volumes, affine)
        start = nib.orientations.io_orientation(np.asarray(affine, float))
        target = nib.orientations.axcodes2ornt(tuple(self.record["orientation"]))
        forward = nib.orientations.ornt_transform(start, target)
        image = np.stack(
            [nib.orientations.apply_orientation(np.asarray(volumes[c], np.float32), forward) for c in self.contrasts]
        )
        x = normalize_intensity(torch.from_numpy(image), self.record["clip_percentiles"])
        logits = self.inferer(x[None].to(self.device), self.network)
        labels = regions_to_labels(torch.sigmoid(logits[0]) > 0.5, self.record["labels"])
        back = nib.orientations.ornt_transform(target, start)
        return np.ascontiguousarray(nib.orientations.apply_orientation(labels, back)).astype(np.uint8)

    def segment_files(self, paths: Mapping[str, str | os.PathLike]) -> tuple[np.ndarray, nib.Nifti1Image]:
        """Labels (X, Y, Z) uint8 of the NIfTI files ``{contrast: path}`` and the first contrast's image (header,
        affine: write the labels with it).

        Raises:
            ValueError: a contrast missing, or files whose shapes or affines differ (named).
        """
        missing = [c for c in self.contrasts if c not in paths]
        if missing:
            raise ValueError(f"no file for contrast(s) {missing}; the segmenter needs {self.contrasts}.")
        loaded = {c: load_nifti(paths[c]) for c in self.contrasts}
        ref_name = self.contrasts[0]
        ref, ref_data = loaded[ref_name]
        for c, (img, data) in loaded.items():
            if data.shape != ref_data.shape or not np.allclose(img.affine, ref.affine, atol=1e-4):
                raise ValueError(
                    f"'{paths[c]}' ({data.shape}) is not on the grid of '{paths[ref_name]}' ({ref_data.shape}): "
                    "the contrasts of a case must share shape and affine; register them first."
                )
        return self.segment({c: data for c, (_, data) in loaded.items()}, ref.affine), ref


def load_segmenter(
    ckpt_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.5,
) -> Segmenter:
    """The `Segmenter` of a ``model.pt`` (or training checkpoint) written by ``configs/train_segmentation.json``.

    Loads with ``weights_only=True``; takes the EMA weights when the file has them, else ``model``.

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: the file holds no segmentation record (a diffusion model, a bare state_dict; named), or an
            invalid one, or weights that do not fit it.
    """
    path = Path(ckpt_path)
    state = torch_load(path)
    record = state.get("record") if isinstance(state, dict) else None
    if not isinstance(record, Mapping):
        raise ValueError(
            f"checkpoint '{path}' holds no training record, so it is not a segmentation model of this bundle; "
            "train one with configs/train_segmentation.json."
        )
    record = validate_segmentation_record(record, f"checkpoint '{path}'")
    network = build_segmenter(**record["network"])
    key = "ema" if isinstance(state.get("ema"), dict) else "model"
    load_weights(network, path, key=key)
    logger.info(f"loaded segmenter '{path}' ({key} weights, iteration {state.get('iteration')}).")
    return Segmenter(network, record, device, roi_size, sw_batch_size, overlap)
