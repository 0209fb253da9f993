"""Unconditional sampling: `generate` (network, n, seed -> volumes) and `VolumeGenerator`, which writes them.

`seeded_sample` is the seeded denoising that `generate` and `wdm_bundle.engines.synthesize` share.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import NibabelWriter
from monai.networks.schedulers import Scheduler
from torch import nn
from tqdm.auto import tqdm

from wdm_bundle.diffusion import WaveletDiffusionInferer, unwrap_model
from wdm_bundle.utils import as_bool, autocast_dtype
from wdm_bundle.visualize import save_slices_png

__all__ = [
    "VolumeGenerator",
    "centered_affine",
    "generate",
    "sample_conditioned",
    "sample_seed",
    "seeded_sample",
    "write_volume",
]

logger = logging.getLogger(__name__)


def centered_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS voxel-to-mm affine with the given spacing and the volume centre at the origin."""
    if len(shape) != 3 or len(spacing) != 3 or any(s <= 0 for s in spacing):
        raise ValueError(f"need 3 sizes and 3 positive spacings, got {tuple(shape)}, {tuple(spacing)}.")
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -(np.asarray(shape, float) - 1) / 2 * np.asarray(spacing, float)
    return affine


def sample_seed(seed: int, index: int, stream: int = 0) -> int:
    """Seed of sample ``index`` of a run: independent of batch size, distinct across run seeds and streams."""
    return int(np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(1)[0])


