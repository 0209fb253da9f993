"""Score missing-contrast predictions (SSIM/PSNR/MSE, whole volume and brain) against two baselines.

Runs from the repository root without installing the package::

    python scripts/compare_synthesis.py --input_dir pv --gt_dir pv_gt --pred_dir pv_pred \\
        --train_datalist demo_data/datalist.json
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, for `wdm_bundle`

import fire  # noqa: E402

from wdm_bundle.reports.synthesis import compare_synthesis as _compare  # noqa: E402
from wdm_bundle.utils import install_error_report  # noqa: E402


def compare_synthesis(
    input_dir: str,
    gt_dir: str,
    pred_dir: str,
    train_datalist: str,
    output_dir: str | None = None,
    pad_crop_size: list[int] | tuple[int, int, int] | None = None,
) -> str:
    """Compare ``<pred_dir>/<case>-<missing>.nii.gz`` with the ground truth, the oracle best-correlated
    contrast (histogram-matched) and the mean training image; write per_case.csv, summary.json, summary.md.

    Example::

        python scripts/make_pseudo_validation.py --datalist demo_data/datalist.json --output_dir pv --gt_dir pv_gt
        # ... run the cWDM inference on pv into pv_pred ...
        python scripts/compare_synthesis.py --input_dir pv --gt_dir pv_gt --pred_dir pv_pred \\
            --train_datalist demo_data/datalist.json --pad_crop_size "[32,32,32]"

    Args:
        input_dir: pseudo-validation cases (inputs, and missing.json).
        gt_dir: dropped contrasts ``<gt_dir>/<case>/<case>-<missing>.nii.gz``.
        pred_dir: predictions ``<pred_dir>/<case>-<missing>.nii.gz``.
        train_datalist: datalist JSON; its ``training`` cases give the mean-image baseline.
        output_dir: where to write the reports; default ``pred_dir``.
        pad_crop_size: centre-crop/pad every volume to these 3 sizes first.

    Returns:
        Path of the written summary.md (its table is also printed).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = _compare(input_dir, gt_dir, pred_dir, train_datalist, output_dir=output_dir, pad_crop_size=pad_crop_size)
    path = result["files"]["summary_md"]
    print(Path(path).read_text())
    return path


if __name__ == "__main__":
    install_error_report()  # a failure ends with its cause: which folder or file, what is wrong
    fire.Fire(compare_synthesis)
