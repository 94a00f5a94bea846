"""YAMNet in a process of its own (classify.audio): TensorFlow and torch in one process crash, so
frameatlas never imports TensorFlow and runs this file, by its path, with the interpreter
`classify.yamnet_python` names (one that has tensorflow and tensorflow_hub, e.g. `.venv-tf/bin/python`
from `scripts/setup_tf.sh`).

    python -I yamnet_worker.py MODEL_FOLDER JOB_FOLDER

JOB_FOLDER holds `piece-NNNNN.npy` files, 1-D float32 waveforms at 16 kHz. The worker loads the
SavedModel once, calls it on each piece as YAMNet is called (`scores, embeddings, log_mel =
model(waveform)`), writes `embeddings-NNNNN.npy` (patches x 1024) beside each piece, and last
`done.json` (`{"pieces": n, "dim": d, "load_seconds": s, "run_seconds": s}`). Any failure is a
message on stderr and a non-zero exit status.

This module imports only the standard library at import time (numpy, tensorflow and
tensorflow_hub inside `main`), and nothing of frameatlas: it runs in an environment without it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

USAGE = "usage: python yamnet_worker.py MODEL_FOLDER JOB_FOLDER"


def main(argv: list[str] | None = None) -> int:
    """Embed every piece of JOB_FOLDER with the SavedModel in MODEL_FOLDER; 0 when all went well."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    model_folder, job = Path(args[0]), Path(args[1])
    if not (model_folder / "saved_model.pb").exists():
        print(f"{model_folder}: no saved_model.pb there (not a SavedModel folder)", file=sys.stderr)
        return 3
    if not job.is_dir():
        print(f"{job}: the job folder does not exist", file=sys.stderr)
        return 3
    started = time.perf_counter()
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub

    model = hub.load(str(model_folder))  # a local folder: nothing is downloaded
    loaded = time.perf_counter()
    pieces = sorted(job.glob("piece-*.npy"))
    dim = None
    for piece in pieces:
        waveform = np.load(piece)
        if waveform.ndim != 1:
            print(f"{piece}: a waveform must be 1-D, this one has shape {waveform.shape}", file=sys.stderr)
            return 4
        outputs = model(tf.constant(waveform.astype(np.float32)))
        if not isinstance(outputs, (tuple, list)) or len(outputs) != 3:
            print(f"{model_folder}: the model does not answer as YAMNet does (scores, embeddings, log-mel spectrogram); "
                  f"it returned {type(outputs).__name__}", file=sys.stderr)  # fmt: skip
            return 5
        embeddings = np.asarray(outputs[1], np.float32)
        if embeddings.ndim != 2 or (dim is not None and embeddings.shape[1] != dim):
            print(f"{model_folder}: embeddings of shape {embeddings.shape}; YAMNet's are (patches, 1024)", file=sys.stderr)
            return 5
        dim = embeddings.shape[1]
        np.save(job / piece.name.replace("piece-", "embeddings-", 1), embeddings)
    done = {"pieces": len(pieces), "dim": dim, "load_seconds": loaded - started, "run_seconds": time.perf_counter() - loaded}
    (job / "done.json").write_text(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
