"""Import a published WDM / cWDM checkpoint (reference layout) as a bundle weight file.

Runs from the repository root without installing the package::

    python scripts/import_checkpoint.py brats_unet_128_1200k.pt --dst models/brats_unet_128.pt
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, for `wdm_bundle`

import fire  # noqa: E402

from wdm_bundle.networks.reference_checkpoint import import_checkpoint_file  # noqa: E402
from wdm_bundle.utils import as_bool  # noqa: E402


def import_checkpoint(
    src: str,
    dst: str = "models/model.pt",
    config: str | None = None,
    iteration: int = 0,
    overwrite: bool = False,
    target_contrast: str | None = None,
) -> str:
    """Convert the published ``state_dict`` ``src`` into a bundle ``{"model", "ema", "iteration"}`` file.

    The configuration is detected from the keys and shapes; a checkpoint that fits none is
    reported key by key (missing, unexpected, shape mismatches). Both "model" and "ema" get the
    published weights, and the file records the authors' training settings (schedule, fixed-large
    variance, data range, pad/crop placement, network), which inference reads: nothing else to set.
    Refuses to overwrite ``dst`` unless ``--overwrite true``.

    Example::

        python scripts/import_checkpoint.py brats_unet_128_1200k.pt --dst models/brats_unet_128.pt
        python scripts/import_checkpoint.py lidc-idri_unet_128_1200k.pt --dst models/lidc_unet_128.pt \\
            --config wdm_unet_128 --iteration 1200000
        python scripts/import_checkpoint.py cwdm_t2f.pt --dst models/t2f/model.pt --target_contrast t2f

    Args:
        src: the downloaded ``.pt`` file (a bare reference state_dict).
        dst: bundle weight file to write.
        config: one of wdm_unet_128, wdm_unet_256, wdm_wavunet_128, wdm_wavunet_256, cwdm_unet;
            default: detected.
        iteration: training iteration to record in ``dst``.
        overwrite: replace an existing ``dst``.
        target_contrast: cWDM only (required): the contrast the model synthesises, t1n, t1c, t2w or t2f.

    Returns:
        The configuration name.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return import_checkpoint_file(
        src,
        dst,
        config=config,
        iteration=iteration,
        overwrite=as_bool(overwrite, "overwrite"),
        target_contrast=target_contrast,
    )


if __name__ == "__main__":
    fire.Fire(import_checkpoint)
