"""Does synthetic data train a tumour segmenter? Real only, synthetic only, real + synthetic, on held-out real cases.

Runs from the repository root without installing the package. Train the label-conditioned model first
(``configs/train_label2image.json``), then::

    python scripts/synthetic_data_experiment.py --datalist demo_data/datalist.json --generator_bundle label2image_demo \\
        --output_dir eval/synthetic_experiment --num_real 8 --num_synthetic 24

Writes ``experiment.md``/``.json`` (the table), ``per_case.csv`` and ``experiment.png`` (Dice per arm and region)
into ``output_dir``; see `wdm_bundle.reports.synthetic_experiment` and docs/segmentation.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, for `wdm_bundle`

import fire  # noqa: E402

from wdm_bundle.reports.synthetic_experiment import SEGMENTATION_CONFIGS, run_synthetic_data_experiment  # noqa: E402
from wdm_bundle.utils import as_bool  # noqa: E402


def synthetic_data_experiment(
    datalist: str,
    generator_bundle: str,
    output_dir: str = "eval/synthetic_experiment",
    num_real: int = 8,
    num_synthetic: int = 24,
    seed: int = 0,
    num_inference_steps: int = 20,
    upper_bound: bool = True,
    segmentation_configs=SEGMENTATION_CONFIGS,
    num_iterations: int | None = None,
    overwrite: bool = False,
) -> str:
    """Train a segmenter per arm (real, synthetic, real + synthetic and, with ``upper_bound``, as many real cases)
    and score each on the datalist's test cases; return the table (Markdown).

    Args:
        datalist: a BraTS-layout datalist (``training`` and ``test`` lists of the four contrasts and ``seg``).
        generator_bundle: bundle root holding ``models/label2image/model.pt`` (a label-conditioned model).
        num_real: real training cases of the ``real`` arms; num_synthetic: synthetic pairs added to them.
        segmentation_configs: the segmenter's config files (default: train_segmentation.json + demo_segmentation.json).
        num_iterations: override of the segmenter's training budget (every arm alike).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    configs = [segmentation_configs] if isinstance(segmentation_configs, str) else list(segmentation_configs)
    overrides = {} if num_iterations is None else {"num_iterations": int(num_iterations)}
    summary = run_synthetic_data_experiment(
        datalist,
        generator_bundle,
        output_dir,
        num_real=int(num_real),
        num_synthetic=int(num_synthetic),
        seed=int(seed),
        num_inference_steps=int(num_inference_steps),
        upper_bound=as_bool(upper_bound, "upper_bound"),
        segmentation_configs=configs,
        segmentation_overrides=overrides,
        overwrite=as_bool(overwrite, "overwrite"),
    )
    return (Path(output_dir) / "experiment.md").read_text() if summary else ""


if __name__ == "__main__":
    fire.Fire(synthetic_data_experiment)
