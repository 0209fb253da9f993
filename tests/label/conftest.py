"""Fixtures for the MONAI Label app: tiny weights from the bundle's configs, a studies folder of BraTS cases."""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from wdm_bundle.engines import LEGACY_RECORDS, atomic_save, recorded_network, validate_record

CONTRASTS = ["t1n", "t1c", "t2w", "t2f"]
SYNTHESIS_CONFIGS = ["configs/inference_cwdm.json"]
GENERATION_CONFIGS = ["configs/inference.json"]
INPAINTING_CONFIGS = ["configs/inference_inpaint.json"]
#: RePaint settings of the tests' inpainting requests: 3 DDIM steps, each of 2 segments redone once: 5 network calls.
INPAINTING_FAST = {"sampler": "ddim", "num_inference_steps": 3, "jump_length": 1, "jump_n_sample": 2}
INPAINT_SHAPE = (31, 29, 27)  # odd, and not the model's 32^3: the app resizes, inpaints and maps back
DEMO_NETWORK = {"channels": [16, 32, 32], "num_res_blocks": 1, "norm_num_groups": 8}  # configs/demo*.json
SHAPE = (30, 28, 26)  # not a multiple of the network's 4: the app pads, samples and crops back


def oblique_affine() -> np.ndarray:
    angle = np.deg2rad(15)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.1, 0.9, 1.3])
    affine[:3, 3] = [-20.5, 31.0, -12.25]
    return affine


def _randomised(net: torch.nn.Module, seed: int) -> dict:
    # why random weights: the U-Net's output conv starts at zero, so an untrained net would give a
    # constant volume; random weights make the output depend on the inputs, the seed and the sampler.
    gen = torch.Generator().manual_seed(seed)
    return {
        k: (torch.randn(v.shape, generator=gen) * 0.1 if v.is_floating_point() else v)
        for k, v in net.state_dict().items()
    }


#: configs/train_inpaint.json's record on top of the WDM one: conditioned on the voided image and the mask.
INPAINTING_RECORD = {
    "task": "inpainting",
    "data_range": [0.0, 1.0],
    "pad_crop_size": None,
    "spacing": [5.0, 6.0, 5.0],
    "network": {"condition_channels": 2},
}


@pytest.fixture(scope="session")
def tiny_models(repo_root, tmp_path_factory) -> Path:
    """``models/unified/model.pt`` (cWDM), ``models/model.pt`` (WDM) and ``models/inpainting/model.pt`` (conditional
    inpainting): the demo config's tiny networks (16, 32, 32 channels) with seeded random weights.

    Why untrained weights are enough: these tests check what the app adds (request routes,
    geometry, errors, the server); learning is tested by tests/configs on the same configs.
    """
    root = tmp_path_factory.mktemp("label_bundle")
    for seed, (task, path, settings) in enumerate(
        [
            ("synthesis", "unified/model.pt", {"pad_crop_size": None, "image_size": None, "placement": "end"}),
            ("generation", "model.pt", {"pad_crop_size": None, "image_size": [32, 32, 32], "spacing": [5.0, 6.0, 5.0]}),
            ("inpainting", "inpainting/model.pt", {**INPAINTING_RECORD, "image_size": [32, 32, 32]}),
        ]
    ):
        base = LEGACY_RECORDS[task if task != "inpainting" else "generation"]  # the demo configs' training record
        network = {**base["network"], **DEMO_NETWORK, **settings.pop("network", {})}  # with their tiny network
        record = validate_record({**base, **settings, "network": network})
        state = _randomised(recorded_network(record), seed)
        atomic_save({"model": state, "ema": state, "record": record}, root / "models" / path)
    return root / "models"


def write_case(studies: Path, demo_case: Path, contrasts, name: str | None = None, shapes=None) -> Path:
    """Copy a demo case into ``studies/<name>/`` with only ``contrasts``, cropped to SHAPE, with an oblique affine."""
    name = name or demo_case.name
    out = studies / name
    out.mkdir(parents=True, exist_ok=True)
    for c in contrasts:
        data = nib.load(demo_case / f"{demo_case.name}-{c}.nii.gz").get_fdata(dtype=np.float32)
        shape = (shapes or {}).get(c, SHAPE)
        data = np.ascontiguousarray(data[: shape[0], : shape[1], : shape[2]])
        nib.save(nib.Nifti1Image(data, oblique_affine()), str(out / f"{name}-{c}.nii.gz"))
    return out


