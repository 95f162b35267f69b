#!/usr/bin/env bash
# Installs the Python peers the CPU benchmarks compare against (anndata, numpy, scipy, pandas)
# into the project-local .deps/peers. Prints the Python to use.
#   scripts/setup_peers.sh && .deps/peers/bin/python scripts/bench_reader.py --sctrain build/sctrain
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.deps/peers"
if ! "$venv/bin/python" -c 'import anndata, scipy, numpy, pandas' 2>/dev/null; then
  echo "[setup_peers] installing anndata, scipy, numpy, pandas into .deps/peers" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "anndata>=0.11" scipy numpy pandas
fi
echo "$venv/bin/python"
