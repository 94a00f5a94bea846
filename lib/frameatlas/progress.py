"""Progress bars that suit where the code runs.

In a terminal or in JupyterLab you get live tqdm bars. Inside a notebook executed by the
pipeline runner (no live front-end) bars are drawn rarely, so the saved report keeps a
short trace instead of thousands of redraws; the runner sets `FRAMEATLAS_PROGRESS=report`.
`FRAMEATLAS_PROGRESS=off` silences them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm

__all__ = ["PROGRESS_ENV", "progress_bar"]

PROGRESS_ENV = "FRAMEATLAS_PROGRESS"


def progress_bar(total: float | None = None, desc: str = "", unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar configured for the current environment (see module docstring)."""
    mode = os.environ.get(PROGRESS_ENV, "auto")
    options: dict[str, Any] = {"total": total, "desc": desc, "unit": unit, "dynamic_ncols": True, **kwargs}
    if mode == "off":
        return tqdm(disable=True, **options)
    if mode == "report":
        options.setdefault("mininterval", 10.0)
        return tqdm(file=sys.stderr, ascii=True, ncols=100, **{k: v for k, v in options.items() if k != "dynamic_ncols"})
    return auto_tqdm(**options)