@pytest.fixture(scope="session")
def demo_case(demo_data) -> Path:
    return sorted(p for p in demo_data.iterdir() if p.is_dir())[0]


def make_studies(root: Path, demo_case: Path) -> Path:
    """A studies folder: one case lacking t2f (ok), one lacking t2w and t2f, one with a t1c of another shape,
    one with an unreadable t1c, and one complete case."""
    write_case(root, demo_case, ["t1n", "t1c", "t2w"], name="case_ok")
    write_case(root, demo_case, ["t1n", "t1c"], name="case_two_missing")
    write_case(root, demo_case, ["t1n", "t1c", "t2w"], name="case_shapes", shapes={"t1c": (30, 28, 24)})
    bad = write_case(root, demo_case, ["t1n", "t1c", "t2w"], name="case_unreadable")
    (bad / "case_unreadable-t1c.nii.gz").write_bytes(b"not a nifti file")
    write_case(root, demo_case, CONTRASTS, name="case_complete")
    return root


def _save(data: np.ndarray, path: Path, affine=None) -> None:
    nib.save(nib.Nifti1Image(data, oblique_affine() if affine is None else affine), str(path))


def make_inpainting_studies(root: Path, demo_case: Path) -> dict:
    """Inpainting cases (challenge layout ``<case>/<case>-t1n-voided.nii.gz`` + ``<case>-mask.nii.gz``) in ``root``:
    ``inp_ok`` (also with its complete ``-t1n``), ``flat_case`` (files directly in ``root``) and one bad case per
    check of `Inpainter.load_inputs`. Returns {"t1n", "mask", "voided"} of ``inp_ok`` (float32 arrays)."""
    sx, sy, sz = INPAINT_SHAPE
    t1n = nib.load(demo_case / f"{demo_case.name}-t1n.nii.gz").get_fdata(dtype=np.float32)[:sx, :sy, :sz]
    t1n = np.ascontiguousarray(t1n)
    t1n[:4, :4, :4] = 0  # background, for the mask outside the brain
    mask = np.zeros(INPAINT_SHAPE, np.float32)
    mask[13:18, 12:16, 11:15] = 1
    voided = t1n * (1 - mask)
    masks = {
        "inp_ok": mask,
        "inp_nomask": None,
        "inp_shape": mask[:, :, :-1],
        "inp_affine": mask,
        "inp_nonbinary": mask * 2,
        "inp_empty": np.zeros_like(mask),
        "inp_outside": np.pad(np.ones((2, 2, 2), np.float32), [(0, n - 2) for n in INPAINT_SHAPE]),
    }
    shifted = oblique_affine()
    shifted[:3, 3] += 2.0
    for case, m in masks.items():
        (root / case).mkdir(parents=True, exist_ok=True)
        _save(voided, root / case / f"{case}-t1n-voided.nii.gz")
        if m is not None:
            _save(
                np.ascontiguousarray(m), root / case / f"{case}-mask.nii.gz", shifted if case == "inp_affine" else None
            )
    _save(t1n, root / "inp_ok" / "inp_ok-t1n.nii.gz")
    _save(voided, root / "flat_case-t1n-voided.nii.gz")
    _save(mask, root / "flat_case-mask.nii.gz")
    return {"t1n": t1n, "mask": mask, "voided": voided}


