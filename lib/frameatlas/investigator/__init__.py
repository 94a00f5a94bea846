"""The investigator: a video beside the similarity of prompts over time, with click-to-seek.

* `data`: a run read once (`RunView`) and the prompt curves of a video (visual channel, or the
  caption / on-screen text / speech channels when the image model has no text side);
* `static/`: the player and chart (plain JS over Plotly) shared by the offline pages and
  `frameatlas serve`.
"""

from .data import Curves, Line, NotARun, Prompt, RunView, check_run_folder

__all__ = ["Curves", "Line", "NotARun", "Prompt", "RunView", "check_run_folder"]
