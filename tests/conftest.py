import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests"):  # tests/workflow_helpers.py is imported by the workflow tests
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
if str(ROOT / "scripts") not in sys.path:  # `benchmarking` (scripts/benchmarking/: the benchmark's measuring code)
    sys.path.append(str(ROOT / "scripts"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """24 synthetic BraTS-layout cases at 32^3 (16 training, 8 test), made once per session."""
    from wdm_bundle.data.demo import make_demo_dataset

    out = tmp_path_factory.mktemp("demo_data")
    make_demo_dataset(str(out), num_cases=24, size=32, num_test=8, seed=0, progress=False)
    return out
