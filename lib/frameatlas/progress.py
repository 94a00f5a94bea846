"""Progress bars that suit where the code runs.

* In a terminal or in JupyterLab (by hand): live tqdm bars (widgets where available).
* Inside a stage notebook executed by the pipeline runner, bars never go into the notebook's
  outputs (so never into the HTML report): they are drawn on the runner's terminal
  (`FRAMEATLAS_PROGRESS=terminal`, the kernel's own stderr, which Jupyter does not capture) and
  leave a line in the stage log (`logs/<stage>.log`) every `LOG_EVERY_SECONDS` and when they
  end. `FRAMEATLAS_PROGRESS=log` (the runner's `--no-progress`) keeps only the log lines.
* `FRAMEATLAS_PROGRESS=off` silences them.

Example:
    >>> import os
    >>> os.environ[PROGRESS_ENV] = "off"
    >>> with progress_bar(total=3, desc="demo") as bar:
    ...     bar.update(3)
    >>> del os.environ[PROGRESS_ENV]
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["LOG_EVERY_SECONDS", "PROGRESS_ENV", "PROGRESS_LOGGER", "is_progress_record", "progress_bar", "terminal_stream"]

PROGRESS_ENV = "FRAMEATLAS_PROGRESS"
PROGRESS_LOGGER = "frameatlas.progress"
LOG_EVERY_SECONDS = 10.0
RUNNER_MODES = {"terminal", "log", "report"}  # "report": the older name of "terminal"

_log = logging.getLogger(PROGRESS_LOGGER)
_TERMINAL: list[TextIO] = []


def progress_mode() -> str:
    """auto, off, terminal or log (see the module docstring)."""
    mode = os.environ.get(PROGRESS_ENV, "auto").strip().lower()
    return "terminal" if mode == "report" else mode


def is_progress_record(record: logging.LogRecord) -> bool:
    """Whether a log record is a progress line (for the stage log only, not the terminal)."""
    return bool(getattr(record, "frameatlas_progress", False))


def terminal_stream() -> TextIO:
    """This process's real stderr, even inside a Jupyter kernel.

    A kernel replaces `sys.stderr` by a stream that becomes notebook output, and (ipykernel's
    `capture_fd_output`) points file descriptor 2 there too; its `fileno()` is then a copy of the
    original descriptor: the terminal of whoever started the kernel (the pipeline runner).
    """
    if not _TERMINAL:
        stream: TextIO = sys.__stderr__ or sys.stderr
        try:
            descriptor = sys.stderr.fileno()
            stream = os.fdopen(os.dup(descriptor), "w", buffering=1, encoding="utf-8", errors="replace")
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass
        _TERMINAL.append(stream)
    return _TERMINAL[0]


class _Discard(io.TextIOBase):
    """Where a bar that only logs draws itself."""

    def write(self, text: str) -> int:
        return len(text)


class _LoggedBar(tqdm):
    """A tqdm bar that also leaves a line in the log every `LOG_EVERY_SECONDS` and when it closes."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._logged_at = time.monotonic()
        self._logged_n: float | None = None
        super().__init__(*args, **kwargs)

    def _log_line(self) -> None:
        self._logged_at, self._logged_n = time.monotonic(), self.n
        _log.info("%s", self, extra={"frameatlas_progress": True})

    def display(self, msg: str | None = None, pos: int | None = None) -> bool | None:
        shown = super().display(msg, pos)
        if time.monotonic() - self._logged_at >= LOG_EVERY_SECONDS:
            self._log_line()
        return shown

    def close(self) -> None:
        if not self.disable and self._logged_n != self.n:
            self._log_line()
        super().close()


def progress_bar(total: float | None = None, desc: str = "", unit: str = "it", *, detail: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar configured for the current environment (see module docstring).

    `detail` bars (e.g. one per video inside an overall bar) are left out of runner-executed
    stages (their terminal and log would only repeat the overall bar).
    """
    mode = progress_mode()
    options: dict[str, Any] = {"total": total, "desc": desc, "unit": unit, "dynamic_ncols": True, **kwargs}
    if mode == "off" or (mode in RUNNER_MODES and detail):
        return tqdm(disable=True, **options)
    if mode in RUNNER_MODES:
        # disable=False: the runner turns other libraries' bars off (TQDM_DISABLE), not these.
        options.update(ascii=True, mininterval=options.get("mininterval", 1.0), disable=False)
        if mode == "terminal":
            return _LoggedBar(file=terminal_stream(), **options)
        options.pop("dynamic_ncols")
        return _LoggedBar(file=_Discard(), ncols=100, **options)
    from tqdm.auto import tqdm as auto_tqdm  # widgets in Jupyter, text in a terminal

    return auto_tqdm(**options)
