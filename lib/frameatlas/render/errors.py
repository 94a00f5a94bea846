"""The one error type of the render stage."""

from __future__ import annotations

__all__ = ["RenderError"]


class RenderError(RuntimeError):
    """An output video that cannot be made; the message names the file and the reason.

    `sources` maps each input that caused it (a source video that is gone, a path refused, a
    thumbnail that cannot be read) to the reason; the stage lists them as skipped inputs.
    """

    def __init__(self, message: str, sources: dict[str, str] | None = None):
        super().__init__(message)
        self.sources = dict(sources or {})
