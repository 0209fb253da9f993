"""Configs are layers without dead keys, and handlers are addressed by name.

Every config combination the docs show is run here (ConfigWorkflow: initialize, run, finalize, with the engines'
``run`` stubbed so nothing trains), and every key of every file in it must be read: resolved itself or as part of
a resolved parent, or read by `ConfigWorkflow.check_properties`.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.utils import ID_SEP_KEY

from wdm_bundle.engines import atomic_save

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: every documented combination, the task of the workflow, and the overrides that keep it small
TRAIN_SMALL = {"num_iterations": 2, "epoch_length": 2, "cache_rate": 0.0, "num_workers": 0}
REFERENCE_SMALL = {"pad_crop_size": [32, 32, 32], "image_size": [32, 32, 32], "batch_size": 1}
COMBINATIONS = {
    ("train.json",): ("train", {"image_size": [32, 32, 32], "pad_crop_size": None}),
    ("train.json", "demo.json"): ("train", {}),
    ("train.json", "multi_gpu_train.json"): ("train", {"image_size": [32, 32, 32], "pad_crop_size": None}),
    ("train.json", "demo.json", "multi_gpu_train.json"): ("train", {}),
    ("train.json", "train_cwdm.json"): ("train", {"pad_crop_size": None}),
    ("train.json", "train_cwdm.json", "demo.json"): ("train", {}),
    ("train.json", "train_inpaint.json", "demo.json"): ("train", {}),
    ("train.json", "train_label2image.json", "demo.json"): ("train", {}),
    ("train_segmentation.json", "demo_segmentation.json"): ("train", {}),
    ("train.json", "train_cwdm.json", "multi_gpu_train.json"): ("train", {"pad_crop_size": None}),
    ("train.json", "train_cwdm.json", "cwdm_unet_backbone.json"): (
        "train",
        {"pad_crop_size": [32, 32, 32], "target_contrast": "t2f"},
    ),
    ("train.json", "ddpm_image_space.json"): ("train", {"image_size": [32, 32, 32], "pad_crop_size": None}),
    ("train.json", "wdm_unet_128.json"): ("train", REFERENCE_SMALL),
    ("train.json", "wdm_unet_256.json"): ("train", {**REFERENCE_SMALL, "image_size": [64, 64, 64]}),
    ("train.json", "wdm_wavunet_128.json"): ("train", {**REFERENCE_SMALL, "image_size": [64, 64, 64]}),
    ("train.json", "wdm_wavunet_256.json"): ("train", {**REFERENCE_SMALL, "image_size": [128, 128, 128]}),
    ("inference.json",): ("infer", {}),
    ("inference.json", "multi_gpu_inference.json"): ("infer", {}),
    ("inference_cwdm.json",): ("infer", {}),
    ("evaluate.json",): (None, {}),
    ("evaluate_synthesis.json",): (None, {}),
    ("evaluate_inpaint.json",): (None, {}),
    ("evaluate_downstream.json",): (None, {}),
    ("inference_label2image.json",): ("infer", {"allow_empty_labels": True}),
    ("inference_inpaint.json",): ("infer", {}),
    ("inference.json", "inference_exported.json"): ("infer", {}),
}
#: keys read by another documented entry point than `run`
READ_ELSEWHERE = {"inference_exported.json": {"export_net"}}  # `monai.bundle ckpt_export export_net` (tests/export)


def documented_combinations() -> set[tuple[str, ...]]:
    """The config lists of the docs' commands: ``--config_file "['configs/a.json','configs/b.json']"``,
    ``--config_file configs/a.json`` and the MONAI Label app's ``--conf ..._configs a.json,b.json``."""
    found = set()
    for doc in DOCS:
        text = doc.read_text()
        for group in re.findall(r"--config_file\s+\"?\[([^\]]*)\]", text):
            paths = [p.strip(" '\"") for p in group.split(",")]
            found.add(tuple(Path(p).name for p in paths if p.startswith("configs/")))  # not e.g. models/record.json
        for single in re.findall(r"--config_file\s+([\w/.-]+\.json)", text):
            found.add((Path(single).name,))
        for group in re.findall(r"--conf\s+\w+_configs\s+([\w/.,-]+)", text):
            found.add(tuple(Path(p).name for p in group.split(",")))
    return found


