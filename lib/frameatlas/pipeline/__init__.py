"""Orchestration: run the stage notebooks in order with papermill (the logic behind
`run_pipeline.py` and `frameatlas run`), and the notebook side of a stage.

- `registry`: the stages, their tables and their hooks;
- `notebook`: `open_stage` / `StageContext`, used inside each stage notebook;
- `execute`: one notebook run by papermill (time limit, atomic save), progress and logs kept
  out of it (they go to the terminal and `logs/<stage>.log`);
- `kernels`: the next stages' kernels started (and their imports done) while the current stage
  runs, a fresh kernel per notebook;
- `export`: its HTML report (summary, links, code behind toggles, light images, the run's plotly.js);
- `manifest`: `manifest.json`;
- `runner`: `run_pipeline`, fingerprints, the run's lock, the summary.

The runner injects the run directory and the resolved config, saves the executed notebook
to `outputs/<run>/reports/`, exports it to standalone HTML (in the background, while the next
stage runs), and records timings, counts and
skipped inputs in `manifest.json`. A stage whose parameters, inputs and code are unchanged
since its last successful execution is not executed again; a failed stage is re-executed on
the next run while the stages before it are kept. One writer at a time: the runner holds the
run's lock (`frameatlas.lock`) and hands it to the stage kernels it starts.

Example:
    >>> from frameatlas.pipeline import run_pipeline
    >>> exit_code = run_pipeline("pipeline.yaml", stages=["extract"])  # doctest: +SKIP
"""

from .execute import StageFailed, export_html, notebooks_dir
from .manifest import load_manifest
from .notebook import StageContext, open_stage
from .registry import STAGE_NAMES, STAGES, Stage
from .runner import EXIT_FAILED, EXIT_INVALID, EXIT_LOCKED, EXIT_OK, EXIT_SKIPPED_INPUTS, run_pipeline, stage_fingerprint

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_SKIPPED_INPUTS",
    "STAGES",
    "STAGE_NAMES",
    "Stage",
    "StageContext",
    "StageFailed",
    "export_html",
    "load_manifest",
    "notebooks_dir",
    "open_stage",
    "run_pipeline",
    "stage_fingerprint",
]
