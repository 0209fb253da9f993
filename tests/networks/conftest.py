"""Fixtures for the reference-network tests: the published state_dict specifications."""

from pathlib import Path

import pytest

#: Copies of the specification ``<config>_state_dict.tsv``: key, shape "a,b,...", numel per line.
REFERENCE_DATA = Path(__file__).resolve().parent / "reference_data"
SPEC_CONFIGS = ("wdm_unet_128", "wdm_unet_256", "wdm_wavunet_128", "cwdm_unet")


def read_spec(name: str) -> dict[str, tuple[int, ...]]:
    """Reference keys of ``name`` (in order) -> shape; checks numel = prod(shape) on every line."""
    spec = {}
    for line in (REFERENCE_DATA / f"{name}_state_dict.tsv").read_text().splitlines():
        key, shape, numel = line.split("\t")
        spec[key] = tuple(int(s) for s in shape.split(","))
        n = 1
        for s in spec[key]:
            n *= s
        assert n == int(numel), line
    return spec


@pytest.fixture(scope="session")
def reference_spec():
    """``reference_spec(name)`` -> {key: shape} from the published specification."""
    return read_spec
