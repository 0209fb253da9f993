#!/usr/bin/env bash
# The MONAI model zoo's code-format check (its runtests.sh --codeformat): isort, black, flake8, read-only.
# Settings: pyproject.toml [tool.isort] and [tool.black] (120 columns, --skip-magic-trailing-comma), setup.cfg
# [flake8]. Tools: pip install -e ".[lint]" (or PYTHON=/path/to/python with black, isort, flake8 and the plugins).
#
#   bash scripts/check_format.sh                 # wdm_bundle scripts apps tests
#   bash scripts/check_format.sh wdm_bundle/x.py # given files or folders
#
# Prints each tool's findings and a summary line; exits 1 if any tool found something, 2 if a tool is missing.
# It changes no file: to fix, run isort then black on the same paths (the same settings apply).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ $# -gt 0 ]; then paths=("$@"); else paths=(wdm_bundle scripts apps tests); fi

for tool in isort black flake8; do
    if ! "$PY" -m "$tool" --version >/dev/null 2>&1; then
        echo "check_format: $tool is not installed for $PY; run: pip install -e \".[lint]\"" >&2
        exit 2
    fi
done
if ! "$PY" -m flake8 --version | grep -q "flake8-bugbear"; then
    echo "check_format: flake8-bugbear is missing (B950 is the line-length check); run: pip install -e \".[lint]\"" >&2
    exit 2
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$PY" -m isort --check-only "${paths[@]}" >"$out/isort" 2>&1
"$PY" -m black --check "${paths[@]}" >"$out/black" 2>&1
"$PY" -m flake8 "${paths[@]}" >"$out/flake8" 2>&1

n_isort=$(grep -c "^ERROR:" "$out/isort")
n_black=$(grep -c "^would reformat" "$out/black")
n_flake8=$(grep -cE "^[^:]+:[0-9]+:[0-9]+: " "$out/flake8")
grep "^ERROR:" "$out/isort"
grep "^would reformat" "$out/black"
cat "$out/flake8"
if grep -qE "^error: cannot format" "$out/black"; then grep "^error:" "$out/black"; n_black=$((n_black + 1)); fi
echo "check_format: isort: $n_isort files, black: $n_black files, flake8: $n_flake8 findings"
[ "$n_isort" -eq 0 ] && [ "$n_black" -eq 0 ] && [ "$n_flake8" -eq 0 ]
