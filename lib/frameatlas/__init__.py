"""frameatlas: turn a folder of videos into a searchable, clustered, visual atlas of their frames."""

__version__ = "0.1.0"


def investigate(run, video=None, **options):
    """Show the investigator for one video of `run` inline in a notebook: the running
    `frameatlas serve` app if there is one, else the offline page 05_visualize wrote.
    See `frameatlas.investigator.jupyter.investigate` (imported on first use, so that
    `import frameatlas` stays light)."""
    from .investigator.jupyter import investigate as show

    return show(run, video, **options)
