#!/usr/bin/env bash
# Set up a fresh machine for the pipeline: Debian packages (when missing), a virtual
# environment in .venv and the project with its pinned dependencies.  Idempotent:
# a second run only checks.   Usage: bash scripts/setup.sh [run|test]
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-run}

# FFCV compiles against OpenCV and libjpeg-turbo; the tests also need a real SLURM
# cluster (slurm-wlm + munge) and a headless browser (chromium).
apt_pkgs=(libopencv-dev libturbojpeg0-dev pkg-config)
if [[ $what == test ]]; then apt_pkgs+=(slurm-wlm munge chromium); fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
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
  .venv/bin/pip install -q -e ".[test]"
  touch "$stamp"
fi
# DVC needs a git repository with the project committed (a fresh clone is one).
if [[ ! -d .git ]]; then git init -q && git add -A && git commit -qm "initial import"; fi
