"""Missing-contrast synthesis (BraSyn inference): `synthesize` one case; `ContrastSynthesizer` does every case folder."""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.networks.schedulers import Scheduler
from monai.transforms import ScaleIntensityRangePercentiles
from torch import nn
from tqdm.auto import tqdm

from wdm_bundle.data.io import find_case_files, find_cases
from wdm_bundle.data.transforms import invert_framing, synthesis_preprocessing
from wdm_bundle.diffusion import WaveletDiffusionInferer, unwrap_model
from wdm_bundle.engines.checkpoint import load_weights
from wdm_bundle.engines.generation import network_device, sample_conditioned, sample_seed
from wdm_bundle.engines.prepare_batch import synthesis_inputs
from wdm_bundle.engines.record import Task, read_record, recorded_network
from wdm_bundle.utils import as_bool, atomic_write, autocast_dtype
from wdm_bundle.visualize import save_slices_png

__all__ = ["CaseError", "CaseResult", "ContrastSynthesizer", "case_seed", "synthesize", "write_like"]

logger = logging.getLogger(__name__)


class CaseError(Exception):
    """A case cannot be processed; the message says why. The run goes on with the next case."""


@dataclass
class CaseResult:
    case: str
    status: str  # "ok", "exists" (kept, not redone) or "failed"
    missing: str | None = None
    output: str | None = None
    message: str = ""


