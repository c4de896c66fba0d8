#!/usr/bin/env bash
# The two entry points of the README:
#   ./run.sh demo [flags]   trains ResNet-38 on 128 CIFAR-10 images (300 epochs: a block), measures the
#                           block, its first PC and its dominant datapoints, writes
#                           runs/demo/report_demo/report.html (flags go to bin/report)
#   ./run.sh test [args]    runs the test suite in two processes (extra args go to pytest)
#   ./run.sh lint [args]    runs `ruff check .` and `ruff format --check .` (pyproject.toml [tool.ruff];
#                           extra args go to ruff check)
# Both create (or reuse) the virtualenv .venv and install tfwd into it, editable, first.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${TFWD_VENV:-.venv}

setup_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[run.sh] creating virtualenv $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  echo "[run.sh] installing tfwd (editable) and its dependencies into $VENV" >&2
  local log
  log=$(mktemp)
  if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]' >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "[run.sh] pip install failed" >&2
    exit 1
  fi
  rm -f "$log"
}

# A prepared TFDS folder beside the checkout is used when no other is given; with none anywhere,
# the demo's trainings fetch CIFAR-10 into TFDS's default folder (tfwd.data, download="auto").
if [ -z "${TFDS_DATA_DIR:-}" ] && [ -d ../shared/tfds ]; then
  export TFDS_DATA_DIR="$(cd ../shared/tfds && pwd)"
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  demo)
    setup_venv
    exec "$VENV/bin/python" bin/report --spec=data/reports/demo.json --out_dir=runs/demo "$@"
    ;;
  test)
    setup_venv
    # In two processes (pytest-xdist; TFWD_TEST_WORKERS sets how many, `-n 0` none): most of the
    # suite's time is single-threaded (binaries importing TensorFlow, tracing), so two processes
    # share two cores well.
    exec "$VENV/bin/python" -m pytest -n "${TFWD_TEST_WORKERS:-2}" "$@"
    ;;
  lint)
    setup_venv
    "$VENV/bin/python" -m ruff check . "$@"
    exec "$VENV/bin/python" -m ruff format --check .
    ;;
  *)
    echo "usage: ./run.sh demo [flags] | ./run.sh test [pytest args] | ./run.sh lint [ruff args]" >&2
    exit 2
    ;;
esac
