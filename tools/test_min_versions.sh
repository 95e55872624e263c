#!/usr/bin/env bash
# The tests against the declared minimum versions: a fresh venv with every `>=` floor of pyproject.toml's
# dependencies pinned with `==`, growzoo installed without dependencies, then the tests that exercise what the
# floors gate (models, recipes, hub folders, attention, training, growth, data, routing, freezing, export).
#   tools/test_min_versions.sh [VENV_DIR]          (default .venv-min; about 5 minutes of installs on a warm cache)
# numpy < 2 and pyarrow < 17: scipy 1.10 is built against numpy 1, and pyarrow 17+ needs numpy 2. ONNX export is not
# tested here: its onnxscript needs a newer torch than the floor (the `onnx` extra is optional).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-min}"
python3 -m venv "$venv"
pins=$("$venv/bin/python" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(re.sub(r">=", "==", d) for d in deps))
PY
)
# shellcheck disable=SC2086
"$venv/bin/pip" install -q $pins "numpy<2" "pyarrow<17" pytest matplotlib
"$venv/bin/pip" install -q --no-deps -e .
"$venv/bin/python" -m pytest -q -p no:cacheprovider -k "not onnx" \
  tests/test_models.py tests/test_recipe.py tests/test_hub.py tests/test_attention.py tests/test_train.py \
  tests/test_growth.py tests/test_growth_steps.py tests/test_data.py tests/test_routing.py tests/test_freezing.py \
  tests/test_compile.py tests/test_export_formats.py tests/test_data_streaming.py tests/test_hf_streaming.py \
  tests/test_prefix_cache.py
