#!/usr/bin/env bash
# Installs what is missing (Debian packages, LibTorch from the torch wheel into .deps/),
# then configures and builds into build/. Safe to run again: it only does what is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

apt_pkgs=(cmake ninja-build g++ python3 python3-venv libhdf5-dev libyaml-cpp-dev libspdlog-dev
          libcli11-dev libgtest-dev libdeflate-dev)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# LibTorch 2.11 from the PyPI wheel, into a project-local venv.
venv="$root/.deps/venv"
if ! "$venv/bin/python3" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.11.0") else 1)' 2>/dev/null; then
  echo "[setup] installing torch==2.11.0 (LibTorch) into .deps/venv (large download, once)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.11.0
fi

build="${SCTRAIN_BUILD_DIR:-$root/build}"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DTorch_DIR="$("$venv/bin/python3" -c 'import torch;print(torch.utils.cmake_prefix_path)')/Torch"
fi
cmake --build "$build" -j "${SCTRAIN_JOBS:-$(nproc)}"
echo "[setup] built $build/sctrain"
