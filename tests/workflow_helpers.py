"""Helpers shared by the workflow tests (``tests/`` is on ``sys.path`` via ``conftest.py``)."""

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