def network_device(network: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device``, or (None) that of the network's first parameter (CPU if it has none)."""
    if device is not None:
        return torch.device(device)
    first = next(unwrap_model(network).parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def seeded_sample(
    network: nn.Module,
    inferer: WaveletDiffusionInferer,
    shape: Sequence[int],
    noise_seeds: Sequence[int],
    step_seed: int,
    *,
    scheduler: Scheduler | None = None,
    conditioning: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    amp: bool = False,
    amp_dtype: str | torch.dtype | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample one batch from seeded noise: images (B, C, D, H, W), B = ``len(noise_seeds)``.

    Args:
        shape: coefficient shape (8C, d, h, w) of one sample's noise.
        noise_seeds: one seed per sample: its initial noise, drawn on the CPU (the same on any device).
        step_seed: seeds the per-step noise of the batch (DDPM's ancestral noise) on ``device``.
        scheduler: the sampling scheduler; default the inferer's.
        conditioning: condition channels (B, ..., d, h, w) appended to x_t each step (cWDM).
        device: where to sample; default the network's.
        amp, amp_dtype: run the network under autocast (`wdm_bundle.utils.autocast_dtype`).
        progress: show the denoising progress bar.
    """
    device = network_device(network, device)
    noise = torch.stack(
        [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in noise_seeds]
    ).to(device)
    generator = torch.Generator(device).manual_seed(int(step_seed))
    with torch.autocast(device.type, dtype=autocast_dtype(amp_dtype, device), enabled=as_bool(amp, "amp")):
        return inferer.sample(
            noise,
            network,
            scheduler=scheduler or inferer.scheduler,
            conditioning=conditioning,
            generator=generator,
            verbose=progress,
        )


def generate(
    network: nn.Module,
    inferer: WaveletDiffusionInferer,
    num_samples: int,
    seed: int,
    image_shape: Sequence[int],
    *,
    first_index: int = 0,
    scheduler: Scheduler | None = None,
    device: str | torch.device | None = None,
    amp: bool = False,
    amp_dtype: str | torch.dtype | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Samples ``first_index ... first_index + num_samples - 1`` of the run with ``seed``, as one batch.

    The initial noise of sample i depends only on (``seed``, i), so with DDIM or RFlow sample i is
    the same whatever batch it is drawn in; DDPM's per-step noise is drawn per batch, seeded by
    (``seed``, ``first_index``). `VolumeGenerator` writes exactly these batches.

    Args:
        network: the wavelet diffusion network, in eval mode on ``device`` (wrapped or compiled is fine).
        inferer: `WaveletDiffusionInferer` (data range, objective; its scheduler unless ``scheduler``).
        num_samples: the batch size B; seed: the run's seed; image_shape: (C, D, H, W) of one image.
        first_index: index of the batch's first sample in the run.
        scheduler, device, amp, amp_dtype, progress: as `seeded_sample`.

    Returns:
        (B, C, D, H, W) images in the inferer's ``data_range``, on ``device``.
    """
    if int(num_samples) < 1 or int(first_index) < 0:
        raise ValueError(f"need num_samples >= 1 and first_index >= 0, got {num_samples}, {first_index}.")
    shape = unwrap_model(network).wavelet.coefficient_shape(tuple(int(s) for s in image_shape))
    indices = range(int(first_index), int(first_index) + int(num_samples))
    return seeded_sample(
        network,
        inferer,
        shape,
        [sample_seed(seed, i) for i in indices],
        sample_seed(seed, indices[0], stream=1),
        scheduler=scheduler,
        device=device,
        amp=amp,
        amp_dtype=amp_dtype,
        progress=progress,
    )


def write_volume(volume: torch.Tensor, path: str | os.PathLike, affine: np.ndarray) -> None:
    """Write ``volume`` (C, D, H, W) as float32 NIfTI with ``affine``."""
    writer = NibabelWriter(output_dtype=np.float32)
    writer.set_data_array(volume.float().cpu(), channel_dim=0, squeeze_end_dims=True)
    writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    writer.write(str(path), verbose=False)


class VolumeGenerator:
    """Generate ``num_samples`` volumes, write ``<output_dir>/<prefix>_<i>.nii.gz`` and a PNG each.

    Initial noise of sample i depends only on (seed, i), so changing ``batch_size`` does not
    change DDIM samples. Existing files are never overwritten unless ``overwrite`` is set; the
    check happens before any sampling.

    Split across processes (``torchrun``): batch j of the single-process run (samples
    ``j*batch_size ...``) goes to rank ``j % world_size``, so every file name and every sample is
    the same as in a one-process run with the same ``batch_size`` (for DDPM too, whose per-step
    noise is drawn per batch); each rank writes only its own share.

    Args:
        network: wavelet diffusion network (EMA weights already loaded).
        inferer: `WaveletDiffusionInferer` (defines the data range).
        scheduler: the sampling scheduler (DDPM with T steps, DDIM or RFlow with any number).
        image_shape: (C, D, H, W) of a generated image.
        spacing: voxel size in mm for the written affine.
        amp: run the network under autocast (the scheduler, clamp and wavelet transforms stay float32).
        amp_dtype: autocast dtype, ``"bfloat16"`` or ``"float16"``; None = bf16 on CPU, fp16 on CUDA.
        compile: sample with ``torch.compile(network, **compile_kwargs)`` (compiles on the first batch),
            as MONAI's ``SupervisedTrainer(compile=True)`` does for training.
        rank, world_size: this process's share of the batches; with an initialised
            ``torch.distributed`` process group all ranks wait for each other after the
            existing-file check, so no rank's new files trip another rank's check.
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: WaveletDiffusionInferer,
        scheduler: Scheduler,
        image_shape: Sequence[int],
        output_dir: str | os.PathLike,
        num_samples: int = 1,
        batch_size: int = 1,
        seed: int = 0,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        device: str | torch.device = "cpu",
        file_prefix: str = "sample",
        overwrite: bool = False,
        save_png: bool = True,
        amp: bool = False,
        progress: bool = True,
        rank: int = 0,
        world_size: int = 1,
        amp_dtype: str | None = None,
        compile: bool = False,
        compile_kwargs: dict | None = None,
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}.")
        if len(image_shape) != 4:
            raise ValueError(f"image_shape must be (C, D, H, W), got {tuple(image_shape)}.")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}.")
        self.network = network
        self.inferer = inferer
        self.scheduler = scheduler
        self.image_shape = tuple(int(s) for s in image_shape)
        unwrap_model(network).check_image_size(self.image_shape[1:], name="image_size")
        self.output_dir = Path(output_dir)
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.affine = centered_affine(self.image_shape[1:], spacing)
        self.device = torch.device(device)
        self.file_prefix = file_prefix
        self.overwrite = as_bool(overwrite, "overwrite")
        self.save_png = as_bool(save_png, "save_png")
        self.amp = as_bool(amp, "amp")
        self.amp_dtype = autocast_dtype(amp_dtype, device)
        self.compile = as_bool(compile, "compile")
        self.compile_kwargs = dict(compile_kwargs or {})
        self.progress = as_bool(progress, "progress")
        self.rank = int(rank)
        self.world_size = int(world_size)
        self._model: nn.Module | None = None

    def output_paths(self) -> list[Path]:
        return [self.output_dir / f"{self.file_prefix}_{i:04d}.nii.gz" for i in range(self.num_samples)]

    def batches(self) -> list[list[int]]:
        """Sample indices of this rank's batches (all batches for a single process)."""
        starts = range(0, self.num_samples, self.batch_size)
        all_batches = [list(range(s, min(s + self.batch_size, self.num_samples))) for s in starts]
        first, step = self.rank, self.world_size
        return all_batches[first::step]

    def sampling_network(self) -> nn.Module:
        """The network on ``device`` in eval mode, compiled if ``compile`` (once: the compiled one is kept)."""
        if self._model is None:
            model = self.network.to(self.device).eval()
            self._model = torch.compile(model, **self.compile_kwargs) if self.compile else model
        return self._model

    def _check_outputs(self, paths: Sequence[Path]) -> None:
        pngs = [p.with_name(p.name.replace(".nii.gz", ".png")) for p in paths] if self.save_png else []
        existing = [str(p) for p in [*paths, *pngs] if p.exists()]  # PNG previews are the user's files too
        if existing and not self.overwrite:
            raise FileExistsError(
                f"{len(existing)} output file(s) already exist, e.g. '{existing[0]}'; choose another --output_dir "
                "or pass --overwrite true."
            )

    def run(self) -> list[str]:
        """Sample and write every volume; returns the written NIfTI paths."""
        paths = self.output_paths()
        self._check_outputs(paths)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        written = []
        batches = self.batches()
        for indices in tqdm(batches, desc="batches", disable=not self.progress or len(batches) <= 1):
            images = generate(
                self.sampling_network(),
                self.inferer,
                len(indices),
                self.seed,
                self.image_shape,
                first_index=indices[0],
                scheduler=self.scheduler,
                device=self.device,
                amp=self.amp,
                amp_dtype=self.amp_dtype,
                progress=self.progress,
            )
            for i, image in zip(indices, images):
                path = paths[i]
                write_volume(image, path, self.affine)
                if self.save_png:
                    save_slices_png(
                        [image[0]],
                        path.with_name(path.name.replace(".nii.gz", ".png")),
                        self.inferer.data_range,
                        titles=[path.name],
                    )
                written.append(str(path))
        share = f" (rank {self.rank} of {self.world_size})" if self.world_size > 1 else ""
        logger.info(f"wrote {len(written)} volume(s) to '{self.output_dir}'{share}.")
        return written


def sample_conditioned(
    network: nn.Module,
    inferer: WaveletDiffusionInferer,
    condition: torch.Tensor,
    noise_seed: int,
    *,
    scheduler: Scheduler | None = None,
    device: str | torch.device | None = None,
    amp: bool = False,
    amp_dtype: str | torch.dtype | None = None,
) -> torch.Tensor:
    """One conditioned sample of a conditional model: (1, C, D/2, H/2, W/2) ``condition`` on ``device`` -> (K, D, H, W)
    float CPU image in [0, 1] (the inferer's data range mapped back; K the network's ``out_channels``), framed as
    the model's grid. ``noise_seed``, ``scheduler``, ``amp``, ``amp_dtype``: as `seeded_sample`."""
    image = seeded_sample(
        network,
        inferer,
        (unwrap_model(network).out_channels, *condition.shape[2:]),
        [noise_seed],
        noise_seed,
        scheduler=scheduler,
        conditioning=condition,
        device=device,
        amp=amp,
        amp_dtype=amp_dtype,
    )
    lo, hi = inferer.data_range
    return (image[0].float().cpu() - lo) / (hi - lo)
