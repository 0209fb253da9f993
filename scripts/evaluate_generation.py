"""FID (Med3D features) and MS-SSIM diversity of generated vs real volumes; writes metrics.json and a PNG.

Runs from the repository root without installing the package::

    python scripts/evaluate_generation.py --real_dir R --fake_dir F --output_dir eval/generation \\
        [--med3d_weights path/to/resnet_50.pth]
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, for `wdm_bundle`

import fire  # noqa: E402

from wdm_bundle.reports.generation import GenerationEvaluator  # noqa: E402


def evaluate_generation(real_dir: str, fake_dir: str, output_dir: str = "eval/generation", **options) -> str:
    """Compare the NIfTI volumes of ``fake_dir`` with those of ``real_dir`` (same shape, same ``data_range``).

    The options are those of :class:`wdm_bundle.reports.GenerationEvaluator`.

    Example::

        python scripts/evaluate_generation.py --real_dir real --fake_dir samples --data_range "[-1,1]" \\
            --med3d_weights resnet_50.pth --max_pairs 1000

    Args:
        real_dir, fake_dir: folders of ``*.nii(.gz)`` volumes.
        output_dir: where metrics.json and real_vs_generated.png go.
        data_range: intensity range of both sets, mapped to [0, 1] (default [-1, 1]).
        med3d_weights: MedicalNet resnet_50.pth; without it FID is skipped (and metrics.json says so).
        device: torch device for Med3D (default cpu).
        max_pairs: MS-SSIM pairs per set (None = all; default 1000).
        seed: seed of the pair subset (default 0).
        ms_ssim_weights: MS-SSIM scale weights (default: 5 scales, or fewer for volumes < 112^3).
        ms_ssim_kernel_size: Gaussian kernel size (default 7), num_preview: volumes per set in the PNG (default 3).
        progress: tqdm bars (default True).

    Returns:
        Path of the written metrics.json (also printed).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = GenerationEvaluator(real_dir, fake_dir, output_dir, **options).run()
    print(json.dumps({k: v for k, v in metrics.items() if k != "files"}, indent=2))
    return metrics["files"]["metrics"]


if __name__ == "__main__":
    fire.Fire(evaluate_generation)
