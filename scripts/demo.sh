#!/usr/bin/env bash
# Set up .venv and run the default pipeline (pipeline.yaml) on the demo corpus.
# Extra arguments go to run_pipeline.py, e.g. `bash scripts/demo.sh --stages extract`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh lab
exec .venv/bin/python run_pipeline.py pipeline.yaml "$@"
