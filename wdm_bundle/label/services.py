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

from wdm_bundle.engines.synthesis import CaseError, write_like
from wdm_bundle.label.inputs import RequestError, case_files, parse_conf_value, parse_contrasts, parse_int, split_upload

__all__ = ["BundleConfig", "SynthesisInputs", "SynthesisService", "GenerationService", "configs_from_conf"]

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

    def __init__(self, bundle_root: str | os.PathLike, config_files: Sequence[str | os.PathLike],
                 overrides: Mapping[str, Any] | None = None) -> None:
        self.bundle_root = Path(bundle_root).resolve()
        self.files = [str(Path(f) if Path(f).is_absolute() else self.bundle_root / f) for f in config_files]
        missing = [f for f in self.files if not Path(f).is_file()]
        if not self.files or missing:
            raise FileNotFoundError(f"bundle config file(s) not found: {missing or 'none given'} (bundle_root "
                                    f"'{self.bundle_root}').")
        self.overrides = {"bundle_root": str(self.bundle_root), **dict(overrides or {})}

    def parser(self, **overrides: Any) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(self.files)
        parser.update({**self.overrides, **overrides})
        return parser

    def parse(self, id: str, **overrides: Any) -> Any:
        """The parsed (instantiated) config item ``id`` with these overrides on top."""
        return self.parser(**overrides).get_parsed_content(id)

    def sampler_inferer(self, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The config's ``inferer`` (with its scheduler) for a request's ``sampler`` / ``num_inference_steps``.

        Returns the inferer and the sampling settings used; a bad sampler or step count is a RequestError.
        """
        overrides = {}
        if params.get("sampler") not in (None, ""):
            overrides["sampler"] = str(params["sampler"])
        if params.get("num_inference_steps") not in (None, ""):
            overrides["num_inference_steps"] = parse_int(params["num_inference_steps"], "num_inference_steps", 1)
        parser = self.parser(**overrides)
        try:
            inferer = parser.get_parsed_content("inferer")
        except Exception as e:
            raise RequestError(f"cannot sample with {overrides or 'the config defaults'}: {_root_cause(e)}") from e
        return inferer, {"sampler": parser["sampler"], "num_inference_steps": parser["num_inference_steps"]}


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
    """Missing-contrast synthesis for one case per request, with the bundle's `ContrastSynthesizer`.

    The synthesizer (``synthesizer`` of ``configs/inference_cwdm.json``) is parsed once and keeps its
    networks loaded; a request may change ``sampler``, ``num_inference_steps`` and ``seed``, which
    are set on it under a lock (one request samples at a time).

    Request params:
        ``contrasts``: the upload route: the uploaded file holds these contrasts as volumes
            (4D, in this order). Without it, ``image`` is one contrast file of a case and the
            case's other contrasts are found next to it (the datastore route).
        ``target``: the contrast to synthesise; default: the one the case lacks.
        ``case``: name of an uploaded case (seeds the noise, names the output; default ``upload``).
        ``seed``, ``sampler``, ``num_inference_steps``: override the config's.
    """

    def __init__(self, config: BundleConfig) -> None:
        self.config = config
        self.synthesizer = config.parse("synthesizer", save_png=False, progress=False)
        self.default_seed = int(self.synthesizer.seed)
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
        parser = self.config.parser()
        return {"target": "", "seed": self.default_seed, "sampler": parser["sampler"],
                "num_inference_steps": parser["num_inference_steps"]}

    def load(self, image: str | os.PathLike, params: Mapping[str, Any]) -> SynthesisInputs:
        """Find, read and check the inputs of a request; every problem is a RequestError, before sampling."""
        target = params.get("target") or None
        if params.get("contrasts") not in (None, "", []):
            names = parse_contrasts(params["contrasts"], self.contrasts)
            case = str(params.get("case") or "upload")
            files: Mapping[str, Any] = split_upload(image, names)
        else:
            case, files = case_files(image, self.contrasts)
        try:
            missing, images, arrays = self.synthesizer.load_inputs(files, target)
        except CaseError as e:
            raise RequestError(f"case '{case}': {e}") from e
        seed = parse_int(params["seed"], "seed", 0) if params.get("seed") not in (None, "") else self.default_seed
        inferer, sampling = self.config.sampler_inferer(params)
        return SynthesisInputs(case, missing, images, arrays, seed, inferer, sampling)

    def run(self, inputs: SynthesisInputs) -> np.ndarray:
        """Sample the missing contrast: (D, H, W) float32 in the config's data range, on the inputs' grid."""
        s = self.synthesizer
        with self._lock:  # why: one synthesizer (networks loaded once); per-request sampler settings
            s.inferer, s.scheduler, s.seed = inputs.inferer, inputs.inferer.scheduler, inputs.seed
            try:
                return s.synthesize(inputs.arrays, inputs.missing, inputs.case)
            except CaseError as e:  # e.g. no per-contrast model for this target
                raise RequestError(f"case '{inputs.case}': {e}") from e

    def write(self, inputs: SynthesisInputs, volume: np.ndarray, out_dir: str | os.PathLike) -> tuple[str, dict[str, Any]]:
        """Write ``volume`` with the affine and header of the case's inputs; returns (file, result info)."""
        fd, path = tempfile.mkstemp(prefix=f"{inputs.case}-{inputs.missing}_", suffix=".nii.gz", dir=out_dir)
        os.close(fd)
        write_like(volume, next(iter(inputs.images.values())), path)
        info = {"case": inputs.case, "synthesised": inputs.missing, "inputs": list(inputs.arrays),
                "shape": list(volume.shape), "seed": inputs.seed, **inputs.sampling}
        return path, info

    def __call__(self, image: str | os.PathLike, params: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[str, dict[str, Any]]:
        inputs = self.load(image, params)
        return self.write(inputs, self.run(inputs), out_dir)


class GenerationService:
    """Unconditional generation of one volume per request, with the bundle's `VolumeGenerator`.

    The generator and its network (``generator`` and ``initialize`` of ``configs/inference.json``,
    weights loaded) are parsed once; a request may change ``seed``, ``sampler`` and
    ``num_inference_steps``. The volume has the config's ``image_size`` and a centred RAS affine
    with its ``spacing``.
    """

    def __init__(self, config: BundleConfig) -> None:
        self.config = config
        parser = config.parser(num_samples=1, batch_size=1, save_png=False, progress=False, overwrite=False)
        self.generator = parser.get_parsed_content("generator")
        parser.get_parsed_content("initialize")  # loads the weights into the generator's network
        self.default_seed = int(self.generator.seed)
        self.weights = [str(parser.get_parsed_content("ckpt_path"))]
        self._lock = threading.Lock()

    def defaults(self) -> dict[str, Any]:
        parser = self.config.parser()
        return {"seed": self.default_seed, "sampler": parser["sampler"], "num_inference_steps": parser["num_inference_steps"]}

    def __call__(self, params: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[str, dict[str, Any]]:
        seed = parse_int(params["seed"], "seed", 0) if params.get("seed") not in (None, "") else self.default_seed
        inferer, sampling = self.config.sampler_inferer(params)
        g = self.generator
        with self._lock:  # why: one generator (network loaded once); per-request sampler settings
            g.inferer, g.scheduler, g.seed = inferer, inferer.scheduler, seed
            g.output_dir = Path(tempfile.mkdtemp(dir=out_dir))
            try:
                written = Path(g.run()[0])
                fd, path = tempfile.mkstemp(prefix=f"wdm_seed{seed}_", suffix=".nii.gz", dir=out_dir)
                os.close(fd)
                os.replace(written, path)
            finally:
                for f in g.output_dir.iterdir():
                    f.unlink()
                g.output_dir.rmdir()
        return path, {"seed": seed, "shape": list(g.image_shape[1:]), **sampling}


#: Default config files of each task, relative to the bundle root.
DEFAULT_CONFIGS = {"synthesis": ["configs/inference_cwdm.json"], "generation": ["configs/inference.json"]}


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
        overrides = {k[len(prefix):]: parse_conf_value(v) for k, v in conf.items() if k.startswith(prefix)}
        configs[task] = BundleConfig(root, files, overrides)
    return configs
