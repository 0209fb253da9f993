"""`scripts/benchmark.py --quick`: the harness runs every section and writes the report, plot and JSON.

Checks structure only, never timings (the CI machine is shared and timings are noise).
"""

import json
import subprocess
import sys

import pytest
import torch
from benchmarking import measure as bench_measure
from benchmarking import studies as bench_studies
from benchmarking import targets as bench
from PIL import Image

pytestmark = pytest.mark.slow

SECTIONS = [
    "## Targets",
    "## Wavelet transform",
    "## Training step",
    "## Sampling time per volume",
    "## Peak memory",
    "### Wavelet level 2",
    "## How close to the machine",
    "## Training objectives: iterations to the paper's quality",
    "## Sample quality of fast samplers",
    "## Samplers with four network calls",
    "## Wavelet level 2 vs level 1",
    "## Reproduce",
]


def test_quick_benchmark_writes_report(repo_root, demo_data, tmp_path):
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        str(repo_root / "scripts" / "benchmark.py"),
        "--quick",
        "--output_dir",
        str(out),
        "--demo_data",
        str(demo_data),
        "--work_dir",
        str(tmp_path / "work"),
        "--threads",
        "1",
    ]  # tiny sizes
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]

    md = (out / "performance.md").read_text()
    positions = [md.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert "Quick mode" in md and "![performance](images/performance.png)" in md
    for sampler in ("DDPM-50", "DDIM-10", "RFlow-30"):
        assert f"| {sampler} |" in md

    data = json.loads((out / "performance.json").read_text())
    assert data["quick"] is True and data["machine"]["device"] == "cpu"
    assert [r["size"] for r in data["wavelet"]] == [16, 32]
    assert all(r["dwt"] > 0 and r["pywt_dwt"] > 0 and r["copy"] > 0 for r in data["wavelet"])
    assert all(r["fill"] > 0 for r in data["wavelet"])
    assert all(r["wavelet_memory"] < r["image_memory"] for r in data["training"])  # bytes are deterministic
    assert [r["sampler"] for r in data["sampling"]] == ["DDPM-50", "DDIM-50", "DDIM-10", "RFlow-30"]
    mem = data["memory"]
    assert mem["training"]["checkpointing"] < mem["training"]["plain"]
    assert {"fp32", "bf16"} <= set(mem["inference"][0])
    quality = data["quality"]["rows"]
    assert [(r["sampler"], r["model"]) for r in quality] == [
        ("DDPM-50", "ddpm"),
        ("DDIM-50", "ddpm"),
        ("DDIM-10", "ddpm"),
        ("RFlow-30", "rflow"),
        ("RFlow-30", "rflow_x0"),
    ]
    assert "| RFlow-30 | rflow_x0 |" in md and "RFlow-30 (rflow_x0) quality within 10%" in md
    assert all(r["mean_image_rmse"] >= 0 and r["ms_ssim_fake"] is not None for r in quality)
    assert len(data["targets"]) >= 6 and all({"target", "measured", "met"} <= set(t) for t in data["targets"])

    assert "failed" not in data and set(data["section_seconds"]) == set(bench_measure.SECTIONS)
    levels = [r for r in mem["inference"] if r.get("levels") == 2]
    assert levels and levels[0]["fp32"] > 0
    eff = data["efficiency"]
    assert eff["conv"]["fraction"] > 0 and 0 < eff["wrapper"]["share"] < 1
    objectives = data["objectives"]
    assert [r["name"] for r in objectives["rows"]] == [name for name, _ in bench_studies.OBJECTIVES[:2]]
    paper = objectives["rows"][0]
    assert [p["iterations"] for p in paper["curve"]] == [3, 6] and paper["reached_at"] in (3, 6)
    assert objectives["rows"][1]["overrides"] == {"loss_weighting": "min_snr"}
    state = torch.load(tmp_path / "work" / "objectives" / "option_1" / "models" / "model.pt", weights_only=True)
    assert state["record"]["loss_weighting"] == "min_snr" and "ddpm_timestep_draw" not in state["record"]
    assert (out / "images" / "performance_objectives.png").is_file()
    assert [r["levels"] for r in data["levels"]["rows"]] == [1, 2] and data["levels"]["size"] == 32
    assert len(data["fewstep"]["rows"]) == 3 and (out / "images" / "performance_fewstep.png").is_file()
    assert any(t["target"].startswith("Half the training iterations") for t in data["targets"])

    png = Image.open(out / "images" / "performance.png")
    assert png.size[0] > 1000 and png.size[1] > 300
    for objective in ("ddpm", "rflow", "rflow_x0"):
        state = torch.load(tmp_path / "work" / f"train_{objective}" / "models" / "model.pt", weights_only=True)
        assert state["diffusion"] == objective
    assert "## Consistency with the previous run" not in md

    # a rerun into the same folder compares itself with the run it replaces
    rerun = subprocess.run(cmd + ["--sections", "wavelet"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    md2 = (out / "performance.md").read_text()
    section = md2[md2.index("## Consistency with the previous run") : md2.index("## Reproduce")]
    assert data["date"] in section and "| dwt 32³ |" in section and "Times: 14 quantities" in section
    assert "Ratios within a run: 4 quantities" in section and "| PyWavelets / ours 32³ |" in section
    assert json.loads((out / "performance.json").read_text())["previous"]["date"] == data["date"]

    # the report can be rewritten from its JSON without measuring: same text
    again = tmp_path / "again"
    cmd = [
        sys.executable,
        str(repo_root / "scripts" / "benchmark.py"),
        "--report_from",
        str(out / "performance.json"),
        "--output_dir",
        str(again),
    ]
    rewrite = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rewrite.returncode == 0, rewrite.stderr[-3000:]
    assert (again / "performance.md").read_text() == md2 and (again / "images" / "performance.png").is_file()
    missing = subprocess.run(cmd[:3] + [str(tmp_path / "nope.json")], cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode != 0 and "nope.json' is not a file" in missing.stderr


def test_quality_target_counts_only_worse_results():
    ref = {"sampler": "DDPM-1000", "mean_image_rmse": 0.2, "histogram_w1": 0.1, "ms_ssim_fake": 0.8, "fid": None}
    better = {**ref, "sampler": "DDIM-50", "mean_image_rmse": 0.1, "histogram_w1": 0.05, "ms_ssim_fake": 0.84}
    devs = bench.quality_deviations(better, ref)
    assert devs["mean_image_rmse"] == 0 and devs["histogram_w1"] == 0 and abs(devs["ms_ssim_fake"] - 0.05) < 1e-9
    assert "fid" not in devs
    worse = {**ref, "sampler": "RFlow-30", "histogram_w1": 0.115, "ms_ssim_fake": 0.68}
    devs = bench.quality_deviations(worse, ref)
    assert abs(devs["histogram_w1"] - 0.15) < 1e-9 and abs(devs["ms_ssim_fake"] - 0.15) < 1e-9
    rows = bench.targets({"quality": {"rows": [ref, better, worse]}})
    assert [(ok, m) for _, m, ok in rows] == [(True, "worst: MS-SSIM 5% apart"), (False, "worst: MS-SSIM 15% apart")]


def test_fast_sampler_target_needs_speed_and_quality_from_one_sampler():
    ref = {"sampler": "DDPM-1000", "mean_image_rmse": 0.2, "histogram_w1": 0.1, "ms_ssim_fake": 0.8, "fid": None}
    quality = {"rows": [ref, {**ref, "sampler": "DDIM-50"}, {**ref, "sampler": "RFlow-30", "histogram_w1": 0.2}]}
    sampling = [
        {"sampler": "DDPM-1000", "time": 100.0},
        {"sampler": "DDIM-50", "time": 5.3},
        {"sampler": "RFlow-30", "time": 3.0},
    ]
    rows = {t: (m, ok) for t, m, ok in bench.targets({"sampling": sampling, "quality": quality})}
    assert rows["DDIM-50 sampling ≥20× faster than DDPM-1000"] == ("18.9×", False)
    assert rows["RFlow-30 sampling ≥20× faster than DDPM-1000"] == ("33.3×", True)
    # the fast one is not good and the good one is not fast: not met
    assert rows["DDIM-50 or RFlow-30: one sampler ≥20× faster and within 10% in quality"] == (
        "DDIM-50 misses speed; RFlow-30 misses quality",
        False,
    )
    sampling[1]["time"] = 4.9
    rows = {t: (m, ok) for t, m, ok in bench.targets({"sampling": sampling, "quality": quality})}
    assert rows["DDIM-50 or RFlow-30: one sampler ≥20× faster and within 10% in quality"] == (
        "DDIM-50 (the other: RFlow-30 misses quality)",
        True,
    )
    # a second RFlow-30 model (x0 output) that is good enough makes RFlow-30 pass; each model gets its own row
    sampling[1]["time"] = 5.3
    quality["rows"][2]["model"] = "rflow"
    quality["rows"].append({**ref, "sampler": "RFlow-30", "model": "rflow_x0", "histogram_w1": 0.105})
    rows = {t: (m, ok) for t, m, ok in bench.targets({"sampling": sampling, "quality": quality})}
    assert rows["RFlow-30 quality within 10% of DDPM-1000 on every metric"] == ("worst: histogram W1 100% worse", False)
    assert rows["RFlow-30 (rflow_x0) quality within 10% of DDPM-1000 on every metric"] == (
        "worst: histogram W1 5% worse",
        True,
    )
    assert rows["DDIM-50 or RFlow-30: one sampler ≥20× faster and within 10% in quality"] == (
        "RFlow-30 (the other: DDIM-50 misses speed)",
        True,
    )
    numbers = bench.key_numbers({"quality": quality})
    assert numbers["RFlow-30 histogram W1"][0] == 0.2 and numbers["RFlow-30 (rflow_x0) histogram W1"][0] == 0.105


def test_wavelet_target_states_every_reading_of_the_copy():
    row = {
        "size": 256,
        "dwt_idwt": 0.027,
        "copy": 0.030,
        "copy_alloc": 0.009,
        "dwt_into": 0.008,
        "idwt_into": 0.008,
        "copy_into": 0.007,
        "dwt": 0.014,
        "idwt": 0.013,
    }
    ((target, measured, ok),) = bench.targets({"wavelet": [dict(row, size=128), row]})
    assert target == "DWT+IDWT at 256³ within 2× of a tensor copy"
    assert (
        measured
        == (
            "0.9× the copy (`clone`); 3.0× a copy into memory allocated like the outputs; "
            "into existing memory 2.3× a `copy_`"
        )
        and ok
    )
    ((_, measured, ok),) = bench.targets({"wavelet": [dict(row, copy=0.014)]})
    assert measured.startswith("1.9× the copy") and ok
    ((_, measured, ok),) = bench.targets({"wavelet": [dict(row, copy=0.013)]})  # every reading above 2×
    assert measured.startswith("2.1× the copy") and not ok
    old = {k: v for k, v in row.items() if k != "copy_alloc"}  # a report saved before the row existed
    ((_, measured, ok),) = bench.targets({"wavelet": [old]})
    assert measured == "0.9× the copy (`clone`); into existing memory 2.3× a `copy_`" and ok


def test_scaling_and_objective_targets():
    mem = {
        "inference": [
            {"size": 256, "net": "paper256", "space": "wavelet", "fp32": 8.0e9},
            {"size": 512, "net": "paper256", "space": "wavelet", "levels": 2, "fp32": 8.3e9},
        ],
        "checkpointed_training": [{"size": 256, "net": "paper256", "total": 16.4e9, "static": 1.8e9}],
    }
    rows = {t: (m, ok) for t, m, ok in bench._scaling_targets(mem)}
    level = "fp32 denoising step at 512³, wavelet level 2 (paper256 U-Net), ≤1.05× the level-1 256³ step"
    assert rows[level] == ("8.30 GB vs 8.00 GB: 1.038×", True)
    train = "Training step at 256³ (paper256, batch 1, fp32, activation checkpointing) ≤16 GB"
    assert rows[train] == ("16.40 GB", False)

    def row(name, at):
        return {"name": name, "reached_at": at, "curve": []}

    study = {"reference_iterations": 1500, "cap": 750, "rows": [row("paper", 1000), row("a", None), row("b", 750)]}
    target, measured, ok = bench._objective_target(study)
    assert measured == "best: b, 0.50× (paper: itself 0.67×)" and ok
    study["rows"][2]["reached_at"] = None
    assert bench._objective_target(study)[1:] == ("no option reached it within 750 iterations", False)
