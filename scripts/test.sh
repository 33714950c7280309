#!/usr/bin/env bash
# Install what the tests need, then run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k quantize`.
source "$(dirname "$0")/_install.sh"
exec "$PYTHON" -m pytest -q -ra tests "$@"
