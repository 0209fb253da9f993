"""Inpainting (BraTS "Local Synthesis") of one case on its own grid, `inpaint_volume`: with a conditional inpainting
model (configs/train_inpaint.json) or zero-shot with an unconditional WDM model (RePaint). The folder runner is
`wdm_bundle.engines.inpainter.Inpainter`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import monai.transforms as mt
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.networks.schedulers import Scheduler
from monai.transforms.utils_pytorch_numpy_unification import percentile
from torch import nn

from wdm_bundle.data.inpainting_transforms import inpainting_framing
from wdm_bundle.data.transforms import invert_framing
from wdm_bundle.diffusion import WaveletDiffusionInferer, unwrap_model
from wdm_bundle.diffusion.repaint import RePaintInferer
from wdm_bundle.engines.generation import network_device, seeded_sample
from wdm_bundle.engines.prepare_batch import inpainting_condition
from wdm_bundle.engines.record_schema import Task
from wdm_bundle.engines.synthesis import case_seed

__all__ = ["inpaint_volume", "inpainting_inferer", "inpainting_preprocessing", "check_model", "brain_contact"]

logger = logging.getLogger(__name__)

IMAGE, MASK = "image", "mask"


def inpainting_preprocessing(record: Mapping[str, Any]) -> mt.Compose:
    """The training preprocessing of ``record`` on ``{"image", "mask"}`` (D, H, W) items, ``image`` the voided volume.

    Channel first, then `wdm_bundle.data.inpainting_framing`: orient to the record's ``orientation``, clip to the
    image's ``clip_percentiles`` and scale to [0, 1] (before framing, so padding is background), pad/crop to
    ``pad_crop_size`` (``placement``), resize to ``image_size`` (area), map the image to ``data_range``. For an
    inpainting model this is what training does to its voided images (`inpainting_training_preprocessing`); for a
    WDM model, what it does to its images. The mask stays a fraction: a model voxel's share of mask voxels
    (`inpaint_volume` inpaints where it is > 0). Every spatial step is invertible (`invert_framing`).
    """
    framing = inpainting_framing(
        [IMAGE],
        IMAGE,
        MASK,
        record.get("orientation"),
        record["clip_percentiles"],
        record.get("pad_crop_size"),
        record["placement"],
        record.get("image_size"),
        record["data_range"],
    )
    return mt.Compose([mt.EnsureChannelFirstd([IMAGE, MASK], channel_dim="no_channel"), *framing])


def inpainting_inferer(
    record: Mapping[str, Any], scheduler: Scheduler, jump_length: int = 10, jump_n_sample: int = 10
) -> WaveletDiffusionInferer:
    """The sampler for ``record``'s model: a plain `WaveletDiffusionInferer` (the condition does the work) for an
    inpainting model, a `RePaintInferer` with ``jump_length``/``jump_n_sample`` (unused otherwise) for a WDM one."""
    task = Task(record["task"])
    common = {"data_range": record["data_range"], "diffusion": record["diffusion"]}
    if task == Task.INPAINTING:
        return WaveletDiffusionInferer(scheduler, **common)
    if task == Task.GENERATION:
        return RePaintInferer(scheduler, jump_length=jump_length, jump_n_sample=jump_n_sample, **common)
    raise ValueError(f"the record is of a {task} model; inpainting needs an inpainting or a WDM (generation) one.")


def check_model(inferer: WaveletDiffusionInferer, record: Mapping[str, Any]) -> None:
    """Refuse a record that cannot inpaint, or an inferer that does not suit it (`inpainting_inferer`)."""
    task = record.get("task")
    if task not in (Task.INPAINTING, Task.GENERATION):
        raise ValueError(f"the record is of a {task} model; inpainting needs an inpainting or a WDM (generation) one.")
    if task == Task.GENERATION and not isinstance(inferer, RePaintInferer):
        raise ValueError("a WDM (generation) model inpaints zero-shot: it needs a RePaintInferer.")
    if tuple(inferer.data_range) != tuple(map(float, record["data_range"])):
        raise ValueError(
            f"the inferer clamps to {inferer.data_range}, the model was trained on {record['data_range']}."
        )


def _check_call(
    inferer: WaveletDiffusionInferer, voided: np.ndarray, mask: np.ndarray, record: Mapping[str, Any]
) -> None:
    check_model(inferer, record)
    if voided.ndim != 3 or voided.shape != mask.shape:
        raise ValueError(f"voided {voided.shape} and mask {mask.shape} must be 3D volumes of one shape.")
    if not mask.any() or not np.isin(mask, (0, 1)).all():
        raise ValueError("the mask must be binary (0 = keep, 1 = inpaint) with at least one voxel to inpaint.")


@torch.no_grad()
def inpaint_volume(
    network: nn.Module,
    inferer: WaveletDiffusionInferer,
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
    At the model's grid an inpainting model samples conditioned on the voided image and the mask
    (`inpainting_condition`), a WDM model runs RePaint; the noise is seeded by (``seed``, ``case``) (`case_seed`); the result is
    mapped back exactly (`invert_framing`: orientation, pad/crop and resize undone by MONAI `Invertd`), from
    ``data_range`` to [0, 1] and through the inverse of the percentile scaling into ``voided``'s units.

    Args:
        network: the inpainting or WDM network of ``record`` (weights loaded, eval mode, on ``device``).
        inferer: `inpainting_inferer` of the record (its scheduler unless ``scheduler``).
        voided: (D, H, W) raw intensities; the region to inpaint is set to 0 first, as in the challenge's voided
            files (and in `inpainting_training_preprocessing`), whatever it holds.
        mask: (D, H, W) binary, 1 = inpaint; at least one voxel, all inside the model's pad/crop frame.
        record: the model's training record (`load_record`, task ``inpainting`` or ``generation``).
        seed, case: the run's seed and the case name, which together seed the noise.
        scheduler, device: the sampling scheduler (RePaint: DDPM over all steps or DDIM); the network's device by
            default.
        affine: ``voided``'s voxel-to-world affine (orientation); None = identity.

    Returns:
        (D, H, W) float32: ``voided`` bit for bit where ``mask`` is 0, the inpainted values where it is 1.

    Raises:
        ValueError: a wrong record or inferer, bad shapes or mask, a constant image, or mask voxels that the
            pad/crop frame cuts off.
    """
    mask = np.asarray(mask)
    voided = np.asarray(voided, np.float32)
    _check_call(inferer, voided, mask, record)
    voided = np.where(mask != 0, np.float32(0), voided)
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
    out = _sample(network, inferer, image, model_mask, record["task"], case_seed(seed, case), scheduler, device)
    d_lo, d_hi = inferer.data_range
    unit = (out[0].float().cpu() - d_lo) / (d_hi - d_lo)  # data_range -> [0, 1]
    back = invert_framing(unit, framed[IMAGE], preprocessing, IMAGE)[0].numpy().astype(np.float64)
    values = (p_lo + back * (p_hi - p_lo)).astype(np.float32)  # [0, 1] -> voided's units
    return np.where(mask != 0, values, voided)


def _sample(
    network: nn.Module,
    inferer: WaveletDiffusionInferer,
    image: torch.Tensor,
    mask: torch.Tensor,
    task: str,
    noise_seed: int,
    scheduler: Scheduler | None,
    device: torch.device,
) -> torch.Tensor:
    """The model-grid result (1, 1, D, H, W) for the framed voided ``image`` and bool ``mask``: sampled conditioned on
    both (inpainting model), or RePaint (WDM model)."""
    if task == Task.INPAINTING:
        model = unwrap_model(network)
        condition = inpainting_condition(model.wavelet, image, mask)
        shape = (model.out_channels, *condition.shape[2:])
        return seeded_sample(
            network,
            inferer,
            shape,
            [noise_seed],
            noise_seed,
            scheduler=scheduler,
            conditioning=condition,
            device=device,
        )
    generator = torch.Generator(device=device).manual_seed(noise_seed)
    return inferer.inpaint(image, mask, network, scheduler, generator, verbose=False)


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
