"""Inpainting of one case per request: `inpaint_volume` with the network and the per-case checks of the `Inpainter`.

No monailabel import here (the MONAI Label task in `wdm_bundle.label.tasks` wraps this), so the request
handling is tested in the bundle's own environment too.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from wdm_bundle.data.io import contrast_files, nifti_stem, volume_shape
from wdm_bundle.diffusion.repaint import RePaintInferer
from wdm_bundle.engines import inpaint_volume, inpainting_inferer
from wdm_bundle.engines.synthesis import CaseError, write_like
from wdm_bundle.label.inputs import MAX_SEED, RequestError, check_name, check_voxels, parse_int
from wdm_bundle.label.sampling import Limits, Sampling
from wdm_bundle.label.services import BundleConfig, _claim

__all__ = ["InpaintingService", "InpaintingSampling", "InpaintingInputs", "network_calls", "MAX_JUMP_N_SAMPLE"]

IMAGE, MASK = "image", "mask"  #: the keys of `Inpainter.suffixes`
#: Most RePaint passes over a jumped segment a request may ask for (RePaint: 10).
MAX_JUMP_N_SAMPLE = 100
JUMP_PARAMS = ("jump_length", "jump_n_sample")


def network_calls(steps: int, jump_length: int, jump_n_sample: int) -> int:
    """Network evaluations of RePaint with ``steps`` sampling steps: one per reverse step of
    `resampling_schedule` (a jump re-noises without the network), i.e. ``steps`` plus ``jump_length`` for each of
    the ``jump_n_sample - 1`` jumps after every ``jump_length``-step segment but the first."""
    return steps + jump_length * (jump_n_sample - 1) * len(range(0, steps - jump_length, jump_length))


class InpaintingSampling(Sampling):
    """`Sampling` of an inpainting request: sampler and steps as `Sampling`, plus RePaint's ``jump_length`` (an
    integer in [1, ``max_inference_steps``]) and ``jump_n_sample`` (in [1, `MAX_JUMP_N_SAMPLE`]) for a WDM
    (generation) model; a conditional inpainting model takes no jumps. The network evaluations (`network_calls`)
    must stay within ``Limits.network_calls`` (``--conf max_network_calls``), checked before any inferer is built.
    """

    def __init__(
        self,
        record: Mapping[str, Any],
        sampler: Any,
        num_inference_steps: Any,
        limits: Limits,
        timestep_spacing: Any = None,
        jump_length: Any = 10,
        jump_n_sample: Any = 10,
    ) -> None:
        self.repaint = record.get("task") == "generation"  # zero-shot RePaint; else a conditional model
        self.default_jumps = (int(jump_length), int(jump_n_sample))
        super().__init__(record, sampler, num_inference_steps, limits, timestep_spacing)

    def jumps(self, params: Mapping[str, Any]) -> dict[str, int]:
        """The request's ``jump_length`` and ``jump_n_sample`` (typed ranges), else the config's; {} without RePaint."""
        given = [k for k in JUMP_PARAMS if params.get(k) not in (None, "")]
        if not self.repaint:
            if given:
                raise RequestError(
                    f"{given} apply to zero-shot RePaint with a generation model; this server's model is a "
                    f"conditional {self.record.get('task')} model."
                )
            return {}
        length, n_sample = self.default_jumps
        if "jump_length" in given:
            length = parse_int(params["jump_length"], "jump_length", 1, self.limits.max_inference_steps)
        if "jump_n_sample" in given:
            n_sample = parse_int(params["jump_n_sample"], "jump_n_sample", 1, MAX_JUMP_N_SAMPLE)
        return {"jump_length": length, "jump_n_sample": n_sample}

    def build(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The inferer for a request's params (`inpainting_inferer`); returns it and the settings used, with
        ``network_calls``."""
        used = {**self.settings(params), **self.jumps(params)}
        scheduler = self.scheduler(used)
        try:
            steps = len(RePaintInferer.timesteps_of(scheduler) if self.repaint else scheduler.timesteps)
        except ValueError as e:  # e.g. DDPM with fewer than T steps, rectified flow
            raise RequestError(f"cannot inpaint with {used}: {type(e).__name__}: {e}") from e
        self.check_steps(steps, used)
        calls = network_calls(steps, used["jump_length"], used["jump_n_sample"]) if self.repaint else steps
        cap = self.limits.network_calls
        if calls > cap:
            raise RequestError(
                f"inpainting with {used} takes {calls} network evaluations; this server allows at most {cap} "
                "(conf max_network_calls): pass fewer 'num_inference_steps', a smaller 'jump_n_sample' or a larger "
                "'jump_length'."
            )
        try:
            inferer = inpainting_inferer(
                self.record, scheduler, used.get("jump_length", 1), used.get("jump_n_sample", 1)
            )
        except ValueError as e:
            raise RequestError(f"cannot inpaint with {used}: {type(e).__name__}: {e}") from e
        return inferer, {**used, "network_calls": calls}


