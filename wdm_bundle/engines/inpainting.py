"""Zero-shot inpainting (BraTS "Local Synthesis") with an unconditional WDM model: `inpaint_volume` one case,
`Inpainter` every case folder ``<case>/<case>-t1n-voided.nii.gz`` + ``<case>-mask.nii.gz``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import monai.transforms as mt
import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.networks.schedulers import Scheduler
from monai.transforms.utils_pytorch_numpy_unification import percentile
from torch import nn
from tqdm.auto import tqdm

from wdm_bundle.data.demo_inpainting import MASK_SUFFIX, VOIDED_SUFFIX
from wdm_bundle.data.io import contrast_files, find_cases, load_nifti
from wdm_bundle.data.transforms import invert_framing
from wdm_bundle.diffusion import unwrap_model
from wdm_bundle.diffusion.repaint import RePaintInferer
from wdm_bundle.engines.generation import network_device
from wdm_bundle.engines.record_schema import Task
from wdm_bundle.engines.synthesis import CaseError, CaseResult, case_seed, write_like
from wdm_bundle.utils import as_bool

__all__ = ["Inpainter", "inpaint_volume", "inpainting_preprocessing"]

logger = logging.getLogger(__name__)

IMAGE, MASK = "image", "mask"
IMAGE_SUFFIX = VOIDED_SUFFIX.removesuffix(".nii.gz")  #: ``-t1n-voided``
MASK_FILE_SUFFIX = MASK_SUFFIX.removesuffix(".nii.gz")  #: ``-mask``


def inpainting_preprocessing(record: Mapping[str, Any]) -> mt.Compose:
    """The WDM training preprocessing of ``record`` (configs/train.json) on ``{"image", "mask"}`` (D, H, W) items.

    Both: channel first, orient to the record's ``orientation``, pad/crop to ``pad_crop_size`` (``placement``),
    resize to ``image_size`` (area). The image only: clip to its ``clip_percentiles`` and scale to [0, 1] (before
    framing, so padding is background), and map [0, 1] to ``data_range`` (last). The mask stays a fraction: a
    model voxel's share of mask voxels (`inpaint_volume` inpaints where it is > 0). Every spatial step is
    invertible (`invert_framing`).
    """
    keys = [IMAGE, MASK]
    lo, hi = (float(p) for p in record["clip_percentiles"])
    transforms = [mt.EnsureChannelFirstd(keys, channel_dim="no_channel")]
    if record.get("orientation"):
        transforms.append(mt.Orientationd(keys, axcodes=record["orientation"]))
    transforms.append(mt.ScaleIntensityRangePercentilesd(IMAGE, lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True))
    if record.get("pad_crop_size"):
        size = [int(s) for s in record["pad_crop_size"]]
        transforms.append(mt.ResizeWithPadOrCropd(keys, spatial_size=size, method=record["placement"]))
    if record.get("image_size"):
        transforms.append(mt.Resized(keys, spatial_size=[int(s) for s in record["image_size"]], mode="area"))
    d_lo, d_hi = (float(v) for v in record["data_range"])
    transforms.append(mt.ScaleIntensityRanged(IMAGE, a_min=0.0, a_max=1.0, b_min=d_lo, b_max=d_hi))
    return mt.Compose(transforms)


def _check_call(inferer: RePaintInferer, voided: np.ndarray, mask: np.ndarray, record: Mapping[str, Any]) -> None:
    if record.get("task") != Task.GENERATION:
        raise ValueError(f"the record is of a {record.get('task')} model; zero-shot inpainting needs a WDM one.")
    if tuple(inferer.data_range) != tuple(map(float, record["data_range"])):
        raise ValueError(
            f"the inferer clamps to {inferer.data_range}, the model was trained on {record['data_range']}."
        )
    if voided.ndim != 3 or voided.shape != mask.shape:
        raise ValueError(f"voided {voided.shape} and mask {mask.shape} must be 3D volumes of one shape.")
    if not mask.any() or not np.isin(mask, (0, 1)).all():
        raise ValueError("the mask must be binary (0 = keep, 1 = inpaint) with at least one voxel to inpaint.")


@torch.no_grad()
def inpaint_volume(
    network: nn.Module,
    inferer: RePaintInferer,
    voided: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    record: Mapping[str, Any],
    seed: int = 0,
    case: str = "",
    *,
    scheduler: Scheduler | None = None,
    device: str | torch.device | None = None,
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """Inpaint one case on its own grid: ``voided`` where ``mask`` is 0, the model's tissue where it is 1.

    ``voided`` and ``mask`` are preprocessed as the model's training data (`inpainting_preprocessing`; the clip
    percentiles are those of ``voided``'s voxels); a model voxel is inpainted if any input voxel it covers is.
    RePaint runs at the model's grid with noise seeded by (``seed``, ``case``) (`case_seed`); the result is
    mapped back exactly (`invert_framing`: orientation, pad/crop and resize undone by MONAI `Invertd`), from
    ``data_range`` to [0, 1] and through the inverse of the percentile scaling into ``voided``'s units.

    Args:
        network: the WDM generation network of ``record`` (weights loaded, eval mode, on ``device``).
        inferer: `RePaintInferer` in the record's data range (its scheduler unless ``scheduler``).
        voided: (D, H, W) raw intensities (the region to inpaint may hold anything; it is not used).
        mask: (D, H, W) binary, 1 = inpaint; at least one voxel, all inside the model's pad/crop frame.
        record: the model's training record (`load_record`, task ``generation``).
        seed, case: the run's seed and the case name, which together seed the noise.
        scheduler, device: DDPM (all steps) or DDIM scheduler; the network's device by default.
        affine: ``voided``'s voxel-to-world affine (orientation); None = identity.

    Returns:
        (D, H, W) float32: ``voided`` bit for bit where ``mask`` is 0, the inpainted values where it is 1.

    Raises:
        ValueError: a wrong record or inferer, bad shapes or mask, a constant image, or mask voxels that the
            pad/crop frame cuts off.
    """
    voided = np.asarray(voided, np.float32)
    mask = np.asarray(mask)
    _check_call(inferer, voided, mask, record)
    device = network_device(network, device)
    affine_t = torch.as_tensor(np.eye(4) if affine is None else np.asarray(affine), dtype=torch.float64)
    p_lo, p_hi = (float(percentile(torch.from_numpy(voided), q)) for q in record["clip_percentiles"])
    if not p_hi > p_lo:
        raise ValueError(f"the image is constant between its clip percentiles ({p_lo}); nothing to normalise.")
    preprocessing = inpainting_preprocessing(record)
    framed = preprocessing(_items(voided, mask, affine_t))
    kept = inpainting_preprocessing({**record, "image_size": None})(_items(voided, mask, affine_t))[MASK].sum()
    if float(kept) < float(mask.sum()):
        raise ValueError(
            f"{int(mask.sum() - kept)} mask voxel(s) lie outside the model's pad/crop frame {record['pad_crop_size']}."
        )
    image = framed[IMAGE].as_tensor()[None].float().to(device)
    model_mask = (framed[MASK].as_tensor() > 0)[None].to(device)
    generator = torch.Generator(device=device).manual_seed(case_seed(seed, case))
    out = inferer.inpaint(image, model_mask, network, scheduler, generator, verbose=False)
    d_lo, d_hi = inferer.data_range
    unit = (out[0].float().cpu() - d_lo) / (d_hi - d_lo)  # data_range -> [0, 1]
    back = invert_framing(unit, framed[IMAGE], preprocessing, IMAGE)[0].numpy().astype(np.float64)
    values = (p_lo + back * (p_hi - p_lo)).astype(np.float32)  # [0, 1] -> voided's units
    return np.where(mask != 0, values, voided)


def _items(voided: np.ndarray, mask: np.ndarray, affine: torch.Tensor) -> dict[str, MetaTensor]:
    mask = (mask != 0).astype(np.float32)
    return {
        IMAGE: MetaTensor(torch.from_numpy(voided), affine=affine),
        MASK: MetaTensor(torch.from_numpy(mask), affine=affine),
    }


def brain_contact(voided: np.ndarray, mask: np.ndarray) -> bool:
    """The mask touches the brain: some voxel within one voxel (26-neighbourhood) of a mask voxel, the mask
    voxel itself included, is a non-zero voxel of ``voided``."""
    m = torch.from_numpy((mask != 0).astype(np.float32))[None, None]
    near = F.max_pool3d(m, kernel_size=3, stride=1, padding=1)[0, 0].numpy() > 0
    return bool(np.any(near & (voided != 0)))


class Inpainter:
    """For each case folder ``<input_dir>/<case>/<case><image_suffix>.nii.gz`` with ``<case><mask_suffix>.nii.gz``,
    inpaint the mask's region (`inpaint_volume`) and write ``<output_dir>/<case><output_suffix>.nii.gz`` with the
    image's shape, affine and header (float32).

    A bad case (missing or unreadable files, image and mask of different shape or affine, a non-binary or empty
    mask, a mask outside the brain: no mask voxel within one voxel of a non-zero image voxel, `brain_contact`) is
    reported and skipped; an existing output is kept unless ``overwrite``. A summary is logged and written to
    ``inpainting_summary.json``; `run` raises RuntimeError if any case failed or there was none.

    Args:
        network: the WDM generation network of ``record``, weights loaded (configs/inference_inpaint.json).
        inferer, scheduler: `RePaintInferer` in the record's data range and the DDPM/DDIM scheduler it samples with.
        record: the model's training record (`load_record`, task ``generation``).
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: RePaintInferer,
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
        if self.record.get("task") != Task.GENERATION:
            raise ValueError(
                f"the record is of a {self.record.get('task')} model; zero-shot inpainting needs a WDM one."
            )
        if tuple(inferer.data_range) != tuple(map(float, self.record["data_range"])):
            raise ValueError(
                f"the inferer clamps to {inferer.data_range}, the model was trained on {record['data_range']}."
            )
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
