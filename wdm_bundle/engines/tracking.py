"""Hook the bundle's own handlers into MONAI's experiment tracking (``monai.bundle run ... --tracking mlflow``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from monai.handlers import MLFlowHandler

from wdm_bundle.engines.handlers import PreviewSampler

__all__ = ["connect_tracking"]

logger = logging.getLogger(__name__)


def connect_tracking(handlers: Sequence[Any], params: Mapping[str, Any] | None = None) -> list[Any]:
    """Return ``handlers`` without the disabled ones (None), after linking any `MLFlowHandler` to the run's extras.

    ``--tracking mlflow`` appends MONAI's `MLFlowHandler` to ``train#handlers`` with default
    settings that log the loss, ``max_epochs``/``epoch_length`` and the executed config, but no
    hyper-parameters and no images. This gives the handler ``params`` (logged as MLflow params at
    the start of the run) and lets every `PreviewSampler` log its PNGs as run artifacts.
    Without an `MLFlowHandler` (tracking off, or a non-zero distributed rank) nothing changes.
    """
    handlers = [h for h in handlers if h is not None]  # `_disabled_` named handlers resolve to None
    trackers = [h for h in handlers if isinstance(h, MLFlowHandler)]
    if not trackers:
        return handlers
    tracker = trackers[0]
    if params:
        tracker.experiment_param = {**{k: _param(v) for k, v in params.items()}, **(tracker.experiment_param or {})}
    for h in handlers:
        if isinstance(h, PreviewSampler):
            h.tracker = tracker
    logger.info(f"MLflow tracking: {len(params or {})} params, previews as artifacts.")
    return handlers


def _param(value: Any) -> Any:
    """MLflow params are strings; show sequences as plain lists rather than tensor/tuple reprs."""
    if isinstance(value, (tuple, list)):
        return [_param(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
