#!/usr/bin/env bash
# Set up .venv (CPU torch unless one is already installed), install thinkgen with every extra,
# then render a sample of the nano world and judge it.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: a bare `torch` requirement could pull a multi-GB CUDA build on a CPU machine.
# GPU users: install the CUDA build of torch into .venv before running this script; it is kept.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[all]"
if [ -z "${THINKGEN_NO_SAMPLE:-}" ]; then
    .venv/bin/thinkgen world sample --scenario all -n 24 --out samples/world --judge
fi
