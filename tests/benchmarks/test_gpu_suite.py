"""`scripts/benchmark.py --suite gpu --quick` writes the GPU report with every planned row, and the efficiency
measurements (`benchmarking.efficiency`) count FLOPs right and split a denoising step into parts.

Checks structure only, never timings (the CI machine is shared and timings are noise).
"""

import json
import subprocess
import sys

import pytest
import torch
from benchmarking import efficiency, gpu_suite
from torch import nn


@pytest.mark.slow
def test_quick_gpu_suite_writes_report(repo_root, tmp_path):
    out = tmp_path / "gpu"
    cmd = [sys.executable, str(repo_root / "scripts" / "benchmark.py"), "--suite", "gpu", "--quick"]
    cmd += ["--output_dir", str(out), "--threads", "1"]  # tiny tensors: one thread wastes no time spinning
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    md = (out / "performance_gpu.md").read_text()
    sections = ["## The paper's figures beside ours", "## Sampling per volume", "## Training step"]
    sections += ["## Multi-level wavelets", "## Reproduce"]
    positions = [md.index(s) for s in sections]
    assert positions == sorted(positions)
    assert "Quick mode: numbers mean nothing" in md
    for paper in ("| 2.55 GB | 35 s |", "| 7.27 GB | 240 s |", "| 6.51 GB | 235 s |"):
        assert paper in md
    for row in ("| WDM 32³ (tiny) | DDIM-50 | bf16 |", "| WDM 16³ (tiny) | RFlow-30 | compile |"):
        assert row in md
    assert "| WDM 32³, 2 levels (tiny) | DDIM-50 | fp32 |" in md and "| WDM 32³ (tiny) | on |" in md

    data = json.loads((out / "performance_gpu.json").read_text())
    assert data["suite"] == "gpu" and data["quick"] is True and data["machine"]["device"] == "cpu"
    assert {(p["space"], p["size"]) for p in data["paper"]} == {("wavelet", 128), ("wavelet", 256), ("image", 128)}
    planned = gpu_suite.plan(gpu_suite.QUICK)
    assert len(data["rows"]) == len(planned) == 25
    for row, plan in zip(data["rows"], planned):
        assert {k: row[k] for k in plan} == plan
        if "skipped" in row:
            assert row["skipped"]
            continue
        assert row["step_seconds"] > 0 and row["peak_memory"] > 0
        if row["kind"] == "sampling":
            assert row["sample_seconds"] > row["step_seconds"] * (row["steps"] - 1)
            assert (row["precision"] == "compile") == (row.get("compile_seconds", 0) > 0)
    assert "skipped" not in data["rows"][0]  # the default budget covers quick mode but for a very slow machine

    # an existing report is kept unless --overwrite true; an unknown suite is refused
    again = subprocess.run(cmd + ["--overwrite", "false"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode != 0 and "pass --overwrite true" in again.stderr
    assert json.loads((out / "performance_gpu.json").read_text())["date"] == data["date"]
    bad = subprocess.run(cmd + ["--suite", "tpu"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "--suite must be 'cpu' or 'gpu'" in bad.stderr


def test_budget_skips_remaining_rows(tmp_path):
    cfg = {**gpu_suite.QUICK, "settings": [[16, "tiny"]], "image_settings": [], "levels": []}
    rows = gpu_suite.run_gpu_suite(cfg, "cpu", budget_s=0.0)["rows"]
    assert len(rows) == len(gpu_suite.plan(cfg)) and all(r["skipped"] == "time budget" for r in rows)
    md = gpu_suite.markdown_gpu(
        {"quick": True, "machine": {"device": "cpu"}, "settings": cfg, "command": "c", "date": "d", "seconds": 1.0}
        | {"budget_s": 0.0, "rows": rows}
    )
    assert "| WDM 16³ (tiny) | DDPM-1000 | fp32 | skipped: time budget |" in md
    assert "| WDM 16³ (tiny) | off | time budget |" in md


def test_conv_flops_of_one_conv():
    class Net(nn.Module):  # the calling convention of the denoiser: net(x, timesteps=t)
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(6, 10, 3, stride=2, padding=1, groups=2)

        def forward(self, x, timesteps):
            return self.conv(x)

    (call,) = efficiency.record_convs(Net(), torch.randn(2, 6, 8, 8, 8), torch.zeros(2))
    assert call["output"] == (2, 10, 4, 4, 4) and call["groups"] == 2 and call["contiguous"]
    assert call["flops"] == 2 * (6 // 2) * 3**3 * 10 * (2 * 4**3)


def test_conv_efficiency_and_wrapper_share_quick():
    c = efficiency.conv_efficiency("tiny", 16, "cpu", repeats=1)
    assert c["conv_calls"] > 10 and c["conv_gflop"] > 0 and c["forward_seconds"] > 0
    assert c["fraction"] > 0 and c["network_gflops"] > 0 and c["isolated_gflops"] > 0
    assert c["other_modules"]["GroupNorm"] > 0 and len(c["top_non_conv"]) == 5
    assert not any("conv" in r["op"] for r in c["top_non_conv"])
    w = efficiency.wrapper_share("tiny", 16, "cpu", repeats=3)
    assert all(w[k] > 0 for k in ("forward", "clamp", "scheduler", "step"))
    assert 0 < w["share"] < 1 and 0.5 < w["parts_over_step"] < 2  # parts timed apart sum to about the whole
    lines = efficiency.markdown_efficiency({"conv": c, "wrapper": w})
    assert lines[0] == "## How close to the machine" and any("| whole step |" in line for line in lines)
    assert [t for t, _, _ in efficiency.efficiency_targets({"conv": c, "wrapper": w})] == [
        "Denoiser forward reaches ≥80% of the FLOP/s of its convolutions alone",
        "Wavelet transforms, clamp and scheduler ≤5% of a denoising step",
    ]


def test_out_of_memory_row_is_reported(monkeypatch):
    def oom(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(gpu_suite, "_training_row", oom)
    monkeypatch.setattr(gpu_suite, "_sampling_row", lambda *args: {"step_seconds": 1.0})
    cfg = {**gpu_suite.QUICK, "settings": [[16, "tiny"]], "image_settings": [], "levels": []}
    rows = gpu_suite.run_gpu_suite(cfg, "cpu", budget_s=600)["rows"]
    assert [r["skipped"] for r in rows if r["kind"] == "training"] == ["out of memory"] * 2
    assert all(r["step_seconds"] == 1.0 for r in rows if r["kind"] == "sampling")

    def broken(*args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(gpu_suite, "_training_row", broken)  # other errors are not hidden as a skipped row
    with pytest.raises(RuntimeError, match="shape mismatch"):
        gpu_suite.run_gpu_suite(cfg, "cpu", budget_s=600)