def write_like(data: np.ndarray, reference: nib.Nifti1Image, path: str | os.PathLike) -> None:
    """Write float32 ``data`` with the affine and header of ``reference``, atomically."""
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    img = nib.Nifti1Image(data.astype(np.float32), reference.affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    atomic_write(path, lambda tmp: nib.save(img, tmp))


def case_seed(seed: int, case: str) -> int:
    """The noise seed of case ``case`` in a run with ``seed``: independent of the other cases and their order."""
    return sample_seed(seed, zlib.crc32(case.encode()))


def _present(
    inferer: WaveletDiffusionInferer, volumes: Mapping[str, Any], target: str, record: Mapping[str, Any]
) -> list[str]:
    """The contrasts `synthesize` conditions on, in the record's order; ValueError if the call cannot work."""
    contrasts = list(record["contrasts"])
    present = [c for c in contrasts if c in volumes and c != target]
    if target not in contrasts or record.get("target_contrast") not in (None, target) or not present:
        raise ValueError(
            f"cannot synthesise '{target}' from {sorted(volumes)} with a model of {contrasts} "
            f"(target {record.get('target_contrast') or 'any'})."
        )
    if tuple(inferer.data_range) != tuple(map(float, record["data_range"])):
        raise ValueError(
            f"the inferer clamps to {inferer.data_range}, the model was trained on {record['data_range']}."
        )
    return present


@torch.no_grad()
def synthesize(
    network: nn.Module,
    inferer: WaveletDiffusionInferer,
    volumes: Mapping[str, np.ndarray | torch.Tensor],
    target: str,
    record: Mapping[str, Any],
    seed: int = 0,
    case: str = "",
    *,
    scheduler: Scheduler | None = None,
    device: str | torch.device | None = None,
    amp: bool = False,
    amp_dtype: str | torch.dtype | None = None,
) -> np.ndarray:
    """Synthesise contrast ``target`` of one case from its present contrasts, on their grid.

    The inputs are preprocessed exactly as in training (`wdm_bundle.data.synthesis_preprocessing` with
    the record's ``contrasts``, ``pad_crop_size``, ``placement``, ``clip_percentiles`` and ``data_range``),
    sampled from noise seeded by (``seed``, ``case``) (`case_seed`), the pad/crop undone exactly
    (`invert_framing`: voxel for voxel on the input grid), the data range mapped back to [0, 1] and
    the background (where all inputs are zero) set to 0.

    Args:
        network: the cWDM network of ``record`` (weights loaded, eval mode, on ``device``).
        inferer: `WaveletDiffusionInferer` in the record's data range (its scheduler unless ``scheduler``).
        volumes: ``{contrast: (D, H, W) raw intensities}`` of the present contrasts, all of one shape
            (CPU arrays or tensors); ``target`` is not among them.
        target: the contrast to synthesise, one of the record's ``contrasts``.
        record: the model's training record (`load_record`); ``target_contrast`` None = unified model.
        seed, case: the run's seed and the case name, which together seed the noise.
        scheduler, device, amp, amp_dtype: as `wdm_bundle.engines.seeded_sample`.

    Returns:
        (D, H, W) float32 in [0, 1].
    """
    contrasts, present = list(record["contrasts"]), _present(inferer, volumes, target, record)
    model, device = unwrap_model(network), network_device(network, device)
    preprocessing = synthesis_preprocessing(
        contrasts,
        record["pad_crop_size"] or None,
        record["placement"],
        record["clip_percentiles"],
        record["data_range"],
        size_multiple=model.image_size_multiple,
        load=False,
        stack_key=None,
    )
    arrays = {c: np.asarray(volumes[c], np.float32) for c in present}
    framed = preprocessing({c: MetaTensor(torch.from_numpy(a)) for c, a in arrays.items()})
    ref = framed[present[0]]
    slots = [framed[c].as_tensor() if c in framed else torch.zeros_like(ref.as_tensor()) for c in contrasts]
    stack = torch.cat(slots)[None].to(device)  # (1, K, D', H', W'); the target's slot is never a condition
    targets = torch.tensor([contrasts.index(target)], device=device)
    _, condition = synthesis_inputs(model.wavelet, stack, targets, unified=record.get("target_contrast") is None)
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
    out = invert_framing(image, ref, preprocessing, present[0])[0].numpy()  # exact inverse of the pad/crop
    out[np.all([a == 0 for a in arrays.values()], axis=0)] = 0.0  # background
    return out


class ContrastSynthesizer:
    """For each case folder ``<input_dir>/<case>/<case>-<contrast>.nii.gz``, synthesise the one missing contrast.

    Per case: read and check the inputs, pick the missing contrast's model (or the unified one), `synthesize`
    it and write ``<output_dir>/<case>-<missing>.nii.gz`` with the inputs' affine and header. A bad case is
    reported and skipped; after all cases a summary is logged and written to ``synthesis_summary.json``,
    and a RuntimeError is raised if any case failed.

    Args:
        record: the training record of the model(s) (`load_record`): contrasts, framing,
            normalisation, data range and network; a per-contrast model's own record gives its network.
        network_factory: ``network_factory(record=...)`` builds the network of a record
            (`recorded_network` as a config item with ``"_mode_": "callable"``); default: `recorded_network`.
        ckpt_path: weights of the unified model (trained with ``target_contrast`` null): any missing contrast.
        ckpt_paths: ``{contrast: weights}`` of one model per target contrast instead (each trained with
            ``target_contrast`` = its contrast); given, ``ckpt_path`` is not used.
        amp, amp_dtype: run the network under autocast, in ``amp_dtype`` (None = bf16 on CPU, fp16 on CUDA).
    """

    def __init__(
        self,
        record: Mapping[str, Any],
        inferer: WaveletDiffusionInferer,
        scheduler: Scheduler,
        input_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        ckpt_path: str | os.PathLike | None = None,
        ckpt_paths: Mapping[str, str | os.PathLike] | None = None,
        network_factory: Callable[..., nn.Module] | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        use_ema: bool = True,
        overwrite: bool = False,
        amp: bool = False,
        save_png: bool = True,
        progress: bool = True,
        amp_dtype: str | None = None,
    ) -> None:
        unified = not ckpt_paths
        if unified and not ckpt_path:
            raise ValueError("give ckpt_path (the unified model's weights) or ckpt_paths ({contrast: weights}).")
        self.record = dict(record)
        if self.record.get("task") != Task.SYNTHESIS:
            raise ValueError(f"the record is of a {self.record.get('task')} model, not a synthesis (cWDM) model.")
        self.contrasts = list(self.record["contrasts"])
        self.data_range = tuple(self.record["data_range"])
        if tuple(inferer.data_range) != self.data_range:
            raise ValueError(f"the inferer clamps to {inferer.data_range}, the model was trained on {self.data_range}.")
        self.network_factory = network_factory or recorded_network
        self.inferer = inferer
        self.scheduler = scheduler
        self.input_dir = Path(input_dir)
        self.output_dir = Path(output_dir)
        self.unified = unified
        self.ckpt_path = ckpt_path
        self.ckpt_paths = dict(ckpt_paths or {})
        self.pad_crop_size = tuple(self.record["pad_crop_size"]) if self.record["pad_crop_size"] else None
        lo, hi = self.record["clip_percentiles"]
        self.normalize = ScaleIntensityRangePercentiles(lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True)
        self.device = torch.device(device)
        self.seed = seed
        self.use_ema = as_bool(use_ema, "use_ema")
        self.overwrite = as_bool(overwrite, "overwrite")
        self.amp = as_bool(amp, "amp")
        self.amp_dtype = autocast_dtype(amp_dtype, self.device)
        self.save_png = as_bool(save_png, "save_png")
        self.progress = as_bool(progress, "progress")
        self._networks: dict[str, tuple[nn.Module, dict[str, Any]]] = {}

    def _model_record(self, missing: str, path: Path) -> dict[str, Any]:
        """The record of the model file that synthesises ``missing`` (the shared one if the file has none)."""
        own = read_record(path)
        k = len(self.contrasts)
        if own is None:  # an older file: the shared (assumed) settings; a per-target model has K-1 conditions
            network = dict(self.record["network"])
            if not self.unified:
                network.update(condition_channels=k - 1, extra_channels=0)
            own = {**self.record, "network": network, "target_contrast": None if self.unified else missing}
        expected = None if self.unified else missing
        if own["target_contrast"] != expected:
            what = "the unified model (any target)" if expected is None else f"the '{missing}' model"
            raise CaseError(
                f"'{path}' was trained to synthesise {own['target_contrast'] or 'any contrast'}, but is "
                f"configured as {what}; check --ckpt_path / --ckpt_paths."
            )
        return own

    def network_for(self, missing: str) -> tuple[nn.Module, dict[str, Any]]:
        """The (cached) network that synthesises ``missing``, weights loaded, and its record (for `synthesize`)."""
        key = "unified" if self.unified else missing
        if key not in self._networks:
            if not self.unified and missing not in self.ckpt_paths:
                raise CaseError(f"no model for target '{missing}': ckpt_paths has {sorted(self.ckpt_paths)}.")
            path = Path(self.ckpt_path if self.unified else self.ckpt_paths[missing])
            if not path.is_file():
                raise CaseError(f"checkpoint '{path}' does not exist; train first or pass --ckpt_path/--ckpt_dir.")
            record = self._model_record(missing, path)
            net = self.network_factory(record=record)
            try:
                load_weights(
                    net,
                    path,
                    key="ema" if self.use_ema else "model",
                    sampler=self.scheduler,
                    diffusion=self.inferer.diffusion,
                )
            except FileNotFoundError as e:
                raise CaseError(str(e)) from e
            model = unwrap_model(net)
            if self.pad_crop_size:
                model.check_image_size(self.pad_crop_size, name="pad_crop_size")
            self._networks[key] = (net.to(self.device).eval(), record)
        return self._networks[key]

    def cases(self) -> list[Path]:
        cases = find_cases(self.input_dir, "input_dir", require_nifti=False)
        if not cases:
            raise ValueError(f"input_dir '{self.input_dir}' holds no case folders (<case>/<case>-<contrast>.nii.gz).")
        return cases

    def _load_inputs(self, case_dir: Path) -> tuple[str, dict[str, nib.Nifti1Image], dict[str, np.ndarray]]:
        return self.load_inputs(find_case_files(case_dir))

    def load_inputs(
        self, files: Mapping[str, str | os.PathLike | nib.Nifti1Image], missing: str | None = None
    ) -> tuple[str, dict[str, nib.Nifti1Image], dict[str, np.ndarray]]:
        """Read and check the inputs of one case before any sampling.

        Args:
            files: contrast -> NIfTI file or in-memory image; keys outside ``contrasts`` are ignored.
            missing: the contrast to synthesise (its file, if given, is not read); None: the one
                contrast of ``contrasts`` that has no file.

        Returns:
            (missing, images, arrays): arrays are the inputs as float32 (D, H, W), raw intensities.

        Raises:
            CaseError: unknown ``missing``, no or several contrasts missing, an unreadable, non-3D or
                non-finite input, or inputs of different shapes or affines; the message names them.
        """
        if missing is not None and missing not in self.contrasts:
            raise CaseError(f"cannot synthesise '{missing}': the model's contrasts are {self.contrasts}.")
        available = [c for c in self.contrasts if c in files and c != missing]
        absent = [c for c in self.contrasts if c not in available]
        if not absent:
            raise CaseError(f"no contrast is missing (has all of {self.contrasts}); nothing to synthesise.")
        if len(absent) > 1:
            raise CaseError(
                f"{len(absent)} contrasts are missing ({', '.join(absent)}); exactly one may be missing. "
                f"Found: {', '.join(available) or 'no input files'}."
            )
        images, arrays, names = {}, {}, {}
        for c in available:
            src = files[c]
            in_memory = isinstance(src, nib.spatialimages.SpatialImage)
            names[c] = (src.get_filename() or f"the {c} input") if in_memory else str(src)
            try:
                images[c] = src if in_memory else nib.load(src)
                arrays[c] = np.asarray(images[c].get_fdata(dtype=np.float32))
            except Exception as e:
                raise CaseError(f"{names[c]}: cannot be read as NIfTI ({type(e).__name__}: {e})") from e
            if arrays[c].ndim != 3:
                raise CaseError(f"{names[c]}: is {arrays[c].ndim}D with shape {arrays[c].shape}; expected 3D.")
            if not np.isfinite(arrays[c]).all():
                raise CaseError(f"{names[c]}: contains NaN/inf voxels.")
        shapes = {c: a.shape for c, a in arrays.items()}
        if len(set(shapes.values())) > 1:
            raise CaseError("inputs have different shapes: " + ", ".join(f"{c} {s}" for c, s in shapes.items()))
        ref = images[available[0]]
        for c in available[1:]:
            if not np.allclose(images[c].affine, ref.affine, atol=1e-3):
                raise CaseError(f"{names[c]}: affine differs from {names[available[0]]}; inputs must be co-registered.")
        return absent[0], images, arrays

    def process(self, case_dir: Path) -> CaseResult:
        case = case_dir.name
        missing, images, arrays = self._load_inputs(case_dir)
        out_path = self.output_dir / f"{case}-{missing}.nii.gz"
        if out_path.exists() and not self.overwrite:
            return CaseResult(
                case, "exists", missing, str(out_path), "kept the existing output; --overwrite true redoes it"
            )
        network, record = self.network_for(missing)
        result = synthesize(
            network,
            self.inferer,
            arrays,
            missing,
            record,
            self.seed,
            case,
            scheduler=self.scheduler,
            device=self.device,
            amp=self.amp,
            amp_dtype=self.amp_dtype,
        )
        write_like(result, images[next(iter(images))], out_path)
        if self.save_png:
            names = [c for c in self.contrasts if c in arrays] + [f"{missing} (synthesised)"]
            vols = [self.normalize(torch.from_numpy(arrays[c])[None])[0] for c in self.contrasts if c in arrays]
            save_slices_png([*vols, result], out_path.with_name(f"{case}-{missing}.png"), (0.0, 1.0), titles=names)
        return CaseResult(case, "ok", missing, str(out_path))

    def run(self) -> list[CaseResult]:
        """Process every case; raises RuntimeError at the end if any case failed."""
        cases = self.cases()
        if self.unified and not Path(self.ckpt_path).is_file():
            raise FileNotFoundError(
                f"unified model weights '{self.ckpt_path}' do not exist; train first or pass "
                "--ckpt_path (or --ckpt_paths with per-contrast models)."
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for case_dir in tqdm(cases, desc="cases", disable=not self.progress):
            try:
                results.append(self.process(case_dir))
                r = results[-1]
                logger.info(f"{r.case}: {'wrote' if r.status == 'ok' else 'kept existing'} {r.output}")
            except CaseError as e:
                results.append(CaseResult(case_dir.name, "failed", message=str(e)))
                logger.error(f"{case_dir.name}: skipped: {e}")
        failed = [r for r in results if r.status == "failed"]
        kept = sum(r.status == "exists" for r in results)
        summary = {
            "input_dir": str(self.input_dir),
            "num_cases": len(results),
            "num_ok": len(results) - len(failed) - kept,
            "num_kept": kept,
            "num_failed": len(failed),
            "cases": [asdict(r) for r in results],
        }
        (self.output_dir / "synthesis_summary.json").write_text(json.dumps(summary, indent=2))
        logger.info(
            f"synthesised {summary['num_ok']} of {len(results)} case(s) into '{self.output_dir}' "
            f"({kept} kept from before, {len(failed)} failed)."
        )
        if failed:
            lines = "\n  ".join(f"{r.case}: {r.message}" for r in failed)
            raise RuntimeError(f"{len(failed)} of {len(results)} case(s) failed:\n  {lines}")
        return results