def test_documented_combinations_are_the_tested_ones():
    documented = documented_combinations()
    assert documented, "no config combination found in the docs"
    assert documented - set(COMBINATIONS) == set(), "documented but not checked for dead keys"
    assert set(COMBINATIONS) - documented == set(), "checked but not documented"


def _ids(config, prefix=""):
    """The ids of a config file's settings (sub-ids joined with ``::``): components, expressions and values;
    plain dicts and lists only through their items (a container is read when its items are)."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        key = str(key)
        if key.startswith("_") or key in ("imports", "+imports", "initialize", "+initialize", "finalize", "+finalize"):
            continue  # comments, `_target_`-style keys, imports and the workflow's own entry lists
        uid = (f"{prefix}::{key}" if prefix else key.lstrip("+")).replace("#", "::").replace(ID_SEP_KEY, "::")
        if isinstance(value, dict) and "_target_" not in value or isinstance(value, list):
            yield from _ids(value, uid)
        else:
            yield uid


def _unread(wf: ConfigWorkflow, files) -> list[str]:
    resolved = set(wf.parser.ref_resolver.resolved_content)
    properties = {p.get("id") for p in wf.properties.values()} if wf.properties else set()
    resolved |= {p.replace("#", "::") for p in properties if p}
    resolved |= {"run", "bundle_root"}  # run by ConfigWorkflow itself; the zoo's root of every relative path
    unread = []
    for f in files:
        for uid in _ids(ConfigParser.load_config_file(str(ROOT / "configs" / f))):
            parts = uid.split("::")
            if uid in READ_ELSEWHERE.get(f, ()):
                continue
            if not any("::".join(parts[:n]) in resolved for n in range(1, len(parts) + 1)):
                unread.append(f"{f}: {uid}")
    return unread


@pytest.fixture
def no_engine_runs(monkeypatch):
    """Resolve `run` without training or sampling: every engine's and runner's run() does nothing."""
    import ignite.engine

    import wdm_bundle.engines as engines
    import wdm_bundle.engines.label_generation as label_generation
    import wdm_bundle.reports as reports
    import wdm_bundle.reports.downstream as downstream

    monkeypatch.setattr(ignite.engine.Engine, "run", lambda self, *a, **k: None)
    monkeypatch.setattr(engines.VolumeGenerator, "run", lambda self, *a, **k: [])
    monkeypatch.setattr(engines.ContrastSynthesizer, "run", lambda self, *a, **k: [])
    monkeypatch.setattr(engines.Inpainter, "run", lambda self, *a, **k: [])
    monkeypatch.setattr(reports.GenerationEvaluator, "run", lambda self, *a, **k: {})
    monkeypatch.setattr(reports, "compare_synthesis", lambda *a, **k: {})
    monkeypatch.setattr(reports, "evaluate_inpainting", lambda *a, **k: {})
    monkeypatch.setattr(downstream, "evaluate_downstream", lambda *a, **k: {})
    monkeypatch.setattr(label_generation.LabelImageGenerator, "run", lambda self, *a, **k: [])


@pytest.fixture
def single_process_group(monkeypatch):
    """torchrun's environment for one process, so the multi-GPU layers run in this process (gloo)."""
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29531",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }.items():
        monkeypatch.setenv(key, value)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _save_model(repo_root, demo_data, configs, path):
    """A model.pt as training writes it (weights + record) for the small demo network of ``configs``."""
    parser = ConfigParser()
    parser.read_config([str(repo_root / "configs" / c) for c in configs])
    parser.update({"dataset_dir": str(demo_data), "bundle_root": str(path.parent)})
    state = parser.get_parsed_content("network_def").state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"model": state, "ema": state, "iteration": 2, "record": parser.get_parsed_content("record")}, path)


