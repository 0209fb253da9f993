"""Model-zoo compliance: metadata against MONAI's schema (offline), versions, network formats, weights list, docs."""

import copy
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser, download_large_files, verify_metadata, verify_net_in_out
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

import wdm_bundle
from wdm_bundle.data import CONTRASTS
from wdm_bundle.networks import WaveletDiffusionUNet

SCHEMA = "schema/meta_schema_20240725.json"
SCHEMA_MD5 = "326f5c566b8577e487b5fdb30b095b11"
SMALL_NET = {"network_def#channels": [16, 32, 32], "network_def#num_res_blocks": 1, "network_def#norm_num_groups": 8}
FORMATS = {  # metadata entry -> (configs that define its network, overrides)
    "network_data_format": (["inference.json"], {}),
    "cwdm_unified_data_format": (["train.json", "train_cwdm.json"], {}),
    "cwdm_per_contrast_data_format": (["train.json", "train_cwdm.json"], {"target_contrast": "t2f"}),
}

# Run as `python -c`: the documented CLI command, with every socket connection and DNS lookup refused.
_OFFLINE_CLI = """
import runpy, socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
sys.argv = ["monai.bundle"] + sys.argv[1:]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def offline(monkeypatch):
    """Fail on any network connection or DNS lookup (MONAI downloads through urllib, i.e. sockets)."""

    def refuse(*args, **kwargs):
        raise OSError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def metadata(repo_root):
    return json.loads((repo_root / "configs" / "metadata.json").read_text())


def _parser(repo_root, configs, **override):
    parser = ConfigParser()
    parser.read_config([str(repo_root / "configs" / c) for c in configs])
    parser.read_meta(str(repo_root / "configs" / "metadata.json"))
    for key, value in override.items():
        parser[key] = value
    return parser


def test_metadata_verifies_offline_against_the_schema_copy(repo_root, offline):
    schema = repo_root / SCHEMA
    assert hashlib.md5(schema.read_bytes()).hexdigest() == SCHEMA_MD5
    before = schema.read_bytes()
    verify_metadata(meta_file=str(repo_root / "configs" / "metadata.json"), filepath=str(schema), hash_val=SCHEMA_MD5)
    assert schema.read_bytes() == before


def test_without_the_schema_copy_monai_would_download(repo_root, tmp_path, offline):
    """The copy is what keeps the check offline: without it MONAI tries the schema URL (refused here)."""
    with pytest.raises(OSError, match="network access attempted"):  # urllib's URLError around the refusal
        verify_metadata(meta_file=str(repo_root / "configs" / "metadata.json"), filepath=str(tmp_path / "schema.json"))
    assert not (tmp_path / "schema.json").exists()


@pytest.mark.slow
def test_verify_metadata_cli_offline(repo_root):
    """The command documented in docs/README.md, with the network refused in the subprocess."""
    cmd = [
        sys.executable,
        "-c",
        _OFFLINE_CLI,
        "verify_metadata",
        "--meta_file",
        "configs/metadata.json",
        "--filepath",
        SCHEMA,
        "--hash_val",
        SCHEMA_MD5,
    ]
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "metadata is verified with no error" in result.stderr + result.stdout


def _drop(path):
    def edit(meta):
        *parents, last = path
        node = meta
        for key in parents:
            node = node[key]
        del node[last]

    return edit


def _set(path, value):
    def edit(meta):
        *parents, last = path
        node = meta
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        _drop(["network_data_format"]),
        _drop(["monai_version"]),
        _set(["version"], 1),
        _set(["references"], "Friedrich et al."),
        _set(["network_data_format", "inputs", "image", "num_channels"], "8"),
        _drop(["cwdm_unified_data_format", "outputs", "pred", "dtype"]),
        _drop(["cwdm_per_contrast_data_format", "inputs"]),
    ],
    ids=[
        "no network_data_format",
        "no monai_version",
        "version not a string",
        "references not a list",
        "num_channels not an integer",
        "pred without dtype",
        "cwdm format without inputs",
    ],
)
def test_broken_metadata_fails(repo_root, metadata, tmp_path, offline, edit):
    broken = copy.deepcopy(metadata)
    edit(broken)
    meta_file = tmp_path / "metadata.json"
    meta_file.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(meta_file), filepath=str(repo_root / SCHEMA), hash_val=SCHEMA_MD5)


def _pyproject(repo_root):
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]


def test_version_and_changelog_agree(repo_root, metadata):
    version = metadata["version"]
    assert version in metadata["changelog"]
    assert Version(version) == max(Version(v) for v in metadata["changelog"])
    assert all(metadata["changelog"][v].strip() for v in metadata["changelog"])
    assert version == _pyproject(repo_root)["version"] == wdm_bundle.__version__


def test_pinned_versions_match_the_declared_dependencies(repo_root, metadata):
    declared = {canonicalize_name(r.name): r for r in map(Requirement, _pyproject(repo_root)["dependencies"])}
    for key, name in (("monai_version", "monai"), ("pytorch_version", "torch"), ("numpy_version", "numpy")):
        assert Version(metadata[key]) in declared[name].specifier, (key, metadata[key], str(declared[name]))
    pins = {canonicalize_name(k): v for k, v in metadata["required_packages_version"].items()}
    for name, version in pins.items():
        assert name in declared, f"{name} is pinned in metadata.json but not a dependency in pyproject.toml"
        assert Version(version) in declared[name].specifier, (name, version, str(declared[name]))
    assert set(declared) - {"torch", "monai", "numpy"} == set(pins)


def _pins(metadata):
    """``{distribution: version}`` of every version pin in metadata.json."""
    pins = {
        "monai": metadata["monai_version"],
        "torch": metadata["pytorch_version"],
        "numpy": metadata["numpy_version"],
    }
    for key in ("required_packages_version", "optional_packages_version"):
        pins.update({canonicalize_name(k): v for k, v in metadata.get(key, {}).items()})
    return pins


def test_pins_install_on_the_oldest_supported_python(repo_root, metadata):
    """The model zoo installs the pins together on its CI Python: each must support pyproject's oldest Python.

    Checked offline for each pin installed here at exactly that version (the others, lowered to the newest release
    for that Python, cannot be read without the index): its Requires-Python admits the oldest supported Python, and
    its requirements admit the other pins.
    """
    supported = SpecifierSet(_pyproject(repo_root)["requires-python"])
    oldest = next(v for v in (f"3.{minor}" for minor in range(8, 30)) if Version(v) in supported)
    environment = {"python_version": oldest, "python_full_version": f"{oldest}.0", "extra": ""}
    pins = _pins(metadata)
    checked = []
    for name, pin in pins.items():
        dist = importlib.metadata.distribution(name)
        if Version(dist.version).public != Version(pin).public:  # torch's local "+cpu" aside
            continue
        requires_python = dist.metadata.get("Requires-Python") or ""
        assert Version(oldest) in SpecifierSet(requires_python), f"{name}=={pin} needs Python {requires_python}"
        for requirement in map(Requirement, dist.requires or []):
            other = canonicalize_name(requirement.name)
            if other in pins and (requirement.marker is None or requirement.marker.evaluate(environment)):
                assert Version(pins[other]) in requirement.specifier, f"{name}=={pin} requires {requirement}"
        checked.append(name)
    assert {"monai", "torch"} <= set(checked), checked


@pytest.mark.parametrize("name", list(FORMATS))
def test_network_data_formats_match_the_configs(repo_root, metadata, name):
    fmt = metadata[name]
    assert "image" in fmt["inputs"] and "pred" in fmt["outputs"]
    configs, override = FORMATS[name]
    net = _parser(repo_root, configs, **override).get_parsed_content("network_def")
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    assert (image["num_channels"], pred["num_channels"]) == (net.in_channels, net.out_channels)
    assert image["spatial_shape"] == pred["spatial_shape"]
    assert image["dtype"] == pred["dtype"] == "float32"
    assert fmt["inputs"]["timesteps"]["value_range"] == [0, 999]
    # the coefficient grid is half the image grid the inference configs use (read from the record; without weights
    # the defaults a checkpoint without a record is assumed to have), and the network can downsample it
    if name == "network_data_format":
        image_size = _parser(repo_root, ["inference.json"]).get_parsed_content("record")["image_size"]
    else:
        image_size = _parser(repo_root, ["inference_cwdm.json"]).get_parsed_content("record")["pad_crop_size"]
        assert _parser(repo_root, configs).get("pad_crop_size") == image_size
    assert [2 * s for s in image["spatial_shape"]] == list(image_size)
    net.check_image_size(image_size)


def test_int_timestep_means_the_same_step_for_the_whole_batch():
    torch.manual_seed(0)
    net = WaveletDiffusionUNet(channels=(8, 8), num_res_blocks=1, norm_num_groups=8).eval()
    x = torch.randn(2, 8, 8, 8, 8)
    with torch.no_grad():
        expected = net(x, torch.tensor([7, 7]))
        torch.testing.assert_close(net(x, 7), expected)
        torch.testing.assert_close(net(x, torch.tensor(7)), expected)


@pytest.mark.parametrize("name", list(FORMATS))
def test_verify_net_in_out(repo_root, metadata, name):
    """MONAI's shape/dtype check with the metadata's channel counts (small net and grid to stay fast)."""
    configs, override = FORMATS[name]
    meta = {
        "_meta_#network_data_format#inputs#image#num_channels": metadata[name]["inputs"]["image"]["num_channels"],
        "_meta_#network_data_format#inputs#image#spatial_shape": [16, 16, 16],
    }
    kwargs = dict(
        net_id="network_def",
        meta_file=str(repo_root / "configs" / "metadata.json"),
        config_file=[str(repo_root / "configs" / c) for c in configs],
        device="cpu",
        extra_forward_args={"timesteps": 999},
        **SMALL_NET,
        **override,
        **meta,
    )
    verify_net_in_out(**kwargs)
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(**kwargs, **{"_meta_#network_data_format#outputs#pred#num_channels": 9})
    with pytest.raises(TypeError):  # a diffusion network needs its timestep
        verify_net_in_out(**{**kwargs, "extra_forward_args": {}})


@pytest.mark.slow
def test_verify_net_in_out_cli(repo_root):
    """The documented command (metadata shape 64^3), with a small network for speed."""
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--extra_forward_args",
        "{'timesteps': 999}",
        "--device",
        "cpu",
        "--network_def#channels",
        "[16,32,32]",
        "--network_def#num_res_blocks",
        "1",
        "--network_def#norm_num_groups",
        "8",
    ]
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data shape of network is verified with no error" in result.stderr + result.stdout


def _large_files(repo_root):
    return ConfigParser.load_config_file(str(repo_root / "large_files.yml"))["large_files"]


def test_large_files_list_every_weight_file_the_configs_load(repo_root):
    entries = _large_files(repo_root)
    wdm = _parser(repo_root, ["inference.json"])
    cwdm = _parser(repo_root, ["inference_cwdm.json"])
    per_contrast = [  # what training with --target_contrast <c> writes, for --ckpt_paths
        _parser(repo_root, ["train.json", "train_cwdm.json"], target_contrast=c).get_parsed_content("ckpt_dir")
        + "/model.pt"
        for c in CONTRASTS
    ]
    loaded = [wdm.get_parsed_content("ckpt_path"), cwdm.get_parsed_content("ckpt_path"), *per_contrast]
    assert sorted(e["path"] for e in entries) == sorted(os.path.normpath(p) for p in loaded)
    assert len(loaded) == 6
    for e in entries:
        assert set(e) == {"path", "url", "hash_val", "hash_type"} and e["hash_type"] == "md5"
        # nothing is published yet; once a url is filled in, its md5 must be too
        assert (e["url"] == "") == (e["hash_val"] == ""), e
        assert e["url"] == "" or e["url"].startswith("https://"), e


@pytest.mark.filterwarnings("ignore:No hash value provided")
def test_download_large_files_keeps_existing_weights_offline(repo_root, tmp_path, offline):
    shutil.copy(repo_root / "large_files.yml", tmp_path / "large_files.yml")
    for e in _large_files(repo_root):
        (tmp_path / e["path"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / e["path"]).write_bytes(b"weights")
    download_large_files(bundle_path=str(tmp_path))
    assert all((tmp_path / e["path"]).read_bytes() == b"weights" for e in _large_files(repo_root))


ZOO_README_HEADINGS = [
    "# Model Overview",
    "### Example images",
    "## Data",
    "## Preprocessing",
    "## Training configuration",
    "## Performance",
    "## System requirements",
    "## MONAI Bundle Commands",
    "### Execute training",
    "### Execute multi-GPU training",
    "### Override the `train` config",
    "### Execute inference",
    "### Prepare the real reference set",
    "### Export",
    "## Limitations",
    "## Citation",
    "## References",
    "# License",
]


def test_docs_readme_follows_the_zoo_layout(repo_root):
    text = (repo_root / "docs" / "README.md").read_text()
    headings = [line.strip() for line in text.splitlines() if line.startswith("#")]
    positions = [headings.index(h) for h in ZOO_README_HEADINGS]
    assert positions == sorted(positions), headings
    # every file it names exists
    names = set(
        re.findall(r"(?<![\w/])(?:configs|docs|schema|scripts|tests/configs)/[\w.\-]+\.(?:json|md|txt|py)", text)
    )
    assert {"configs/metadata.json", "docs/data_license.txt", SCHEMA} <= names
    assert not [n for n in names if not (repo_root / n).exists()]
    assert SCHEMA_MD5 in text and "--extra_forward_args" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) >= 2 and all((repo_root / "docs" / i).is_file() for i in images), images
    assert "arXiv:2402.19043" in text and "arXiv:2411.17203" in text  # the papers to cite


def test_data_license_names_every_data_source(repo_root, metadata):
    text = (repo_root / "docs" / "data_license.txt").read_text()
    for needle in (
        "BraTS",
        "synapse.org",
        "LIDC-IDRI",
        "CC BY 3.0",
        "CC BY-NC 4.0",
        "MNI152 2009a",
        "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre",
        "nilearn",
    ):
        assert needle in text, needle
    assert "docs/data_license.txt" in metadata["data_source"]
