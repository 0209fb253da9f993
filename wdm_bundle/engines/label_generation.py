"""Label-conditioned generation: MR contrasts from a tumour label map and a brain mask, case by case.

`generate_contrasts` samples one case on its label map's exact grid; `LabelImageGenerator` turns a folder of case
folders ``<case>/<case>-seg.nii.gz`` into a synthetic BraTS-layout data set (``configs/inference_label2image.json``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.networks.schedulers import Scheduler
from monai.transforms import Compose
from torch import nn
from tqdm.auto import tqdm

from wdm_bundle.data.datalists import write_datalist
from wdm_bundle.data.io import find_cases, load_nifti, load_volume
from wdm_bundle.data.label_maps import (
    brain_mask_file,
    check_case_name,
    check_suffix,
    nifti_file,
    one_hot_conditions,
    validate_label_maps,
)
from wdm_bundle.data.transforms import framing_transform, invert_framing
from wdm_bundle.data.validation import InvalidDataError
from wdm_bundle.diffusion import WaveletDiffusionInferer, unwrap_model
from wdm_bundle.engines.generation import network_device, sample_conditioned
from wdm_bundle.engines.prepare_batch import label_condition
from wdm_bundle.engines.record import Task, load_record, read_record
from wdm_bundle.engines.synthesis import case_seed, write_like
from wdm_bundle.utils import as_bool, atomic_write

__all__ = ["LabelImageGenerator", "generate_contrasts", "load_label_record"]

logger = logging.getLogger(__name__)


def load_label_record(ckpt_path: str | os.PathLike, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record of a label-conditioned model (`load_record` with task ``label_generation``).

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        ValueError: the file has no record (label-conditioned models always write one), is a model of another task
            (the message names that task's inference config) or contradicts ``given``.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist; train with configs/train_label2image.json first.")
    record = read_record(path)
    if record is None:
        raise ValueError(f"'{path}' holds no training record, so it is not a label-conditioned model.")
    return load_record(path, Task.LABEL_GENERATION, given)


@torch.no_grad()
def generate_contrasts(
    network: nn.Module,
    inferer: WaveletDiffusionInferer,
    label: np.ndarray,
    brain: np.ndarray,
    record: Mapping[str, Any],
    seed: int,
    case: str,
    *,
    scheduler: Scheduler | None = None,
    device: str | torch.device | None = None,
    amp: bool = False,
    amp_dtype: str | None = None,
) -> np.ndarray:
    """Sample the record's contrasts of one case on the label map's grid.

    Args:
        label: (D, H, W) label map, integers in {0} + ``record["labels"]``.
        brain: (D, H, W) brain mask or skull-stripped image: its non-zero voxels are the brain.
        record: the model's training record: ``contrasts``, ``labels``, framing, data range.
        seed, case: the run's seed and the case name, which together seed the noise (`case_seed`).
        scheduler, device, amp, amp_dtype: as `wdm_bundle.engines.seeded_sample`.

    Returns:
        (K, D, H, W) float32 in [0, 1], 0 outside the brain; K = ``len(record["contrasts"])``.
    """
    model, device = unwrap_model(network), network_device(network, device)
    label_t, brain_t = (torch.from_numpy(np.asarray(a, np.float32))[None] for a in (label, brain))
    framing = Compose(
        [framing_transform("c", record["pad_crop_size"] or None, record["placement"], model.image_size_multiple)]
    )
    framed = framing({"c": MetaTensor(one_hot_conditions(label_t, brain_t, record["labels"]))})["c"]
    condition = label_condition(model.wavelet, framed.as_tensor()[None].to(device))
    image = sample_conditioned(
        network,
        inferer,
        condition,
        case_seed(seed, case),
        scheduler=scheduler,
        device=device,
        amp=amp,
        amp_dtype=amp_dtype,
    )
    out = invert_framing(image, framed, framing, "c").numpy().clip(0.0, 1.0)
    out[:, np.asarray(brain) == 0] = 0.0
    return out.astype(np.float32)


class LabelImageGenerator:
    """For each case folder ``<input_dir>/<case>/<case><label_suffix>.nii.gz``, generate the model's contrasts.

    Writes a BraTS-layout data set: ``<output_dir>/<case>/<case>-<contrast>.nii.gz`` (float32 in [0, 1], the label
    map's affine and header), a copy of the label map as ``<case>-seg.nii.gz`` and ``<output_dir>/datalist.json``
    (``"training"``: ``{"case", <contrast>: path, ..., "seg": path}``, paths relative to ``output_dir``). The brain of a
    case is `brain_mask_file`. Every label map is checked (`validate_label_maps`) and every output path is checked
    for existing files (refused unless ``overwrite``) before any sampling.

    Args:
        record: the model's training record (`load_label_record`).
        network: the model, weights loaded; inferer, scheduler: its sampler.
        cases: only these case names (None: every case folder with a label map).
        output_contrasts: write only these of the model's contrasts (None: all).
        allow_empty_labels: accept label maps without any tumour voxel (healthy brains).
    """

    def __init__(
        self,
        record: Mapping[str, Any],
        network: nn.Module,
        inferer: WaveletDiffusionInferer,
        scheduler: Scheduler,
        input_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        label_suffix: str = "-seg",
        brainmask_suffix: str = "-brainmask",
        cases: Sequence[str] | str | None = None,
        allow_empty_labels: bool = False,
        output_contrasts: Sequence[str] | str | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        overwrite: bool = False,
        progress: bool = True,
        amp: bool = False,
        amp_dtype: str | None = None,
    ) -> None:
        self.record = dict(record)
        if self.record.get("task") != Task.LABEL_GENERATION:
            raise ValueError(f"the record is of a {self.record.get('task')} model, not a label_generation model.")
        if tuple(inferer.data_range) != tuple(self.record["data_range"]):
            raise ValueError(
                f"the inferer clamps to {inferer.data_range}, the model was trained on {self.record['data_range']}."
            )
        self.contrasts, self.labels = list(self.record["contrasts"]), list(self.record["labels"])
        wanted = [output_contrasts] if isinstance(output_contrasts, str) else output_contrasts
        unknown = [c for c in wanted or [] if c not in self.contrasts]
        if unknown or (wanted is not None and not wanted):
            raise ValueError(f"output_contrasts {wanted!r:.80} must be some of the model's contrasts {self.contrasts}.")
        self.written = list(self.contrasts if wanted is None else [c for c in self.contrasts if c in wanted])
        self.network, self.inferer, self.scheduler = network, inferer, scheduler
        self.input_dir, self.output_dir = Path(input_dir), Path(output_dir)
        self.label_suffix = check_suffix(label_suffix, "label_suffix")
        self.brainmask_suffix = check_suffix(brainmask_suffix, "brainmask_suffix")
        names = [cases] if isinstance(cases, str) else cases
        self.only = None if names is None else [check_case_name(str(c)) for c in names]
        self.allow_empty = as_bool(allow_empty_labels, "allow_empty_labels")
        self.device, self.seed = torch.device(device), int(seed)
        self.overwrite, self.progress = as_bool(overwrite, "overwrite"), as_bool(progress, "progress")
        self.amp, self.amp_dtype = as_bool(amp, "amp"), amp_dtype

    def cases(self) -> list[dict[str, str]]:
        """``{"case", "seg", "brainmask"}`` per case to generate, sorted by case name.

        Raises:
            ValueError: no case folder with a label map, or a requested case that has none.
            InvalidDataError: cases without a brain mask or a contrast to take it from (every one listed).
        """
        folders = {p.name: p for p in find_cases(self.input_dir, "input_dir")}
        with_label = {n: f for n, f in ((n, nifti_file(p, n + self.label_suffix)) for n, p in folders.items()) if f}
        if self.only is not None:
            unknown = [c for c in self.only if c not in with_label]
            if unknown:
                raise ValueError(
                    f"case(s) {unknown} of --cases have no folder with a '<case>{self.label_suffix}.nii.gz' label map "
                    f"in input_dir '{self.input_dir}'."
                )
        names = sorted(with_label if self.only is None else set(self.only))
        if not names:
            raise ValueError(
                f"input_dir '{self.input_dir}' holds no case folders with a label map "
                f"(<case>/<case>{self.label_suffix}.nii.gz)."
            )
        entries, problems = [], []
        for name in names:
            try:
                mask = brain_mask_file(folders[name], name, self.brainmask_suffix)
            except FileNotFoundError as e:
                problems.append(str(e))
                continue
            entries.append({"case": name, "seg": str(with_label[name]), "brainmask": mask})
        if problems:
            raise InvalidDataError(f"{len(problems)} case(s) cannot be used:\n  " + "\n  ".join(problems))
        return entries

    def output_files(self, case: str) -> dict[str, Path]:
        """``{contrast or "seg": output path}`` of one case."""
        folder = self.output_dir / case
        return {c: folder / f"{case}-{c}.nii.gz" for c in [*self.written, "seg"]}

    def _check_outputs(self, entries: Sequence[Mapping[str, str]]) -> None:
        paths = [p for e in entries for p in self.output_files(e["case"]).values()]
        existing = [str(p) for p in [*paths, self.output_dir / "datalist.json"] if p.exists()]
        if existing and not self.overwrite:
            shown = "\n  ".join(existing[:20]) + (
                f"\n  ... and {len(existing) - 20} more" if len(existing) > 20 else ""
            )
            raise FileExistsError(f"{len(existing)} output file(s) exist; --overwrite true replaces them:\n  {shown}")

    def process(self, entry: Mapping[str, str]) -> dict[str, str]:
        """Generate and write one case; returns its datalist entry (paths relative to ``output_dir``)."""
        case = entry["case"]
        image, label = load_nifti(entry["seg"])
        volumes = generate_contrasts(
            self.network,
            self.inferer,
            label,
            load_volume(entry["brainmask"]),
            self.record,
            self.seed,
            case,
            scheduler=self.scheduler,
            device=self.device,
            amp=self.amp,
            amp_dtype=self.amp_dtype,
        )
        files = self.output_files(case)
        files["seg"].parent.mkdir(parents=True, exist_ok=True)
        for c, volume in zip(self.contrasts, volumes):
            if c in files:
                write_like(volume, image, files[c])
        if entry["seg"].endswith(".nii.gz"):
            atomic_write(files["seg"], lambda tmp: shutil.copyfile(entry["seg"], tmp))
        else:
            atomic_write(files["seg"], lambda tmp: nib.save(nib.load(entry["seg"]), tmp))
        return {"case": case, **{k: f"{case}/{p.name}" for k, p in files.items()}}

    def run(self) -> list[dict[str, str]]:
        """Check everything, then generate every case and write ``datalist.json``; returns the datalist entries.

        Raises:
            InvalidDataError, FileExistsError, ValueError: before any sampling (see `cases`, the class docstring).
            RuntimeError: no case was written.
        """
        entries = self.cases()
        validate_label_maps(entries, self.labels, allow_empty=self.allow_empty)
        self._check_outputs(entries)
        written = []
        for entry in tqdm(entries, desc="cases", disable=not self.progress):
            written.append(self.process(entry))
            logger.info(f"{entry['case']}: wrote {', '.join(self.written)} into '{self.output_dir / entry['case']}'")
        if not written:
            raise RuntimeError(f"no case was generated from '{self.input_dir}'.")
        write_datalist(
            self.output_dir / "datalist.json",
            written,
            len(written),
            description=f"Synthetic BraTS-layout data generated from the label maps of '{self.input_dir}' by a "
            "label-conditioned wavelet diffusion model (wdm_bundle.engines.label_generation).",
            contrasts=self.written,
            labels=self.labels,
            seed=self.seed,
        )
        logger.info(f"generated {len(written)} case(s) into '{self.output_dir}'.")
        return written
