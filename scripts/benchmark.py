"""Measure WDM against the image-space 3D DDPM and PyWavelets; write a Markdown report, a PNG and the raw JSON.

Runs from the repository root without installing the package::

    python scripts/benchmark.py                         # full run: docs/performance.md, docs/images/performance.png
    python scripts/benchmark.py --quick --output_dir /tmp/bench   # harness check: tiny sizes, about a minute
    python scripts/benchmark.py --suite gpu                     # paper settings on one GPU: docs/performance_gpu.md

Every time is the median of repeated runs; every ratio compares two numbers measured in the same
run on the same machine. Sections: wavelet transform speed, training step (time, memory) of WDM
vs the image-space DDPM with the same U-Net, per-sample sampling time per sampler, peak memory of
a denoising step (fp32, bf16 autocast; 512^3 at wavelet level 2) and of a training step with activation
checkpointing off and on (256^3 on), how close the denoiser gets to its convolutions' speed and what the wrapper
costs, iterations each training objective needs to reach the paper's quality, sample quality of fast samplers
against DDPM-1000, samplers with at most 4 network calls, and wavelet level 2 against level 1 on 64^3 demo data.
A section that fails is reported as failed, the others still run, and the exit status is non-zero.

The measuring is in ``scripts/benchmarking/`` (`timing`: time and memory helpers and workloads,
`measure`: the sections, `efficiency`: FLOP/s and wrapper share, `studies`: the objective and wavelet-level
training studies, `fewstep`: samplers with few calls, `targets`: targets and rerun comparison, `report` and
`report_studies`: Markdown, plots, JSON; `gpu_suite`: the ``--suite gpu`` rows and report).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # repo root, for `wdm_bundle`

import fire  # noqa: E402
import torch  # noqa: E402
from benchmarking import gpu_suite, measure, report, timing  # noqa: E402  (scripts/ is on sys.path: this file's folder)

from wdm_bundle.utils import as_bool  # noqa: E402

logger = logging.getLogger("benchmark")
#: the default ``--sections``: every section
ALL_SECTIONS = ",".join(measure.SECTIONS)


def _settings(quick: bool, device: str, quality_iterations: int | None) -> dict:
    cfg = (
        dict(measure.QUICK)
        if quick
        else {**measure.FULL, **(measure.GPU if torch.device(device).type == "cuda" else {})}
    )
    if quality_iterations is not None:
        cfg["quality_iterations"] = int(quality_iterations)
    return cfg


def _previous(previous: str | None, json_path: Path, quick: bool) -> dict | None:
    """The run to compare with: ``previous``, else the report being replaced; only a run of the same mode."""
    prev_path = Path(previous) if previous else json_path
    if previous and not prev_path.is_file():
        raise FileNotFoundError(f"--previous '{previous}' is not a file.")
    if not prev_path.is_file():
        return None
    prev = json.loads(prev_path.read_text())
    if prev.get("quick") != quick:
        return None
    prev.pop("previous", None)  # compare with that run only, not with its own predecessor
    return prev


def _new_results(quick: bool, device: str, cfg: dict, chosen: list[str], sections: str) -> dict:
    """What a run records before measuring: mode, machine, settings, the command that started it, the date."""
    command = (
        "python scripts/benchmark.py" + " ".join(f" {a}" for a in sys.argv[1:])
        if sys.argv[0].endswith("benchmark.py")
        else f"benchmark(quick={quick}, sections={sections!r})"
    )
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {
        "quick": quick,
        "machine": timing.machine_info(device),
        "settings": cfg,
        "command": command,
        "date": date,
        "sections": chosen,
        "json_name": "performance.json",
    }


def benchmark(
    quick: bool = False,
    output_dir: str | None = None,
    device: str | None = None,
    sections: str = ALL_SECTIONS,
    demo_data: str | None = None,
    ddpm_bundle: str | None = None,
    rflow_bundle: str | None = None,
    rflow_x0_bundle: str | None = None,
    quality_iterations: int | None = None,
    med3d_weights: str | None = None,
    work_dir: str | None = None,
    threads: int | None = None,
    overwrite: bool = True,
    previous: str | None = None,
    report_from: str | None = None,
    suite: str = "cpu",
    gpu_budget_s: float = 480.0,
) -> str:
    """Run the benchmark and write ``performance.md``, ``images/performance.png`` and ``performance.json``.

    Example::

        python scripts/benchmark.py                                  # full run on this machine, into docs/
        python scripts/benchmark.py --quick --output_dir /tmp/bench  # harness check, about a minute
        python scripts/benchmark.py --sections wavelet,sampling      # some sections only
        python scripts/benchmark.py --ddpm_bundle runs/ddpm --rflow_bundle runs/rflow  # reuse trained demo models
        python scripts/benchmark.py --report_from docs/performance.json  # rewrite the report, measure nothing
        python scripts/benchmark.py --suite gpu                      # paper settings on one GPU, about 8 minutes

    Args:
        quick: tiny sizes and few repeats (checks the harness; the numbers mean nothing).
        output_dir: folder of the Markdown and JSON (the PNG goes to ``<output_dir>/images``);
            default ``docs`` (full) or ``eval/benchmark_quick`` (quick).
        device: torch device; default CUDA if available, else CPU.
        sections: comma-separated subset of wavelet, training, sampling, memory, efficiency, objectives, quality,
            fewstep, levels (default: all).
        demo_data: demo data folder for the quality section (default: made in ``work_dir``).
        ddpm_bundle, rflow_bundle, rflow_x0_bundle: bundle roots holding ``models/model.pt`` of demo
            models trained with ``--diffusion ddpm`` / ``rflow`` / ``rflow_x0``; missing ones are
            trained (same budget for all).
        quality_iterations: training iterations of each quality model (full default 1000).
        med3d_weights: MedicalNet resnet_50.pth for FID in the quality section.
        work_dir: scratch folder for trained models and samples (default: a temporary folder).
        threads: torch CPU threads (default: torch's choice).
        overwrite: replace an existing report in ``output_dir``.
        previous: ``performance.json`` of an earlier run to compare with (section "Consistency with
            the previous run"); default: the one being replaced in ``output_dir``, if any.
        report_from: ``performance.json`` of a run: rewrite its Markdown, plot and targets with this
            version of the script (into ``output_dir``, default the JSON's folder) without measuring.
        suite: ``cpu`` (the sections above) or ``gpu``: the paper's settings (128^3/256^3 sampling in fp32, bf16
            and torch.compile, training steps, 512^3 at 2 wavelet levels) within ``gpu_budget_s``, into
            ``performance_gpu.md`` / ``.json`` (``--quick``: tiny net on the CPU, for CI); ``sections`` and the
            quality arguments are then unused.
        gpu_budget_s: time budget of the gpu suite; rows not reached are reported as skipped.

    Returns:
        Path of the written Markdown file.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if report_from:
        return report.rewrite_report(Path(report_from), Path(output_dir) if output_dir else None)
    quick = as_bool(quick, "quick")
    if suite not in ("cpu", "gpu"):
        raise ValueError(f"--suite must be 'cpu' or 'gpu', got {suite!r}.")
    if threads:
        torch.set_num_threads(int(threads))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if suite == "gpu":
        out = Path(output_dir or (REPO / ("eval/benchmark_quick" if quick else "docs")))
        date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python scripts/benchmark.py" + " ".join(f" {a}" for a in sys.argv[1:])
        md_path = gpu_suite.run(quick, out, device, float(gpu_budget_s), as_bool(overwrite, "overwrite"), command, date)
        logger.info(f"wrote {md_path} and its JSON")
        return md_path
    cfg = _settings(quick, device, quality_iterations)
    chosen = measure.parse_sections(sections)
    out = Path(output_dir or (REPO / ("eval/benchmark_quick" if quick else "docs")))
    if (out / "performance.md").exists() and not as_bool(overwrite, "overwrite"):
        raise FileExistsError(f"'{out / 'performance.md'}' exists; pass --overwrite true or another --output_dir.")
    results = _new_results(quick, device, cfg, chosen, sections)
    prev = _previous(previous, out / "performance.json", quick)
    if prev is not None:
        results["previous"] = prev
    start = time.perf_counter()
    bundles = {"ddpm": ddpm_bundle, "rflow": rflow_bundle, "rflow_x0": rflow_x0_bundle}
    results.update(measure.run_sections(chosen, cfg, device, quick, work_dir, demo_data, bundles, med3d_weights))
    results["seconds"] = time.perf_counter() - start
    md_path = report.write_report(results, out)
    logger.info(f"wrote {md_path}, its plot and JSON in {results['seconds'] / 60:.1f} min")
    if results.get("failed"):
        failed = "; ".join(f"{name}: {error}" for name, error in results["failed"].items())
        raise RuntimeError(f"{md_path} is written without the failed sections ({failed}); see the log above.")
    return md_path


if __name__ == "__main__":
    fire.Fire(benchmark)