def _overrides(files, task, demo_data, tmp_path):
    if task == "train":
        return {"bundle_root": str(tmp_path / "bundle"), "dataset_dir": str(demo_data), **TRAIN_SMALL}
    root = tmp_path / "bundle"
    if "inference_cwdm.json" in files:
        _save_model(
            ROOT, demo_data, ["train.json", "train_cwdm.json", "demo.json"], root / "models" / "unified" / "model.pt"
        )
        return {"bundle_root": str(root), "dataset_dir": str(demo_data)}
    if "inference.json" in files:
        _save_model(ROOT, demo_data, ["train.json", "demo.json"], root / "models" / "model.pt")
    if "inference_label2image.json" in files:
        label2image = ["train.json", "train_label2image.json", "demo.json"]
        _save_model(ROOT, demo_data, label2image, root / "models" / "label2image" / "model.pt")
        return {"bundle_root": str(root), "input_dir": str(demo_data), "output_dir": str(tmp_path / "synthetic")}
    if "inference_inpaint.json" in files:
        inpaint = ["train.json", "train_inpaint.json", "demo.json"]
        _save_model(ROOT, demo_data, inpaint, root / "models" / "inpainting" / "model.pt")
    if "inference_exported.json" in files:  # the documented export command
        subprocess.run(
            [
                sys.executable,
                "scripts/export_checkpoint.py",
                str(root / "models" / "model.pt"),
                "--dst",
                str(root / "models" / "model.ts"),
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return {
        "bundle_root": str(root),
        "real_dir": str(demo_data),
        "fake_dir": str(demo_data),
        "input_dir": str(demo_data),
        "gt_dir": str(demo_data),
        "pred_dir": str(demo_data),
        "train_datalist": str(demo_data / "datalist.json"),
    }


@pytest.mark.parametrize("files", sorted(COMBINATIONS), ids=lambda f: "+".join(n[:-5] for n in f))
def test_every_key_is_read(files, demo_data, tmp_path, no_engine_runs, single_process_group):
    task, small = COMBINATIONS[files]
    override = {**_overrides(files, task, demo_data, tmp_path), **small}
    wf = ConfigWorkflow(config_file=[str(ROOT / "configs" / f) for f in files], workflow_type=task, **override)
    wf.initialize()
    assert wf.check_properties() in ([], None)
    wf.run()
    wf.finalize()
    unread = _unread(wf, files)
    assert unread == [], "\n".join(unread)


def _handlers(demo_data, tmp_path, configs, rank, insert):
    """The trainer's handlers for a rank of a 2-process run (no process group needed), optionally with one more
    handler inserted in front of the named ones."""
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / c) for c in configs])
    parser.update(
        {
            "rank": rank,
            "network": "$@network_def.to(@device)",
            "device": "$torch.device('cpu')",
            "dataset_dir": str(demo_data),
            "bundle_root": str(tmp_path),
            "num_workers": 0,
        }
    )
    if insert:
        parser["train"]["handler"] = {
            "inserted": {"_target_": "ignite.handlers.TerminateOnNan"},
            **parser["train"]["handler"],
        }
    handlers = parser.get_parsed_content("train#trainer#train_handlers")
    if insert:
        assert type(handlers[0]).__name__ == "TerminateOnNan"
        handlers = handlers[1:]
    return parser, [(type(h).__name__, getattr(h, "enabled", None)) for h in handlers], handlers


@pytest.mark.parametrize("cwdm", [False, True], ids=["wdm", "cwdm"])
def test_inserting_a_handler_changes_no_rank_gating_or_previews(cwdm, demo_data, tmp_path):
    configs = ["train.json", *(["train_cwdm.json"] if cwdm else []), "demo.json", "multi_gpu_train.json"]
    expected = {
        0: [
            ("IterationBudget", None),
            ("EMAHandler", None),
            ("TrainingCheckpointer", True),
            ("StatsHandler", None),
            ("TensorBoardStatsHandler", None),
            ("PreviewSampler", True),
            ("StopOnNonFiniteLoss", None),
        ],
        1: [
            ("IterationBudget", None),
            ("EMAHandler", None),
            ("TrainingCheckpointer", False),
            ("PreviewSampler", False),
            ("StopOnNonFiniteLoss", None),
        ],
    }
    for rank in (0, 1):
        for insert in (False, True):
            parser, summary, handlers = _handlers(demo_data, tmp_path / f"{rank}{insert}", configs, rank, insert)
            assert summary == expected[rank], (rank, insert)
            preview = next(h for h in handlers if type(h).__name__ == "PreviewSampler")
            if cwdm:  # the cWDM previews sample from the training set with the training batch preparation
                assert preview.dataset is parser.get_parsed_content("train#dataset")
                assert preview.prepare_batch is parser.get_parsed_content("train#prepare_batch")
