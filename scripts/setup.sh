#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install frameatlas into it, with the extras given as $1
# (e.g. "lab" or "test"). Re-running is quick: nothing is reinstalled while pyproject.toml
# and the requested extras are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-lab}"
. scripts/find_python.sh
find_python 3 11 "frameatlas"
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $python_bin ..."
  "$python_bin" -m venv .venv
fi
stamp=".venv/.frameatlas-setup-$(echo "$extras" | tr ',' '-')"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "Installing frameatlas[$extras] into .venv (first time: a few minutes) ..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
  # torch and torchvision must be a matching pair (a CPU torch beside a CUDA torchvision does not import)
  if ! .venv/bin/python -c "import torchvision" >/dev/null 2>&1; then
    echo "torch and torchvision in .venv do not import together (not a matching pair?):" >&2
    .venv/bin/python -m pip list 2>/dev/null | grep -E '^torch(vision)? ' >&2 || true
    echo "Reinstall both in one command from one place, e.g. .venv/bin/pip install --force-reinstall torch torchvision" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
