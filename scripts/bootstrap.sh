#!/usr/bin/env bash
# Creates .venv with everything repvgg_seg needs, on a brand-new machine or again (fast).
#
# The one trap here is mmcv 2.1.0: PyPI has no wheel for torch 2.14, so it is built from
# source with its C++ ops. The built wheel is cached under $REPVGG_SEG_CACHE (default
# ~/.cache/repvgg_seg), keyed by the torch and Python versions, and reused by later runs
# and by other clones on the same machine.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${REPVGG_SEG_VENV:-$root/.venv}
cache=${REPVGG_SEG_CACHE:-$HOME/.cache/repvgg_seg}
python=${PYTHON:-python3.11}
req=$root/requirements

log() { printf '[bootstrap] %s\n' "$*" >&2; }

stamp_file=$venv/.bootstrap-stamp
stamp=$(cat "$req"/*.txt "$root/setup.py" "$0" | sha256sum | cut -c1-16)
if [[ -f $stamp_file && $(cat "$stamp_file") == "$stamp" ]]; then
  log "environment $venv is up to date"
  exit 0
fi

if [[ ! -x $venv/bin/python ]]; then
  log "creating $venv with $python"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

log "installing pinned runtime requirements"
"${pip[@]}" install -q -r "$req/runtime.txt"

torch_version=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
mmcv_pin=$(grep -E '^mmcv==' "$req/mmcv.txt")
wheel_dir=$cache/wheels/${mmcv_pin#mmcv==}-torch$torch_version-$py_tag
mkdir -p "$wheel_dir"

if ! compgen -G "$wheel_dir/mmcv-*.whl" >/dev/null; then
  log "building $mmcv_pin with ops from source (about 7 minutes on 2 cores)"
  # mmcv's setup.py imports pkg_resources (gone from newer setuptools) and passes
  # -std=c++17 last, while torch 2.14 headers need C++20: a wrapper appends -std=c++20,
  # and the last -std flag wins.
  "${pip[@]}" install -q "setuptools<70" wheel ninja
  wrapper=$cache/cxx20
  printf '#!/bin/sh\nexec %s "$@" -std=c++20\n' "$(command -v g++)" >"$wrapper"
  chmod +x "$wrapper"
  build_tmp=$(mktemp -d "$wheel_dir/.build.XXXXXX")
  trap 'rm -rf "$build_tmp"' EXIT
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} CXX=$wrapper \
    PATH="$venv/bin:$PATH" \
    "${pip[@]}" wheel -q --no-build-isolation --no-deps -w "$build_tmp" "$mmcv_pin"
  # Move into place only once complete, so an interrupted build leaves no bad wheel.
  mv "$build_tmp"/mmcv-*.whl "$wheel_dir"/
fi

log "installing mmcv from $wheel_dir"
"${pip[@]}" install -q --no-deps "$wheel_dir"/mmcv-*.whl
"${pip[@]}" install -q addict packaging Pillow pyyaml yapf rich termcolor
log "installing dev tools and repvgg_seg (editable)"
"${pip[@]}" install -q -r "$req/dev.txt" "setuptools>=77.0.3"
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$root"
"$venv/bin/python" -c 'import mmcv.ops, mmseg, repvgg_seg; print("mmcv", mmcv.__version__, "mmseg", mmseg.__version__)'
echo "$stamp" >"$stamp_file"
log "done: $venv"
