"""Find model weights on disk before any library is asked to load them.

Everything is resolved to local files first (a path given in the config, or the hub's
cache), so a model whose weights are cached loads with no network call at all, and a model
whose weights are missing fails at once with a useful message instead of after the hub's
retries. Downloading happens only when the machine is online and the user allowed it.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

__all__ = ["hf_cached_file", "hf_cached_snapshot", "hub_offline", "hub_reachable"]


def hub_offline() -> bool:
    """True when the user asked for no hub access (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(name, "").lower() in {"1", "true", "yes", "on"} for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 0.8) -> bool:
    """One TCP connection attempt to the hub, bounded by `timeout` (no retries)."""
    if hub_offline():
        return False
    url = urlparse(hub_endpoint())
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except (OSError, RuntimeError):  # RuntimeError: blocked in tests
        return False


def hf_cache_dir(cache_dir: str | Path | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_cached_file(repo_id: str, filename: str, cache_dir: str | Path | None = None) -> Path | None:
    """The cached copy of `filename` from hub repo `repo_id`, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_cache_dir(cache_dir)))
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def hf_cached_snapshot(repo_id: str, required: list[str], cache_dir: str | Path | None = None) -> Path | None:
    """The cached snapshot folder of `repo_id` holding all `required` files, or None."""
    paths = [hf_cached_file(repo_id, name, cache_dir) for name in required]
    if all(paths):
        return paths[0].parent  # type: ignore[union-attr]
    return None
