#!/usr/bin/env bash
# Create .venv-tf: a small environment of its own with TensorFlow (CPU) and TensorFlow Hub for YAMNet
# (classify.audio: yamnet or auto, classify.yamnet_python: .venv-tf/bin/python). frameatlas is not installed
# there and TensorFlow never goes into .venv (TensorFlow and torch in one process crash). Re-running is quick:
# nothing is reinstalled while scripts/tf-requirements.txt is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/find_python.sh
find_python 3 9 "the TensorFlow environment"
if [ ! -x .venv-tf/bin/python ]; then
  echo "Creating .venv-tf with $python_bin ..."
  "$python_bin" -m venv .venv-tf
fi
stamp=".venv-tf/.frameatlas-setup-tf"
want="$(cat scripts/tf-requirements.txt scripts/setup_tf.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "Installing TensorFlow (CPU) and TensorFlow Hub into .venv-tf (first time: a few minutes, ~1.6 GB) ..."
  .venv-tf/bin/python -m pip install --quiet --upgrade pip
  .venv-tf/bin/python -m pip install --quiet -r scripts/tf-requirements.txt
  # tf-keras of this TensorFlow's minor version; both without dependencies (see tf-requirements.txt)
  minor="$(.venv-tf/bin/python -c "import importlib.metadata as m; print('.'.join(m.version('tensorflow-cpu').split('.')[:2]))")"
  .venv-tf/bin/python -m pip install --quiet --no-deps "tensorflow-hub>=0.16" "tf-keras==$minor.*"
  .venv-tf/bin/python -c "import tensorflow, tensorflow_hub" >/dev/null 2>&1 || {
    echo "TensorFlow or TensorFlow Hub in .venv-tf does not import:" >&2
    .venv-tf/bin/python -c "import tensorflow, tensorflow_hub" >&2 || true
    exit 1
  }
  echo "$want" > "$stamp"
fi
