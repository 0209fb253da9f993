"""The bundle's configs serving one request at a time: synthesis (cWDM) and generation (WDM).

No monailabel import here (the MONAI Label tasks in `wdm_bundle.label.tasks` wrap these), so the
request handling is tested in the bundle's own environment too.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.bundle import ConfigParser

from wdm_bundle.data.io import volume_shape
from wdm_bundle.engines import generate, synthesize, write_volume
from wdm_bundle.engines.synthesis import CaseError, write_like
from wdm_bundle.label.inputs import (
    MAX_SEED,
    RequestError,
    case_files,
    check_name,
    check_voxels,
    parse_conf_value,
    parse_contrasts,
    parse_int,
    split_upload,
)
from wdm_bundle.label.sampling import SAMPLERS, Limits, Sampling
from wdm_bundle.utils import atomic_write

__all__ = [
    "BundleConfig",
    "Limits",
    "Sampling",
    "SynthesisInputs",
    "SynthesisService",
    "GenerationService",
    "configs_from_conf",
    "SAMPLERS",
]

logger = logging.getLogger(__name__)


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}"


class BundleConfig:
    """Config files of this bundle plus overrides, parsed afresh on demand (as ``monai.bundle run`` does).

    Args:
        bundle_root: the bundle folder; relative config files are read from it and it is the
            ``bundle_root`` config key.
        config_files: merged in order, e.g. ``["configs/inference_cwdm.json", "configs/demo_cwdm.json"]``.
        overrides: ``{config id: value}``, e.g. ``{"ckpt_path": "...", "network_def#channels": [16, 32, 32]}``.
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        config_files: Sequence[str | os.PathLike],
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.bundle_root = Path(bundle_root).resolve()
        self.files = [str(Path(f) if Path(f).is_absolute() else self.bundle_root / f) for f in config_files]
        missing = [f for f in self.files if not Path(f).is_file()]
        if not self.files or missing:
            raise FileNotFoundError(
                f"bundle config file(s) not found: {missing or 'none given'} (bundle_root " f"'{self.bundle_root}')."
            )
        self.overrides = {"bundle_root": str(self.bundle_root), **dict(overrides or {})}

    def parser(self, **overrides: Any) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(self.files)
        parser.update({**self.overrides, **overrides})
        return parser

    def parse(self, id: str, **overrides: Any) -> Any:
        """The parsed (instantiated) config item ``id`` with these overrides on top."""
        return self.parser(**overrides).get_parsed_content(id)


@dataclass
class SynthesisInputs:
    """One checked synthesis request: raw input arrays (D, H, W) and their NIfTI images."""

    case: str
    missing: str
    images: dict[str, nib.Nifti1Image]
    arrays: dict[str, np.ndarray]
    seed: int
    inferer: Any
    sampling: dict[str, Any] = field(default_factory=dict)


class SynthesisService:
    """Missing-contrast synthesis of one case per request: `synthesize` with the `ContrastSynthesizer`'s models.

    The synthesizer (``synthesizer`` of ``configs/inference_cwdm.json``) is parsed once and keeps its
    networks loaded; a request may choose ``sampler``, ``num_inference_steps`` and ``seed``, which
    are passed to `synthesize` (one request samples at a time).

    Request params:
        ``contrasts``: the upload route: the uploaded file holds these contrasts as volumes
            (4D, in this order). Without it, ``image`` is one contrast file of a case and the
            case's other contrasts are found next to it (the datastore route).
        ``target``: the contrast to synthesise; default: the one the case lacks.
        ``case``: name of an uploaded case (seeds the noise, names the output; default ``upload``).
        ``seed``, ``sampler``, ``num_inference_steps``: override the config's.
    """

    def __init__(self, config: BundleConfig, limits: Limits | None = None) -> None:
        self.config, self.limits = config, limits or Limits()
        parser = config.parser(save_png=False, progress=False)
        self.synthesizer = parser.get_parsed_content("synthesizer")
        self.default_seed = int(self.synthesizer.seed)
        self.sampling = Sampling.from_config(self.synthesizer.record, parser, self.limits)
        self._lock = threading.Lock()

    @property
    def contrasts(self) -> list[str]:
        return list(self.synthesizer.contrasts)

    @property
    def weights(self) -> list[str]:
        """The weight file(s) this service loads."""
        s = self.synthesizer
        return [str(s.ckpt_path)] if s.unified else [str(p) for p in s.ckpt_paths.values()]

    def defaults(self) -> dict[str, Any]:
        """Request params a client may set, with the config's values."""
        return {"target": "", "seed": self.default_seed, **self.sampling.defaults()}

    def load(self, image: str | os.PathLike, params: Mapping[str, Any]) -> SynthesisInputs:
        """Find, read and check the inputs of a request; every problem is a RequestError, before sampling."""
        target = params.get("target") or None
        if target is not None and not isinstance(target, str):
            raise RequestError(f"'target' must be a contrast name, one of {self.contrasts}.")
        seed = (
            parse_int(params["seed"], "seed", 0, MAX_SEED)
            if params.get("seed") not in (None, "")
            else self.default_seed
        )
        inferer, sampling = self.sampling.build(params)
        if params.get("contrasts") not in (None, "", []):
            names = parse_contrasts(params["contrasts"], self.contrasts)
            case = check_name(params.get("case") or "upload", "case", 64)
            files: Mapping[str, Any] = split_upload(image, names, self.limits.max_voxels)
        else:
            case, files = case_files(image, self.contrasts)
            for c, f in files.items():
                try:
                    shape = volume_shape(f)
                except Exception:  # unreadable: load_inputs names the problem
                    continue
                check_voxels(shape, self.limits.max_voxels, f"case '{case}': {c}")
        try:
            missing, images, arrays = self.synthesizer.load_inputs(files, target)
        except CaseError as e:
            raise RequestError(f"case '{case}': {e}") from e
        return SynthesisInputs(case, missing, images, arrays, seed, inferer, sampling)

    def run(self, inputs: SynthesisInputs) -> np.ndarray:
        """Sample the missing contrast: (D, H, W) float32 in [0, 1], on the inputs' grid."""
        s = self.synthesizer
        with self._lock:  # why: the networks are loaded once and shared; one request samples at a time
            try:
                network, record = s.network_for(inputs.missing)
            except CaseError as e:  # e.g. no per-contrast model for this target
                raise RequestError(f"case '{inputs.case}': {e}") from e
            return synthesize(
                network,
                inputs.inferer,
                inputs.arrays,
                inputs.missing,
                record,
                inputs.seed,
                inputs.case,
                device=s.device,
                amp=s.amp,
                amp_dtype=s.amp_dtype,
            )

    def write(
        self, inputs: SynthesisInputs, volume: np.ndarray, out_dir: str | os.PathLike
    ) -> tuple[str, dict[str, Any]]:
        """Write ``volume`` with the affine and header of the case's inputs; returns (file, result info)."""
        path = _claim(out_dir, f"{inputs.case}-{inputs.missing}")
        write_like(volume, next(iter(inputs.images.values())), path)
        info = {
            "case": inputs.case,
            "synthesised": inputs.missing,
            "inputs": list(inputs.arrays),
            "shape": list(volume.shape),
            "seed": inputs.seed,
            **inputs.sampling,
        }
        return path, info

    def __call__(
        self, image: str | os.PathLike, params: Mapping[str, Any], out_dir: str | os.PathLike
    ) -> tuple[str, dict[str, Any]]:
        inputs = self.load(image, params)
        return self.write(inputs, self.run(inputs), out_dir)


