"""Server start-up: a task with unusable weights is left out (the other one serves); no unauthenticated non-loopback."""

import subprocess

import pytest

pytestmark = pytest.mark.label


def _conf(repo_root, label_spec, tiny_models, generation_ckpt):
    return {
        "bundle_root": str(repo_root),
        "synthesis_configs": ",".join(label_spec.synthesis_configs),
        "generation_configs": ",".join(label_spec.generation_configs),
        "synthesis#ckpt_dir": str(tiny_models),
        "generation#ckpt_path": str(generation_ckpt),
    }


def test_a_task_with_unusable_weights_is_left_out(
    label_python, repo_root, tiny_models, demo_case, label_spec, tmp_path
):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint" * 64)
    studies = label_spec.make_studies(tmp_path / "studies", demo_case)
    cases = sorted(p.name for p in studies.iterdir())
    conf = {**_conf(repo_root, label_spec, tiny_models, broken), "inpainting#ckpt_path": str(tmp_path / "none.pt")}
    with label_spec.run_server(label_python, repo_root, studies, tmp_path, conf) as server:
        assert "synthesis" in server["info"]["models"] and "generation" not in server["info"]["models"]
        assert server["proc"].poll() is None
        log = server["log"].read_text()
    assert "'generation' task left out" in log and "broken.pt" in log
    assert "'inpainting' task left out: weights" in log and "none.pt' not found" in log
    assert broken.read_bytes() == b"not a checkpoint" * 64  # reported, not replaced
    # serving a folder writes nothing into it (no labels/, datastore_v2.json): the command line still reads it
    assert sorted(p.name for p in studies.iterdir()) == cases


def test_non_loopback_host_without_auth_is_refused(label_python, repo_root, tiny_models, label_spec, tmp_path):
    (tmp_path / "studies").mkdir()
    conf = _conf(repo_root, label_spec, tiny_models, tiny_models / "model.pt")
    cmd, env, _, _ = label_spec.server_command(label_python, repo_root, tmp_path / "studies", tmp_path, conf, "0.0.0.0")
    env.pop("MONAI_LABEL_AUTH_ENABLE", None)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert "refusing to serve on --host 0.0.0.0 without authentication" in out, out[-3000:]
