"""Sampler settings of a request, checked against closed sets and caps before any work (`Sampling`, `Limits`).

No monailabel import here: these checks run (and are tested) in the bundle's own environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wdm_bundle.diffusion import Sampler, WaveletDiffusionInferer, make_scheduler
from wdm_bundle.diffusion import schedulers as _schedulers
from wdm_bundle.engines import schedule_settings
from wdm_bundle.label.inputs import RequestError, parse_choice, parse_int, parse_sampler

__all__ = ["Limits", "Sampling", "SAMPLERS", "SPACINGS"]

#: The samplers a request may name (a closed set: request values never reach a config parser).
SAMPLERS = tuple(s.value for s in Sampler)
#: The DDIM timestep spacings a request may name (`TimestepSpacing` of `make_scheduler`; none in bundle versions
#: without it).
SPACINGS = tuple(s.value for s in _schedulers.TimestepSpacing)


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (``--conf max_inference_steps`` / ``max_voxels`` / ``max_network_calls``).

    ``max_network_calls`` bounds the network evaluations of one inpainting request (RePaint redoes steps:
    about ``num_inference_steps`` x ``jump_n_sample``); None = 10 x ``max_inference_steps``.
    """

    max_inference_steps: int = 1000
    max_voxels: int = 256**3
    max_network_calls: int | None = None

    @property
    def network_calls(self) -> int:
        """The cap on network evaluations per request (``max_network_calls``, default 10 x ``max_inference_steps``)."""
        return self.max_network_calls if self.max_network_calls is not None else 10 * self.max_inference_steps


class Sampling:
    """Sampler settings of a request, checked and built directly (no config parsing per request).

    ``sampler`` must be one of `SAMPLERS`, ``num_inference_steps`` an integer in [1, ``max_inference_steps``],
    and the scheduler's actual step count (DDPM without steps runs all T) at most ``max_inference_steps``.
    The scheduler is `make_scheduler(sampler, steps, **schedule_settings(record))`, the config's own recipe.
    """

    def __init__(
        self,
        record: Mapping[str, Any],
        sampler: Any,
        num_inference_steps: Any,
        limits: Limits,
        timestep_spacing: Any = None,
    ) -> None:
        self.record, self.limits = dict(record), limits
        self.default_sampler = parse_sampler(str(sampler), SAMPLERS)  # config values (trusted), checked all the same
        self.default_steps = None if num_inference_steps is None else int(num_inference_steps)
        self.default_spacing = None  # None: make_scheduler's default
        if timestep_spacing is not None:
            self.default_spacing = parse_choice(str(timestep_spacing), "timestep_spacing", SPACINGS)
        self.build({})  # a default the server could never serve is an error at start, not per request

    @classmethod
    def from_config(cls, record: Mapping[str, Any], parser: Any, limits: Limits, **kwargs: Any) -> Sampling:
        """The config's ``sampler``, ``num_inference_steps`` and ``timestep_spacing`` (if it has one) as defaults."""
        values = [parser.get_parsed_content(k) for k in ("sampler", "num_inference_steps")]
        spacing = parser.get_parsed_content("timestep_spacing") if "timestep_spacing" in parser else None
        return cls(record, *values, limits, timestep_spacing=spacing, **kwargs)

    def defaults(self) -> dict[str, Any]:
        """The request params of the sampler a client may set, with the config's values."""
        return {
            "sampler": self.default_sampler,
            "num_inference_steps": self.default_steps,
            "timestep_spacing": self.default_spacing,
        }

    def settings(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The request's ``sampler``, ``num_inference_steps`` and ``timestep_spacing`` (closed sets, range), else the
        config's; ``timestep_spacing`` only for DDIM (the other samplers ignore it)."""
        sampler, steps, spacing = self.default_sampler, self.default_steps, self.default_spacing
        if params.get("sampler") not in (None, ""):
            sampler = parse_sampler(params["sampler"], SAMPLERS)
        if params.get("num_inference_steps") not in (None, ""):
            steps = parse_int(params["num_inference_steps"], "num_inference_steps", 1, self.limits.max_inference_steps)
        if params.get("timestep_spacing") not in (None, ""):
            spacing = parse_choice(params["timestep_spacing"], "timestep_spacing", SPACINGS)
        used = {"sampler": sampler, "num_inference_steps": steps}
        return {**used, "timestep_spacing": spacing} if spacing is not None and sampler == "ddim" else used

    def scheduler(self, used: Mapping[str, Any]) -> Any:
        """`make_scheduler` for the settings ``used``; a setting the model cannot sample with is a RequestError."""
        spacing = {"timestep_spacing": used["timestep_spacing"]} if "timestep_spacing" in used else {}
        try:
            return make_scheduler(
                used["sampler"], used["num_inference_steps"], **schedule_settings(self.record), **spacing
            )
        except ValueError as e:
            raise RequestError(f"cannot sample with {dict(used)}: {type(e).__name__}: {e}") from e

    def check_steps(self, count: int, used: Mapping[str, Any]) -> None:
        """422 when the scheduler takes more than ``max_inference_steps`` steps."""
        cap = self.limits.max_inference_steps
        if count > cap:
            raise RequestError(
                f"sampling with {dict(used)} takes {count} steps; this server allows at most {cap} "
                "(conf max_inference_steps): pass a smaller 'num_inference_steps' or sampler 'ddim'."
            )

    def build(self, params: Mapping[str, Any]) -> tuple[WaveletDiffusionInferer, dict[str, Any]]:
        """The inferer (with its scheduler) for a request's params; returns it and the settings used."""
        used = self.settings(params)
        scheduler = self.scheduler(used)
        try:
            inferer = WaveletDiffusionInferer(
                scheduler, data_range=self.record["data_range"], diffusion=self.record["diffusion"]
            )
        except ValueError as e:
            raise RequestError(f"cannot sample with {used}: {type(e).__name__}: {e}") from e
        timesteps = getattr(scheduler, "timesteps", None)
        self.check_steps(len(timesteps) if timesteps is not None else (used["num_inference_steps"] or 0), used)
        return inferer, used
