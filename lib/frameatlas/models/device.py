"""Pick the device and thread count for torch models."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

__all__ = ["configure_threads", "pick_device", "usable_cpus"]


def pick_device(preference: str = "auto") -> str:
    """`auto` picks CUDA, then Apple MPS, then the CPU; anything else is taken as given."""
    import torch

    if preference != "auto":
        if preference.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"models.device = {preference!r} but CUDA is not available here; use auto or cpu")
        return preference
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_configured: int | None = None


def configure_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads once per process: `threads`, or every core when 0."""
    global _configured
    import torch

    wanted = threads or usable_cpus()
    if _configured != wanted:
        torch.set_num_threads(wanted)
        _configured = wanted
        log.debug("torch uses %d threads", wanted)
    return wanted
