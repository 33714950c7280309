#!/usr/bin/env bash
# Install what the demo needs, then run the end-to-end job: SmolLM2-135M
# becomes a ternary BitCPM model, is QAT fine-tuned with the fused kernels,
# converted, reloaded and evaluated. Extra arguments go to the demo.
source "$(dirname "$0")/_install.sh"
exec "$PYTHON" -m bitcpm_kernels.demo "$@"
