#!/usr/bin/env bash
# Set up a fresh machine for the pipeline: Debian packages (when missing), a virtual
# environment in .venv and the project with its pinned dependencies.  Idempotent:
# a second run only checks.   Usage: bash scripts/setup.sh [run|test]
# docs/install.md: what each Debian package is for, and what the choices cost.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-run}
PY=${PYTHON:-python3}

# FFCV compiles one C++ file against libjpeg-turbo and OpenCV, of which it calls
# cv::resize only: OpenCV's core and imgproc development packages are enough (about 60
# packages; libopencv-dev, every OpenCV module, pulls in about 350).  The tests also need
# a real SLURM cluster (slurm-wlm + munge) and a headless browser (chromium).
apt_pkgs=(libopencv-core-dev libopencv-imgproc-dev libturbojpeg0-dev pkg-config)
# FFCV requires the GUI build of OpenCV's wheel (opencv-python), whose cv2 module shares
# its folder with opencv-python-headless; whichever was installed last is imported, and
# the GUI one loads libGL, GLib's gthread and X11's SM/ICE at import (a fresh machine
# without them fails in `pcn make-demo` on "libGL.so.1: cannot open shared object file").
apt_pkgs+=(libgl1 libglib2.0-0 libsm6 libice6)
if [[ $what == test ]]; then apt_pkgs+=(slurm-wlm munge chromium); fi
# Building FFCV also needs a C++ compiler and Python's headers; `python3 -m venv` needs ensurepip.
command -v g++ >/dev/null 2>&1 || apt_pkgs+=(g++)
"$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.isfile(sysconfig.get_path("include") + "/Python.h"))' \
  2>/dev/null || apt_pkgs+=(python3-dev)
[[ -x .venv/bin/python ]] || "$PY" -c 'import ensurepip' 2>/dev/null || apt_pkgs+=(python3-venv)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# apt runs while pip installs torch, which needs none of these packages; it is waited for
# before the project's own install, whose FFCV build does (about 20 s off a fresh set-up).
# What the venv itself needs (python3-venv, the headers, g++) is installed first.
apt_pid=""
apt_log=$(mktemp)
# on any exit, let a running apt finish (never leave dpkg half-done), then drop its log
trap '[[ -z $apt_pid ]] || wait "$apt_pid" 2>/dev/null; rm -f "$apt_log"' EXIT
apt_install() {
  local SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}
wait_apt() {
  [[ -n $apt_pid ]] || return 0
  wait "$apt_pid" || { cat "$apt_log" >&2; echo "setup: apt-get install ${missing[*]} failed (above)" >&2; exit 1; }
  apt_pid=""
}
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  if [[ " ${missing[*]} " =~ \ (python3-venv|python3-dev|g\+\+)\  ]]; then
    apt_install "${missing[@]}" >"$apt_log" 2>&1 || { cat "$apt_log" >&2; exit 1; }
  else
    apt_install "${missing[@]}" >"$apt_log" 2>&1 &
    apt_pid=$!
  fi
fi

# slim_opencv_pc DIR INCLUDEDIR LIBDIR VERSION: what FFCV's build needs of OpenCV when no
# opencv4.pc is installed (libopencv-dev ships it; the slim packages do not).  FFCV's
# setup.py takes its -I/-L/-l flags from `pkg-config --cflags --libs opencv4`, and its C++
# file includes <opencv2/opencv.hpp>, which includes the header of every module OpenCV was
# built with.  So: DIR/pkgconfig/opencv4.pc naming core and imgproc only, and a
# DIR/include/opencv2/opencv.hpp that includes just those two, first on the include path.
slim_opencv_pc() {
  local dir=$1 inc=$2 lib=$3 version=$4
  mkdir -p "$dir/include/opencv2" "$dir/pkgconfig"
  cat >"$dir/include/opencv2/opencv.hpp" <<'EOF'
// Written by scripts/setup.sh: OpenCV's umbrella header reduced to the modules that FFCV uses.
#pragma once
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
EOF
  cat >"$dir/pkgconfig/opencv4.pc" <<EOF
# Written by scripts/setup.sh for building FFCV: OpenCV core and imgproc only.
Name: opencv4
Description: OpenCV core and imgproc (the modules FFCV links)
Version: $version
Cflags: -I$dir/include -I$inc
Libs: -L$lib -lopencv_imgproc -lopencv_core
EOF
}

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.pcn-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "setup: installing the project and its dependencies into .venv (a few minutes the first time)"
  .venv/bin/pip install -q --upgrade pip
  # torch first, pinned: an unpinned resolver pass could pull a different multi-GB build.
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
  wait_apt
  if ! pkg-config --exists opencv4 && ! pkg-config --exists opencv; then
    core_hpp=$(dpkg -L libopencv-core-dev | grep '/opencv2/core\.hpp$')
    core_so=$(dpkg -L libopencv-core-dev | grep '/libopencv_core\.so$')
    version=$(dpkg-query -W -f='${Version}' libopencv-core-dev)
    version=${version#*:}
    slim_opencv_pc "$PWD/.venv/opencv-slim" "${core_hpp%/opencv2/core.hpp}" "${core_so%/libopencv_core.so}" \
      "${version%%[+~-]*}"
    export PKG_CONFIG_PATH=$PWD/.venv/opencv-slim/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  fi
  .venv/bin/pip install -q -e ".[test]"
  touch "$stamp"
fi
wait_apt # installed already: the runtime libraries (libGL, ...) are still needed
# DVC needs a git repository with the project committed (a fresh clone is one; in a git
# worktree .git is a file).
if [[ ! -e .git ]]; then git init -q && git add -A && git commit -qm "initial import"; fi
# `dvc plots show` writes a page that renders offline: .dvc/config names this template,
# which inlines the Vega scripts Snakemake ships (pcn/dag/dvc_plots.py).
.venv/bin/python -m pcn.dag.dvc_plots >/dev/null
