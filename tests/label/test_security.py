"""Hostile requests against a real MONAI Label server serving the app (docs/monailabel.md, Security).

Each gets the documented 4xx, the server stays up and answers ``/info/`` while an inference runs,
and a canary folder outside the server's folders is unchanged (checksums before and after).
"""

import hashlib
import json
import threading
import time
import urllib.request

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.label

CAP = 300  # --conf max_inference_steps
LONG = 250  # DDIM steps of the long generation request (several seconds on the tiny model)


def _post(*args, **kwargs):
    return _post.form(*args, **kwargs)


def _tree_digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def hostile(label_python, repo_root, tiny_models, demo_case, label_spec, tmp_path_factory):
    _post.form = label_spec.post
    tmp = tmp_path_factory.mktemp("label_security")
    studies = label_spec.make_studies(tmp / "studies", demo_case)
    canary = tmp / "canary"  # outside the studies and app folders; no request may touch it
    label_spec.write_case(canary, demo_case, ["t1n", "t1c", "t2w"], name="secret")
    (canary / "x").write_text("keep me")
    before = _tree_digest(canary)
    conf = {
        "bundle_root": str(repo_root),
        "synthesis_configs": ",".join(label_spec.synthesis_configs),
        "generation_configs": ",".join(label_spec.generation_configs),
        "synthesis#ckpt_dir": str(tiny_models),
        "synthesis#num_inference_steps": "2",
        "synthesis#sampler": "ddim",
        "generation#ckpt_path": str(tiny_models / "model.pt"),
        "generation#num_inference_steps": "2",
        "generation#sampler": "ddim",
        "max_inference_steps": str(CAP),
        "max_queue": "2",
        "max_voxels": str(40**3),
        "max_upload_mb": "1",
    }
    with label_spec.run_server(label_python, repo_root, studies, tmp, conf) as server:
        yield {**server, "canary": canary, "tmp": tmp}
        assert server["proc"].poll() is None, server["log"].read_text()[-3000:]
    assert _tree_digest(canary) == before


def _detail(body):
    return json.loads(body)["detail"]


def _check(server, status, body, code, message):
    assert status == code, (status, body[:500])
    detail = _detail(body)
    assert message in str(detail), detail
    assert str(server["tmp"]) not in str(detail)  # no absolute server path in any reply
    assert server["proc"].poll() is None


def test_code_in_params_is_never_evaluated(hostile):
    pwned = hostile["canary"] / "pwned"
    payload = f"$__import__('pathlib').Path('{pwned}').write_text('x') and 'ddim'"
    cases = [
        ({"sampler": payload}, "is not a valid Sampler"),
        ({"sampler": "@inferer"}, "is not a valid Sampler"),
        ({"num_inference_steps": payload}, "'num_inference_steps' must be an integer"),
        ({"seed": "$1+1"}, "'seed' must be an integer"),
        ({"target": "%configs/inference.json#sampler"}, "cannot synthesise"),
        ({"contrasts": ["t1n", "t1c", "t2w"], "case": payload}, "'case'"),
        ({"ckpt_dir": "/"}, "unknown param(s) ['ckpt_dir']"),
    ]
    for params, message in cases:
        status, body = _post(hostile["url"], "/infer/synthesis", {"image": "case_ok", "output": "json"}, params=params)
        _check(hostile, status, body, 422, message)
        status, body = _post(
            hostile["url"],
            "/infer/generation",
            {"output": "json"},
            params={k: v for k, v in params.items() if k != "contrasts"},
        )
        assert 400 <= status < 500 and hostile["proc"].poll() is None, body[:300]
    assert not pwned.exists()


def test_traversal_and_absolute_paths_are_refused(hostile, tmp_path):
    url, canary, studies = hostile["url"], hostile["canary"], hostile["studies"]
    nifti = (studies / "case_ok" / "case_ok-t1n.nii.gz").read_bytes()
    upload = {"file": ("x-t1n.nii.gz", nifti)}
    for image in ("../x", "../canary/x", str(canary / "x"), "case_ok/../../canary/x", "a/b/c", ".hidden", "x" * 300):
        status, body = _post(url, "/datastore/image", {"image": image}, upload, method="PUT")
        assert status in (403, 404, 413, 415, 422), (image, status, body[:300])
        assert str(hostile["tmp"]) not in body.decode(errors="replace")
    req = urllib.request.Request(f"{url}/datastore/image?id=../canary/x", method="DELETE")
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("DELETE outside the studies folder answered 2xx")
    except urllib.error.HTTPError as e:
        assert 400 <= e.code < 500
    # an absolute path is refused the same way whether it exists or not (no file oracle)
    answers = set()
    for image in (
        str(canary / "secret" / "secret-t1n"),
        str(canary / "secret" / "secret-t1n.nii.gz"),
        str(canary / "nothing-t1n.nii.gz"),
        "../canary/secret/secret-t1n",
        "case_ok/../../canary/x",
    ):
        status, body = _post(url, "/infer/synthesis", {"image": image, "output": "json"})
        _check(hostile, status, body, 422, "'image' must be a datastore id")
        answers.add(_detail(body))
    assert len(answers) == 1
    # the upload's case name is validated (it names the result)
    for case in ("../outside/x", "/abs", "a/b", "x" * 65):
        status, body = _post(
            url, "/infer/synthesis", {"output": "json"}, upload, {"contrasts": ["t1n"], "target": "t2f", "case": case}
        )
        _check(hostile, status, body, 422, "'case'")
    assert not (hostile["tmp"] / "outside").exists()
    assert not any(p.name == "x.nii.gz" for p in hostile["tmp"].rglob("*"))


