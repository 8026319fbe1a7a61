#!/usr/bin/env bash
# Run every CPU benchmark and rewrite benchmarks/RESULTS.md (+ RESULTS.jsonl). Extra args go to run_all.py,
# e.g. `bash benchmarks/run_all.sh --threads 1` on the shared 2-core machine (~11 min), `--tiny` for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CMPO_CACHE=${CMPO_CACHE:-/tmp/cmpo-cache}
exec "${PYTHON:-.venv/bin/python}" benchmarks/run_all.py "$@"
