"""frameatlas: turn a folder of videos into a searchable, clustered, visual atlas of their frames."""

import sys

__version__ = "0.1.0"

# jsonschema (imported by chromadb, nbformat/papermill and ray) imports `rfc3987_syntax` when it is
# installed (jupyter-events' `jsonschema[format-nongpl]` brings it), and that module compiles an
# Earley grammar at import: 1.1-1.4 s in every runner, stage kernel and CLI process that touches the
# index or a notebook. frameatlas never checks the "iri" formats it serves, so its import is made to
# fail fast; jsonschema then leaves those two formats unchecked. A process that imported it already
# keeps it.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


def investigate(run, video=None, **options):
    """Show the investigator for one video of `run` inline in a notebook: the running
    `frameatlas serve` app if there is one, else the offline page 05_visualize wrote.
    See `frameatlas.investigator.jupyter.investigate` (imported on first use, so that
    `import frameatlas` stays light)."""
    from .investigator.jupyter import investigate as show

    return show(run, video, **options)
