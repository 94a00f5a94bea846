# Sourced by scripts/setup.sh and scripts/setup_tf.sh: `find_python 3 11 "what needs it"` sets python_bin to
# $PYTHON, or else to the first of python3.11, python3, python on PATH that is at least that version; it
# stops the script with a message naming what needs it otherwise.
find_python() {
  local major="$1" minor="$2" who="$3" candidate
  python_bin="${PYTHON:-}"
  if [ -z "$python_bin" ]; then
    for candidate in python3.11 python3 python; do
      if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import sys; sys.exit(sys.version_info < ($major, $minor))"; then
        python_bin="$candidate"; break
      fi
    done
  fi
  if [ -z "$python_bin" ]; then
    echo "$who needs Python $major.$minor or newer on PATH (or set PYTHON=/path/to/python3)." >&2
    exit 1
  fi
}
