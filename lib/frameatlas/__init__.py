"""frameatlas: turn a folder of videos into a searchable, clustered, visual atlas of their frames."""

__version__ = "0.1.0"
