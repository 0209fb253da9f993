#!/usr/bin/env bash
# Build the virtual env that runs the MONAI Label server with this bundle (apps/monailabel_wdm).
#
#   bash scripts/setup_monailabel_env.sh [VENV_DIR]      # default: .venv-label in the repo root
#
# MONAI Label 0.8.5 needs torchvision, and its hard dependency sam2 ships only as a source package
# whose setup.py imports torch. So, in this order:
#   1. torch + a matching torchvision (torchvision 0.28 fails to import beside torch 2.13 CPU);
#   2. monai/monailabel without build isolation (the sam2 build sees the installed torch instead of
#      fetching a second one; SAM2_BUILD_CUDA=0 keeps it pure Python);
#   3. this project with its `label` extra (pins pydicom<3: pydicom-seg breaks under pydicom 3).
# Override the torch pair with TORCH_SPEC / TORCHVISION_SPEC (e.g. your CUDA build).
# The env is about 8 GB. On success the file VENV_DIR/.wdm-label-ready records what was installed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv-label}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
TORCHVISION_SPEC="${TORCHVISION_SPEC:-torchvision==0.29.1}"
PYTHON="${PYTHON:-python3}"

start=$(date +%s)
rm -f "$VENV/.wdm-label-ready"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
echo "[setup_monailabel_env] 1/3 $TORCH_SPEC $TORCHVISION_SPEC into $VENV"
"$PY" -m pip install --quiet "$TORCH_SPEC" "$TORCHVISION_SPEC"
echo "[setup_monailabel_env] 2/3 monai + monailabel (no build isolation, CPU-only sam2 build)"
"$PY" -m pip install --quiet setuptools wheel
SAM2_BUILD_CUDA=0 "$PY" -m pip install --quiet --no-build-isolation "monai==1.6.1" "monailabel==0.8.5" "pydicom<3"
echo "[setup_monailabel_env] 3/3 wdm-bundle[label] (editable) from $ROOT"
"$PY" -m pip install --quiet --no-build-isolation -e "$ROOT[label]"
"$PY" -m pip check
"$PY" -c "import torch, torchvision, monai, monailabel, wdm_bundle.label"
"$PY" -m pip freeze > "$VENV/.wdm-label-ready"
echo "[setup_monailabel_env] ready in $(( $(date +%s) - start )) s: $VENV"
