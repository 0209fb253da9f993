"""Export bundle weights to the reference layout that the WDM / cWDM authors' code loads.

Runs from the repository root without installing the package::

    python scripts/export_checkpoint.py models/model.pt --dst brats_unet_128_export.pt
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, for `wdm_bundle`

import fire  # noqa: E402

from wdm_bundle.networks.reference_checkpoint import export_checkpoint_file  # noqa: E402


def export_checkpoint(
    src: str,
    dst: str,
    key: str = "ema",
    config: str | None = None,
    overwrite: bool = False,
) -> str:
    """Write the ``key`` weights of bundle file ``src`` as a bare reference ``state_dict`` to ``dst``.

    The network must be a `WaveletDiffusionUNet` around a reference backbone (`WDMUNet` or
    `WavUNet` with a published configuration); the reference ``UNetModel`` / ``WavUNetModel``
    loads the result with ``load_state_dict(torch.load(dst), strict=True)``. Refuses to overwrite
    ``dst`` unless ``--overwrite true``.

    Example::

        python scripts/export_checkpoint.py models/model.pt --dst brats_unet_128_export.pt
        python scripts/export_checkpoint.py models/model.pt --dst raw.pt --key model --config wdm_unet_128

    Args:
        src: bundle weight file (``{"model", "ema", "iteration"}``) or a bare bundle state_dict.
        dst: reference ``.pt`` file to write.
        key: ``ema`` (default) or ``model``.
        config: one of wdm_unet_128, wdm_unet_256, wdm_wavunet_128, wdm_wavunet_256, cwdm_unet;
            default: detected.
        overwrite: replace an existing ``dst``.

    Returns:
        The configuration name.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return export_checkpoint_file(src, dst, key=key, config=config, overwrite=overwrite)


if __name__ == "__main__":
    fire.Fire(export_checkpoint)
