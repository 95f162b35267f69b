#!/usr/bin/env bash
# Builds (installing what is missing) and runs the test suite. GPU tests skip without a GPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
cd "${SCTRAIN_BUILD_DIR:-$root/build}"
ctest --output-on-failure -j "${SCTRAIN_JOBS:-$(nproc)}" "$@"
