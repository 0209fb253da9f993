"""`VolumeGenerator`: sample N volumes and write them as NIfTI (+ PNG previews)."""

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

__all__ = ["VolumeGenerator", "centered_affine", "sample_seed"]

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

    def output_paths(self) -> list[Path]:
        return [self.output_dir / f"{self.file_prefix}_{i:04d}.nii.gz" for i in range(self.num_samples)]

    def batches(self) -> list[list[int]]:
        """Sample indices of this rank's batches (all batches for a single process)."""
        starts = range(0, self.num_samples, self.batch_size)
        all_batches = [list(range(s, min(s + self.batch_size, self.num_samples))) for s in starts]
        return all_batches[self.rank :: self.world_size]

    def _noise(self, indices: Sequence[int]) -> torch.Tensor:
        shape = unwrap_model(self.network).wavelet.coefficient_shape(self.image_shape)
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(sample_seed(self.seed, i)))
                            for i in indices]).to(self.device)

    def _write(self, volume: torch.Tensor, path: Path) -> None:
        writer = NibabelWriter(output_dtype=np.float32)
        writer.set_data_array(volume.float().cpu(), channel_dim=0, squeeze_end_dims=True)
        writer.set_metadata({"affine": self.affine, "original_affine": self.affine}, resample=False)
        writer.write(str(path), verbose=False)

    @torch.no_grad()
    def run(self) -> list[str]:
        """Sample and write every volume; returns the written NIfTI paths."""
        paths = self.output_paths()
        pngs = [p.with_name(p.name.replace(".nii.gz", ".png")) for p in paths] if self.save_png else []
        existing = [str(p) for p in [*paths, *pngs] if p.exists()]  # PNG previews are the user's files too
        if existing and not self.overwrite:
            raise FileExistsError(
                f"{len(existing)} output file(s) already exist, e.g. '{existing[0]}'; choose another --output_dir "
                "or pass --overwrite true."
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        model = self.network.to(self.device).eval()
        if self.compile:
            model = torch.compile(model, **self.compile_kwargs)
        device_type = self.device.type
        written = []
        batches = self.batches()
        for indices in tqdm(batches, desc="batches", disable=not self.progress or len(batches) <= 1):
            generator = torch.Generator(self.device).manual_seed(sample_seed(self.seed, indices[0], stream=1))
            with torch.autocast(device_type, dtype=self.amp_dtype, enabled=self.amp):
                images = self.inferer.sample(self._noise(indices), model, scheduler=self.scheduler,
                                             generator=generator, verbose=self.progress)
            for i, image in zip(indices, images):
                path = paths[i]
                self._write(image, path)
                if self.save_png:
                    save_slices_png([image[0]], path.with_name(path.name.replace(".nii.gz", ".png")),
                                    self.inferer.data_range, titles=[path.name])
                written.append(str(path))
        share = f" (rank {self.rank} of {self.world_size})" if self.world_size > 1 else ""
        logger.info(f"wrote {len(written)} volume(s) to '{self.output_dir}'{share}.")
        return written