@pytest.fixture
def studies(tmp_path, demo_case) -> Path:
    return make_studies(tmp_path / "studies", demo_case)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(label_python: Path, repo_root: Path, studies: Path, tmp: Path, conf: dict, host="127.0.0.1"):
    """``monailabel start_server`` on a copy of the app in ``tmp``, a free port and this checkout's code:
    (command, environment, port, app folder)."""
    app = tmp / "app"  # a copy: the server writes logs/, bin/, lib/, model/ into its app folder
    app.mkdir()
    shutil.copy(repo_root / "apps" / "monailabel_wdm" / "main.py", app)
    port = _free_port()
    cmd = [str(label_python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
    cmd += ["--host", host, "--port", str(port)]
    for k, v in conf.items():
        cmd += ["--conf", k, v]
    env = {
        **os.environ,
        "PATH": f"{label_python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(repo_root),  # this checkout's wdm_bundle, whichever env runs the server
        "MONAI_LABEL_SESSION_PATH": str(tmp / "sessions"),
    }
    env.pop("VIRTUAL_ENV", None)
    return cmd, env, port, app


@contextlib.contextmanager
def run_server(label_python: Path, repo_root: Path, studies: Path, tmp: Path, conf: dict, env_extra=None):
    """Run ``monailabel start_server`` with a copy of the app on 127.0.0.1; yields {url, studies, proc, info, log, app}.

    SIGTERM at the end.
    """
    cmd, env, port, app = server_command(label_python, repo_root, studies, tmp, conf)
    env.update(env_extra or {})
    log_path = tmp / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the MONAI Label server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/info/", timeout=5) as r:
                    info = json.load(r)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"no answer from {url}/info/ after 300 s:\n{log_path.read_text()[-4000:]}")
                time.sleep(1)
        yield {"url": url, "studies": studies, "proc": proc, "info": info, "log": log_path, "app": app}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post_form(url, path, query, files=None, params=None, method="POST", headers=None):
    """POST (or PUT) multipart form data (``params``: JSON text, or as is when a str); returns (status, body)."""
    boundary = uuid.uuid4().hex
    parts = []
    if params is not None:
        text = params if isinstance(params, str) else json.dumps(params)
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{text}\r\n'.encode())
    for name, (filename, data) in (files or {}).items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        f"{url}{path}?{urllib.parse.urlencode(query)}",
        data=body,
        method=method,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            post_form.last_headers = dict(r.headers)
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        post_form.last_headers = dict(e.headers)
        return e.code, e.read()


@pytest.fixture(scope="session")
def label_spec():
    """The constants and helpers above, for the test modules (conftest files are not imported by name)."""
    return SimpleNamespace(
        contrasts=CONTRASTS,
        synthesis_configs=SYNTHESIS_CONFIGS,
        generation_configs=GENERATION_CONFIGS,
        inpainting_configs=INPAINTING_CONFIGS,
        inpainting_fast=INPAINTING_FAST,
        inpaint_shape=INPAINT_SHAPE,
        make_inpainting_studies=make_inpainting_studies,
        shape=SHAPE,
        oblique_affine=oblique_affine,
        write_case=write_case,
        make_studies=make_studies,
        run_server=run_server,
        server_command=server_command,
        post=post_form,
    )


def _env_stamp(repo_root: Path) -> str:
    """What the label env is built from: the setup script and the project's dependencies (with the label extra)."""
    text = (repo_root / "pyproject.toml").read_text()
    try:
        import tomllib  # Python >= 3.11

        project = tomllib.loads(text)["project"]
        text = repr((project["dependencies"], project.get("optional-dependencies", {}).get("label")))
    except ImportError:
        pass
    script = (repo_root / "scripts" / "setup_monailabel_env.sh").read_text()
    return hashlib.sha256(f"{script}\0{text}".encode()).hexdigest()


@pytest.fixture(scope="session")
def label_python(repo_root) -> Path:
    """Python of the MONAI Label env (torch 2.14.1, monailabel 0.8.5, this project with its label extra).

    ``$WDM_LABEL_PYTHON`` if set; else ``<repo>/.venv-label``, built by scripts/setup_monailabel_env.sh
    when missing or when the script or the project's dependencies changed (about 5 min, 8 GB; later runs
    reuse it).
    """
    if os.environ.get("WDM_LABEL_PYTHON"):
        python = Path(os.environ["WDM_LABEL_PYTHON"])
        if not python.is_file():
            pytest.fail(f"WDM_LABEL_PYTHON='{python}' does not exist.")
        return python
    venv = repo_root / ".venv-label"
    python, stamp_file, log = venv / "bin" / "python", venv / ".wdm-label-stamp", venv / ".build.log"
    stamp = _env_stamp(repo_root)
    venv.mkdir(exist_ok=True)
    with open(venv / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, also across pytest processes
        if python.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
            return python
        stamp_file.unlink(missing_ok=True)
        with open(log, "w") as out:
            result = subprocess.run(
                ["bash", str(repo_root / "scripts" / "setup_monailabel_env.sh"), str(venv)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=repo_root,
                timeout=3600,
            )
        if result.returncode != 0:
            tail = "\n".join(line for line in log.read_text().splitlines() if "is ignored" not in line)[-3000:]
            pytest.fail(
                f"building the MONAI Label env with scripts/setup_monailabel_env.sh {venv} failed (exit "
                f"{result.returncode}); full log: {log}. Last lines:\n{tail}",
                pytrace=False,
            )
        stamp_file.write_text(stamp)
    return python
