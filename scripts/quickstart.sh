#!/usr/bin/env bash
# The README's commands.  Usage: bash scripts/quickstart.sh demo|study|paper|rehearse|test
#   demo   set up, then run the whole DAG on the embedded demo data (minutes)
#   study  same data, enough runs and seeds for honest verdicts (about 70 min on 2 cores)
#   paper  switch params.yaml to the paper's datasets and recipe, print the SLURM jobs
#          (then run `snakemake --profile slurm all` on the cluster)
#   rehearse  the paper scale's whole DAG, capped, on miniatures of the real datasets
#          (or on `--data-root DIR`), in rehearsal/; the repository's outputs are untouched
#   test   set up, then check style (ruff) and run the test suite (CI runs exactly this)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-demo}
case $mode in
  demo | study | paper | rehearse) bash scripts/setup.sh run ;;
  test) bash scripts/setup.sh test ;;
  *) echo "usage: bash scripts/quickstart.sh demo|study|paper|rehearse|test" >&2; exit 2 ;;
esac
# shellcheck disable=SC1091
source .venv/bin/activate
case $mode in
  demo | study)
    pcn scale "$mode"
    pcn machine # this machine's sgemm figure and the expected minutes (benchmarks/results_quickstart.json)
    pcn run --engine snakemake --cores "$(nproc)"
    echo "done: reports/report.md, reports/report.html; browse runs with: pcn ui"
    ;;
  paper)
    pcn scale paper
    pcn dryrun
    ;;
  rehearse)
    pcn rehearse "${@:2}"
    ;;
  test)
    # style first (seconds), then the suite; ruff's settings are in pyproject.toml
    ruff format --check --quiet . || { echo "ruff format: files above need \`ruff format .\`" >&2; exit 1; }
    ruff check --quiet .
    # the set-up above provides every part the tests need (FFCV, SLURM, root's mounts,
    # Chromium): one that is missing fails its tests instead of skipping them (tests/conftest.py)
    CI="${CI:-true}" python -m pytest "${@:2}"
    ;;
esac
