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

__all__ = ["PROGRESS_ENV", "progress_bar"]

PROGRESS_ENV = "FRAMEATLAS_PROGRESS"


def progress_bar(
    total: float | None = None, desc: str = "", unit: str = "it", *, detail: bool = False, **kwargs: Any
) -> tqdm:
    """A tqdm bar configured for the current environment (see module docstring).

    `detail` bars (e.g. one per video inside an overall bar) are left out of saved reports.
    """
    mode = os.environ.get(PROGRESS_ENV, "auto")
    options: dict[str, Any] = {"total": total, "desc": desc, "unit": unit, "dynamic_ncols": True, **kwargs}
    if mode == "off" or (mode == "report" and detail):
        return tqdm(disable=True, **options)
    if mode == "report":
        options.setdefault("mininterval", 10.0)
        options.pop("dynamic_ncols")
        return tqdm(file=sys.stderr, ascii=True, ncols=100, **options)
    from tqdm.auto import tqdm as auto_tqdm  # widgets in Jupyter, text in a terminal

    return auto_tqdm(**options)