def test_client_errors_get_4xx(hostile):
    url = hostile["url"]
    empty = {"file": ("e.nii.gz", b"")}
    cases = [
        ("/infer/nope", {"image": "case_ok"}, None, None, 404, "unknown task 'nope'"),
        ("/infer/synthesis", {"image": "case_ok"}, None, "not json", 422, "'params' is not valid JSON"),
        ("/infer/synthesis", {"image": "case_ok"}, None, "[1, 2]", 422, "'params' must be a JSON object"),
        ("/infer/synthesis", {"image": "case_ok"}, None, '{"seed": NaN}', 422, "'params' is not valid JSON"),
        ("/infer/synthesis", {"image": "case_ok"}, None, '{"seed": 1e400}', 422, "'seed' must be an integer"),
        ("/infer/synthesis", {"image": "case_ok"}, None, '{"seed": 1' + "0" * 400 + "}", 422, "'seed' must be"),
        ("/infer/synthesis", {"image": "case_ok"}, None, '{"num_inference_steps": 1e400}', 422, "must be an integer"),
        ("/infer/synthesis", {}, None, None, 422, "pass 'image'"),
        ("/infer/synthesis", {"image": ""}, empty, '{"contrasts": ["t1n"]}', 422, "the uploaded file is empty"),
        ("/infer/synthesis", {"image": "case_ok"}, None, {"case": "c" * 5000, "contrasts": ["t1n"]}, 422, "'case'"),
        ("/infer/synthesis", {"image": "case_ok"}, None, {"num_inference_steps": CAP + 1}, 422, f"<= {CAP}"),
        ("/infer/generation", {}, None, {"sampler": "ddpm", "num_inference_steps": 1000}, 422, f"<= {CAP}"),
    ]
    for path, query, files, params, code, message in cases:
        status, body = _post(url, path, {**query, "output": "json"}, files, params)
        _check(hostile, status, body, code, message)


def test_volume_and_upload_caps(hostile, tmp_path):
    big = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((41, 40, 40, 1), np.float32), np.eye(4)), str(big))
    status, body = _post(
        hostile["url"],
        "/infer/synthesis",
        {"output": "json"},
        {"file": ("b.nii.gz", big.read_bytes())},
        {"contrasts": ["t1n"], "target": "t2f"},
    )
    _check(hostile, status, body, 413, "at most 64000 (conf max_voxels)")
    noise = np.random.default_rng(0).bytes(1_200_000)  # over max_upload_mb 1
    status, body = _post(
        hostile["url"], "/infer/synthesis", {"output": "json"}, {"file": ("n.nii.gz", noise)}, {"contrasts": ["t1n"]}
    )
    _check(hostile, status, body, 413, "conf max_upload_mb")


def test_exposure(hostile, label_spec):
    url = hostile["url"]
    for path in ("/model/synthesis", "/model/generation", "/logs/", "/model/info/synthesis"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}{path}", timeout=30)
        assert err.value.code == 404
    req = urllib.request.Request(f"{url}/info/", headers={"Origin": "http://evil.example", "Cookie": "a=b"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
    # the datastore keeps its files out of the studies folder; results have plain names
    assert not (hostile["studies"] / "labels").exists() and not (hostile["studies"] / "datastore_v2.json").exists()
    status, body = _post(url, "/infer/synthesis", {"image": "case_ok", "output": "image"})
    assert status == 200 and 'filename="case_ok-t2f.nii.gz"' in label_spec.post.last_headers.get(
        "content-disposition", ""
    )


def test_one_long_request_does_not_block_the_server(hostile):
    url, results = hostile["url"], {}

    def call(name, params):
        t = time.monotonic()
        results[name] = (*_post(url, "/infer/generation", {"output": "json"}, params=params), time.monotonic() - t)

    long = threading.Thread(target=call, args=("long", {"sampler": "ddim", "num_inference_steps": LONG, "seed": 1}))
    long.start()
    time.sleep(1.0)
    queued = threading.Thread(target=call, args=("queued", {"seed": 2}))
    queued.start()
    time.sleep(0.5)
    t = time.monotonic()
    with urllib.request.urlopen(f"{url}/info/", timeout=30) as r:
        assert r.status == 200
    info_s = time.monotonic() - t
    status, body = _post(url, "/infer/generation", {"output": "json"}, params={"seed": 3})  # queue full (max_queue 2)
    _check(hostile, status, body, 429, "conf max_queue")
    assert long.is_alive(), "the long request ended before /info/ was asked: raise LONG"
    long.join(300)
    queued.join(300)
    assert results["long"][0] == 200 and results["queued"][0] == 200, results
    # /info/ answered while the long request was still running, in a small part of its time (no wall-clock bound)
    assert results["long"][2] > 3 * info_s, (info_s, results["long"][2])
    assert json.loads(results["long"][1])["num_inference_steps"] == LONG
