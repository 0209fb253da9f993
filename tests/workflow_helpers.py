"""Helpers shared by the workflow tests (``tests/`` is on ``sys.path`` via ``conftest.py``)."""

import torch
from monai.bundle import ConfigWorkflow


def workflow(repo_root, configs, workflow_type, **override):
    """An initialised `ConfigWorkflow` on ``configs/<name>`` files (merged in order) with ``override``."""
    wf = ConfigWorkflow(
        config_file=[str(repo_root / "configs" / c) for c in configs],
        meta_file=str(repo_root / "configs" / "metadata.json"),
        logging_file=str(repo_root / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **override,
    )
    wf.initialize()
    return wf


def run_workflow(repo_root, configs, workflow_type, check_properties=False, **override):
    """`workflow`, then (optionally ``check_properties() == []``) ``run()`` and ``finalize()``."""
    wf = workflow(repo_root, configs, workflow_type, **override)
    if check_properties:
        assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return wf


def error_messages(exc):
    """All messages of an exception chain (MONAI wraps errors raised while instantiating components)."""
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


def max_differences(a, b, prefix=""):
    """``{name: max |a - b|}`` over the tensors and numbers of two nested state dicts of the same layout."""
    if isinstance(a, torch.Tensor):
        if a.shape != b.shape:
            return {prefix: float("inf")}
        return {prefix: 0.0 if torch.equal(a, b) else (a.double() - b.double()).abs().max().item()}
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (prefix, a.keys(), b.keys())
        return {k: v for key in a for k, v in max_differences(a[key], b[key], f"{prefix}/{key}").items()}
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), prefix
        return {k: v for i, (x, y) in enumerate(zip(a, b)) for k, v in max_differences(x, y, f"{prefix}/{i}").items()}
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return {prefix: abs(a - b)}
    return {prefix: 0.0 if a == b else float("inf")}


def assert_same_training(straight, resumed):
    """The resumed run's losses (``{iteration: loss}``) equal the straight run's, and model, EMA and optimizer
    (Adam moments and step counts) are bit-identical (`torch.equal`)."""
    last = max(straight["loss"])
    assert max(resumed["loss"]) == last and sorted(resumed["loss"]) == list(range(min(resumed["loss"]), last + 1))
    assert {i: straight["loss"][i] for i in resumed["loss"]} == resumed["loss"]
    for key in ("model", "ema", "optimizer"):
        diff = max_differences(straight[key], resumed[key], key)
        assert max(diff.values()) == 0, (key, max(diff.values()), {k: v for k, v in diff.items() if v})
    steps = [s["step"] for s in resumed["optimizer"]["state"].values()]
    assert steps and all(int(s) == last for s in steps)