class GenerationService:
    """Unconditional generation of one volume per request: `generate` with the bundle's `VolumeGenerator`'s network.

    The generator and its network (``generator`` and ``initialize`` of ``configs/inference.json``,
    weights loaded) are parsed once; a request may change ``seed``, ``sampler`` and
    ``num_inference_steps``. The volume has the config's ``image_size`` and a centred RAS affine
    with its ``spacing``.
    """

    def __init__(self, config: BundleConfig, limits: Limits | None = None) -> None:
        self.config, self.limits = config, limits or Limits()
        parser = config.parser(num_samples=1, batch_size=1, save_png=False, progress=False, overwrite=False)
        self.generator = parser.get_parsed_content("generator")
        parser.get_parsed_content("initialize")  # loads the weights into the generator's network
        self.default_seed = int(self.generator.seed)
        self.weights = [str(parser.get_parsed_content("ckpt_path"))]
        check_voxels(self.generator.image_shape[1:], self.limits.max_voxels, "the configured image_size")
        record = parser.get_parsed_content("record")
        self.sampling = Sampling.from_config(record, parser, self.limits)
        self._lock = threading.Lock()

    def defaults(self) -> dict[str, Any]:
        return {"seed": self.default_seed, **self.sampling.defaults()}

    def __call__(self, params: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[str, dict[str, Any]]:
        seed = (
            parse_int(params["seed"], "seed", 0, MAX_SEED)
            if params.get("seed") not in (None, "")
            else self.default_seed
        )
        inferer, sampling = self.sampling.build(params)
        g = self.generator
        with self._lock:  # why: one network, loaded once; one request samples at a time
            image = generate(
                g.sampling_network(), inferer, 1, seed, g.image_shape, device=g.device, amp=g.amp, amp_dtype=g.amp_dtype
            )[0]
        path = _claim(out_dir, f"wdm_seed{seed}")
        atomic_write(path, lambda tmp: write_volume(image, tmp, g.affine))
        return path, {"seed": seed, "shape": list(g.image_shape[1:]), **sampling}


def _claim(out_dir: str | os.PathLike, stem: str) -> str:
    """A new file ``<out_dir>/<stem>.nii.gz`` (or, if taken, with a unique suffix), created so no one else takes it."""
    path = os.path.join(out_dir, f"{stem}.nii.gz")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return path
    except FileExistsError:
        fd, path = tempfile.mkstemp(prefix=f"{stem}_", suffix=".nii.gz", dir=out_dir)
        os.close(fd)
        return path


#: Default config files of each task, relative to the bundle root.
DEFAULT_CONFIGS = {
    "synthesis": ["configs/inference_cwdm.json"],
    "generation": ["configs/inference.json"],
    "inpainting": ["configs/inference_inpaint.json"],
}


def configs_from_conf(conf: Mapping[str, str], default_root: str | os.PathLike) -> dict[str, BundleConfig]:
    """Each task's `BundleConfig` from MONAI Label ``--conf`` pairs (see apps/monailabel_wdm/main.py).

    ``bundle_root``; ``<task>_configs`` (comma-separated files); ``<task>#<config id>`` overrides.
    """
    root = conf.get("bundle_root") or str(default_root)
    configs = {}
    for task, default_files in DEFAULT_CONFIGS.items():
        files = conf.get(f"{task}_configs")
        files = [f.strip() for f in files.split(",") if f.strip()] if files else default_files
        prefix = f"{task}#"
        overrides = {k.removeprefix(prefix): parse_conf_value(v) for k, v in conf.items() if k.startswith(prefix)}
        configs[task] = BundleConfig(root, files, overrides)
    return configs