@dataclass
class InpaintingInputs:
    """One checked inpainting request: the voided image (its geometry), its voxels and the boolean mask."""

    case: str
    image: nib.Nifti1Image
    voided: np.ndarray
    mask: np.ndarray
    seed: int
    inferer: Any
    sampling: dict[str, Any] = field(default_factory=dict)


class InpaintingService:
    """Inpaint one case per request: `inpaint_volume` with the model of ``configs/inference_inpaint.json``.

    The config's ``inpainter`` (`Inpainter`: network, record, file suffixes, seed) is parsed once and its weights
    loaded (``initialize``); every request's inputs go through `Inpainter.load_inputs` (missing or unreadable
    files, shape or affine mismatch, non-binary or empty mask, mask outside the brain: 422). A request may set
    ``seed``, ``sampler``, ``num_inference_steps``, ``jump_length``, ``jump_n_sample`` (`InpaintingSampling`).

    Inputs: ``image`` is a file of the case (``<case><image_suffix>`` or ``<case><mask_suffix>``, e.g.
    ``c1-t1n-voided.nii.gz`` / ``c1-mask.nii.gz``) or the case folder ``<case>/``; the other file is found beside
    it by name, or ``mask`` is an uploaded mask. With ``upload=True``, ``image`` is an uploaded voided image
    (then ``mask`` is required; params ``case`` names it, default ``upload``).
    """

    def __init__(self, config: BundleConfig, limits: Limits | None = None) -> None:
        self.config, self.limits = config, limits or Limits()
        parser = config.parser(progress=False, overwrite=False)
        self.inpainter = parser.get_parsed_content("inpainter")
        parser.get_parsed_content("initialize")  # loads the weights into the inpainter's network
        self.weights = [str(parser.get_parsed_content("ckpt_path"))]
        self.record = self.inpainter.record
        self.default_seed = int(self.inpainter.seed)
        self.output_suffix = str(parser.get_parsed_content("output_suffix"))
        jumps = {k: parser.get_parsed_content(k) for k in JUMP_PARAMS}
        self.sampling = InpaintingSampling.from_config(self.record, parser, self.limits, **jumps)
        self._lock = threading.Lock()

    def defaults(self) -> dict[str, Any]:
        """Request params a client may set, with the config's values."""
        jumps = dict(zip(JUMP_PARAMS, self.sampling.default_jumps)) if self.sampling.repaint else {}
        return {"seed": self.default_seed, **self.sampling.defaults(), **jumps}

    def _suffix(self, key: str) -> str:
        return "-" + self.inpainter.suffixes[key].lstrip("-")

    def find(self, image: str | os.PathLike, root: str | os.PathLike | None = None) -> tuple[str, dict[str, str]]:
        """The case of a datastore file (or case folder) and its image and mask files found beside it by name.

        Files must resolve inside ``root`` (the studies folder) when given, else 403.
        """
        path = Path(image)
        if path.is_dir():
            case, folder = path.name, path
        else:
            stem = nifti_stem(path.name) or ""
            suffix = next((s for s in map(self._suffix, (IMAGE, MASK)) if stem.endswith(s) and stem != s), None)
            if not path.is_file() or suffix is None:
                raise RequestError(
                    f"'{path.name}' is not an inpainting case file: pass the id of '<case>{self._suffix(IMAGE)}' or "
                    f"'<case>{self._suffix(MASK)}', or the case folder name '<case>'.",
                    status=404 if not path.is_file() else 422,
                )
            case, folder = stem[: -len(suffix)], path.parent
        names = {key: self._suffix(key)[1:] for key in (IMAGE, MASK)}
        found = contrast_files(folder, case, list(names.values()))
        files = {key: found[name] for key, name in names.items() if name in found}
        if root is not None:
            real_root = os.path.realpath(root)
            for f in files.values():
                if os.path.commonpath([os.path.realpath(f), real_root]) != real_root:
                    raise RequestError(
                        f"case '{case}': '{os.path.basename(f)}' resolves outside the studies folder.", 403
                    )
        return case, files

    def _stage(self, case: str, files: Mapping[str, str], work_dir: str | os.PathLike) -> Path:
        """``<work_dir>/<tmp>/<case>/`` with links ``<case><suffix>.nii[.gz]`` to ``files``, for `load_inputs`."""
        case_dir = Path(tempfile.mkdtemp(dir=work_dir)) / case
        case_dir.mkdir()
        for key, f in files.items():
            ext = ".nii" if str(f).endswith(".nii") else ".nii.gz"
            os.symlink(os.path.abspath(f), case_dir / f"{case}{self._suffix(key)}{ext}")
        return case_dir

    def load(
        self,
        image: str | os.PathLike | None,
        params: Mapping[str, Any],
        work_dir: str | os.PathLike,
        mask: str | os.PathLike | None = None,
        upload: bool = False,
        root: str | os.PathLike | None = None,
    ) -> InpaintingInputs:
        """Check the params, find, read and check the inputs; every problem is a RequestError, before sampling."""
        seed = parse_int(params["seed"], "seed", 0, MAX_SEED) if params.get("seed") not in (None, "") else None
        inferer, sampling = self.sampling.build(params)
        if upload:
            case = check_name(params.get("case") or "upload", "case", 64)
            if mask is None:
                raise RequestError("an uploaded image needs its mask: upload it as 'mask' too.")
            files = {IMAGE: str(image)}
        elif image:
            case, files = self.find(image, root)
        else:
            raise RequestError("pass 'image' (a datastore id of the case) or upload 'file' and 'mask'.")
        if mask is not None:
            files[MASK] = str(mask)
        for key, f in files.items():
            try:
                shape = volume_shape(f)
            except Exception:  # unreadable: load_inputs names the problem
                continue
            check_voxels(shape, self.limits.max_voxels, f"case '{case}': the {key}")
        try:
            img, voided, mask_array = self.inpainter.load_inputs(self._stage(case, files, work_dir))
        except CaseError as e:
            raise RequestError(f"case '{case}': {e}") from e
        seed = self.default_seed if seed is None else seed
        return InpaintingInputs(case, img, voided, mask_array, seed, inferer, {"seed": seed, **sampling})

    def run(self, inputs: InpaintingInputs) -> np.ndarray:
        """Inpaint: (D, H, W) float32 on the input's grid, the voided image bit for bit outside the mask."""
        p = self.inpainter
        with self._lock:  # why: one network, loaded once; one request samples at a time
            try:
                return inpaint_volume(
                    p.network,
                    inputs.inferer,
                    inputs.voided,
                    inputs.mask,
                    self.record,
                    inputs.seed,
                    inputs.case,
                    scheduler=inputs.inferer.scheduler,
                    device=p.device,
                    affine=inputs.image.affine,
                )
            except ValueError as e:  # e.g. mask voxels outside the model's frame, a constant image
                raise RequestError(f"case '{inputs.case}': {e}") from e

    def write(
        self, inputs: InpaintingInputs, volume: np.ndarray, out_dir: str | os.PathLike
    ) -> tuple[str, dict[str, Any]]:
        """Write ``volume`` with the voided image's shape, affine and header; returns (file, result info)."""
        path = _claim(out_dir, f"{inputs.case}{self.output_suffix}")
        write_like(volume, inputs.image, path)
        info = {"case": inputs.case, "shape": list(volume.shape), "mask_voxels": int(inputs.mask.sum())}
        return path, {**info, **inputs.sampling}

    def __call__(
        self,
        image: str | os.PathLike | None,
        params: Mapping[str, Any],
        out_dir: str | os.PathLike,
        mask: str | os.PathLike | None = None,
        upload: bool = False,
        root: str | os.PathLike | None = None,
    ) -> tuple[str, dict[str, Any]]:
        with tempfile.TemporaryDirectory(dir=out_dir) as work:
            inputs = self.load(image, params, work, mask, upload, root)
        return self.write(inputs, self.run(inputs), out_dir)
