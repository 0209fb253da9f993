"""`Inpainter`: inpaint every case folder ``<case>/<case>-t1n-voided.nii.gz`` + ``<case>-mask.nii.gz`` of a folder
(`wdm_bundle.engines.inpaint_volume`), with per-case errors."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.networks.schedulers import Scheduler
from torch import nn
from tqdm.auto import tqdm

from wdm_bundle.data.demo_inpainting import MASK_SUFFIX, VOIDED_SUFFIX
from wdm_bundle.data.io import contrast_files, find_cases, load_nifti
from wdm_bundle.diffusion import WaveletDiffusionInferer, unwrap_model
from wdm_bundle.engines.inpainting import IMAGE, MASK, brain_contact, check_model, inpaint_volume
from wdm_bundle.engines.synthesis import CaseError, CaseResult, write_like
from wdm_bundle.utils import as_bool

__all__ = ["Inpainter"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIX = VOIDED_SUFFIX.removesuffix(".nii.gz")  #: ``-t1n-voided``
MASK_FILE_SUFFIX = MASK_SUFFIX.removesuffix(".nii.gz")  #: ``-mask``


class Inpainter:
    """For each case folder ``<input_dir>/<case>/<case><image_suffix>.nii.gz`` with ``<case><mask_suffix>.nii.gz``,
    inpaint the mask's region (`inpaint_volume`) and write ``<output_dir>/<case><output_suffix>.nii.gz`` with the
    image's shape, affine and header (float32).

    A bad case (missing or unreadable files, image and mask of different shape or affine, a non-binary or empty
    mask, a mask outside the brain: no mask voxel within one voxel of a non-zero image voxel, `brain_contact`) is
    reported and skipped; an existing output is kept unless ``overwrite``. A summary is logged and written to
    ``inpainting_summary.json``; `run` raises RuntimeError if any case failed or there was none.

    Args:
        network: the inpainting or WDM network of ``record``, weights loaded (configs/inference_inpaint.json).
        inferer, scheduler: `inpainting_inferer` of the record and the scheduler it samples with.
        record: the model's training record (`load_record`, task ``inpainting`` or ``generation``).
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: WaveletDiffusionInferer,
        scheduler: Scheduler,
        record: Mapping[str, Any],
        input_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        image_suffix: str = IMAGE_SUFFIX,
        mask_suffix: str = MASK_FILE_SUFFIX,
        output_suffix: str = "-t1n-inference",
        device: str | torch.device = "cpu",
        seed: int = 0,
        overwrite: bool = False,
        progress: bool = True,
    ) -> None:
        self.record = dict(record)
        check_model(inferer, self.record)
        model = unwrap_model(network)
        if self.record.get("image_size") and hasattr(model, "check_image_size"):
            model.check_image_size(self.record["image_size"], name="image_size")
        self.network = network.eval()
        self.inferer, self.scheduler = inferer, scheduler
        self.input_dir, self.output_dir = Path(input_dir), Path(output_dir)
        self.suffixes = {IMAGE: image_suffix, MASK: mask_suffix}
        self.output_suffix = output_suffix
        self.device = torch.device(device)
        self.seed = int(seed)
        self.overwrite = as_bool(overwrite, "overwrite")
        self.progress = as_bool(progress, "progress")

    def cases(self) -> list[Path]:
        """The case folders of ``input_dir`` (FileNotFoundError if it is not a folder)."""
        return find_cases(self.input_dir, "input_dir", require_nifti=False)

    def _read(self, case_dir: Path, key: str) -> tuple[nib.Nifti1Image, np.ndarray]:
        suffix = self.suffixes[key].lstrip("-")
        path = contrast_files(case_dir, case_dir.name, [suffix]).get(suffix)
        if path is None:
            raise CaseError(f"no {key} file '{case_dir / case_dir.name}-{suffix}.nii.gz' (or .nii).")
        try:
            img, data = load_nifti(path)
        except Exception as e:
            raise CaseError(f"{path}: cannot be read as NIfTI ({type(e).__name__}: {e})") from e
        if data.ndim != 3 or not np.isfinite(data).all():
            raise CaseError(f"{path}: expected a finite 3D volume, got shape {data.shape}.")
        return img, data

    def load_inputs(self, case_dir: Path) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray]:
        """The case's image (for its geometry), voided volume and boolean mask, checked (CaseError if bad)."""
        img, voided = self._read(case_dir, IMAGE)
        mask_img, mask = self._read(case_dir, MASK)
        if mask.shape != voided.shape:
            raise CaseError(f"mask shape {mask.shape} differs from the image's {voided.shape}.")
        if not np.allclose(mask_img.affine, img.affine, atol=1e-3):
            raise CaseError("mask affine differs from the image's; they must be on one grid.")
        values = np.unique(mask)
        if not np.isin(values, (0, 1)).all():
            raise CaseError(f"mask is not binary (0 = keep, 1 = inpaint): values {values[:6].tolist()}.")
        if not mask.any():
            raise CaseError("mask is empty: nothing to inpaint.")
        if not brain_contact(voided, mask):
            raise CaseError("mask is outside the brain: no mask voxel is within one voxel of a non-zero image voxel.")
        return img, voided, mask != 0

    def process(self, case_dir: Path) -> CaseResult:
        case = case_dir.name
        out_path = self.output_dir / f"{case}{self.output_suffix}.nii.gz"
        if out_path.exists() and not self.overwrite:
            return CaseResult(
                case, "exists", output=str(out_path), message="kept the existing output; --overwrite true redoes it"
            )
        img, voided, mask = self.load_inputs(case_dir)
        try:
            result = inpaint_volume(
                self.network,
                self.inferer,
                voided,
                mask,
                self.record,
                self.seed,
                case,
                scheduler=self.scheduler,
                device=self.device,
                affine=img.affine,
            )
        except ValueError as e:  # e.g. mask voxels outside the model's frame, a constant image
            raise CaseError(str(e)) from e
        write_like(result, img, out_path)
        return CaseResult(case, "ok", output=str(out_path))

    def run(self) -> list[CaseResult]:
        """Inpaint every case; RuntimeError at the end if any case failed or ``input_dir`` has no case folder."""
        cases = self.cases()
        if not cases:
            raise RuntimeError(
                f"input_dir '{self.input_dir}' holds no case folders (<case>/<case>{self.suffixes[IMAGE]}.nii.gz)."
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for case_dir in tqdm(cases, desc="cases", disable=not self.progress):
            try:
                results.append(self.process(case_dir))
                logger.info(
                    f"{case_dir.name}: {'wrote' if results[-1].status == 'ok' else 'kept existing'} {results[-1].output}"
                )
            except CaseError as e:
                results.append(CaseResult(case_dir.name, "failed", message=str(e)))
                logger.error(f"{case_dir.name}: skipped: {e}")
        self._summarise(results)
        return results

    def _summarise(self, results: list[CaseResult]) -> None:
        """Log and write ``inpainting_summary.json``; RuntimeError listing the failed cases if any."""
        counts = {s: sum(r.status == s for r in results) for s in ("ok", "exists", "failed")}
        summary = {"input_dir": str(self.input_dir), "num_cases": len(results)}
        summary.update({f"num_{s}": n for s, n in zip(("ok", "kept", "failed"), counts.values())})
        summary["cases"] = [asdict(r) for r in results]
        (self.output_dir / "inpainting_summary.json").write_text(json.dumps(summary, indent=2))
        logger.info(f"inpainted {counts['ok']} of {len(results)} case(s) into '{self.output_dir}': {counts}.")
        if counts["failed"]:
            lines = "\n  ".join(f"{r.case}: {r.message}" for r in results if r.status == "failed")
            raise RuntimeError(f"{counts['failed']} of {len(results)} case(s) failed:\n  {lines}")
