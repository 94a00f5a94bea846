"""The one shape every stage's result takes: counts, skipped inputs, notes, models that ran.

Each stage function returns a subclass of `StageSummary` with its own extra fields (tables,
figures, files for the notebook); the runner only needs what this base defines, through
`StageContext.finish(summary)`.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class CountSummary(StageSummary):
    ...     frames: int = 0
    ...     @property
    ...     def counts(self):
    ...         return {"frames": self.frames}
    >>> CountSummary(frames=3, notes=["ok"]).result()["counts"]
    {'frames': 3}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .corpus import SkippedInput

__all__ = ["CombinedSummary", "StageSummary"]


@dataclass(kw_only=True)
class StageSummary:
    """Base of every stage's summary; subclasses add fields and override `counts` / `model_records`."""

    notes: list[str] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, Any]:
        """What the stage did, in numbers, for the manifest and the report."""
        return {}

    @property
    def model_records(self) -> list[dict[str, Any]]:
        """The models this stage ran (`ModelRecord.as_dict()` each), for the manifest."""
        return []

    def result(self) -> dict[str, Any]:
        """The stage's entry for the run manifest."""
        return {
            "counts": dict(self.counts),
            "skipped": [item.as_dict() for item in self.skipped],
            "notes": list(self.notes),
            "models": list(self.model_records),
        }


@dataclass(kw_only=True)
class CombinedSummary(StageSummary):
    """Several passes of one stage (captions + on-screen text) reported as one."""

    parts: list[StageSummary] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for part in self.parts:
            merged.update(part.counts)
        return merged

    @property
    def model_records(self) -> list[dict[str, Any]]:
        return [record for part in self.parts for record in part.model_records]

    @classmethod
    def of(cls, *parts: StageSummary) -> CombinedSummary:
        return cls(
            parts=list(parts),
            notes=[note for part in parts for note in part.notes],
            skipped=[item for part in parts for item in part.skipped],
            seconds=sum(part.seconds for part in parts),
        )
