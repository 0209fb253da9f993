"""Measurement helpers of the benchmark (scripts/benchmarking/timing.py): exact peak memory on CPU, medians,
machine facts."""

import pytest
import torch
from benchmarking import timing


def test_peak_memory_counts_live_tensors_exactly():
    assert timing.peak_memory(lambda: torch.ones(1000, 1000)) == 4_000_000

    def two_of_three():
        a = torch.ones(1000, 1000)
        b = torch.ones(1000, 1000)  # noqa: F841
        del a
        c = torch.ones(1000, 1000)  # noqa: F841

    assert timing.peak_memory(two_of_three) == 8_000_000


def test_memory_figures_repeat_and_wavelet_space_is_smaller():
    """Memory numbers repeat: the first calls in a process differ by < 200 kB (one-time allocations), which is
    noise on the benchmark's MB-GB figures."""
    wdm = [timing.training_step_memory(timing.build_network("tiny"), 16) for _ in range(4)]
    assert max(wdm) - min(wdm) < 200_000, wdm
    image = timing.training_step_memory(timing.build_network("tiny", "image"), 16)
    assert wdm[-1] < 0.5 * image
    step = [timing.denoising_step_memory(timing.build_network("tiny"), 16) for _ in range(2)]
    assert step[0] == pytest.approx(step[1], rel=1e-2)
    assert step[0] > sum(p.numel() * 4 for p in timing.build_network("tiny").parameters())


def test_median_time_and_machine_info():
    calls = []
    out = timing.median_time(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and out["repeats"] == 3 and out["min"] <= out["median"] <= out["max"]
    with pytest.raises(ValueError):
        timing.median_time(lambda: None, repeats=0)
    info = timing.machine_info("cpu")
    assert info["device"] == "cpu" and info["cpu_cores"] >= 1 and info["torch"] == torch.__version__
    with pytest.raises(ValueError, match="unknown network preset"):
        timing.build_network("huge")


def test_wavelet_speed_reports_every_variant():
    out = timing.wavelet_speed(8, repeats=1)
    assert {"copy", "dwt", "idwt", "dwt_idwt", "conv_dwt", "conv_idwt", "pywt_dwt", "pywt_idwt"} <= set(out)
    assert all(v > 0 for v in out.values())
