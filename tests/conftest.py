"""Shared fixtures: no network, no stray errors in the log, tiny generated videos."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/videogen.py

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["FRAMEATLAS_PROGRESS"] = "off"

# Tests neither see nor fill the user's caches: weights cached there (real CLIP, say) would change
# what a test runs, and term vectors or checksums of tiny test models do not belong there. numba's
# compile cache for UMAP is the exception: it changes no result and saves a minute per session.
from frameatlas.files import user_cache_dir  # noqa: E402  (reads no environment at import)

os.environ.setdefault("NUMBA_CACHE_DIR", str(user_cache_dir("numba")))
_TEST_CACHE = tempfile.mkdtemp(prefix="frameatlas-test-cache-")
atexit.register(shutil.rmtree, _TEST_CACHE, ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = _TEST_CACHE
os.environ["HF_HOME"] = os.path.join(_TEST_CACHE, "huggingface")

REPO = Path(__file__).resolve().parent.parent


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach another host fails the test (loopback stays allowed for Jupyter kernels)."""
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in {"127.0.0.1", "localhost", "::1"} and not host.startswith("/"):
            raise NetworkBlocked(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture(autouse=True)
def frameatlas_logging_restored():
    """A test that opens a stage in this process (its log handlers, `propagate = False`) leaves the
    logging set-up as it found it, so later tests' `caplog` still sees frameatlas records."""
    loggers = [logging.getLogger("frameatlas"), logging.getLogger("py.warnings")]
    saved = [(list(logger.handlers), logger.propagate, logger.level) for logger in loggers]
    yield
    for logger, (handlers, propagate, level) in zip(loggers, saved):
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.propagate, logger.level = propagate, level
    logging.captureWarnings(False)


@pytest.fixture(autouse=True)
def fail_on_logged_errors(caplog):
    """A test that makes frameatlas log an ERROR fails, unless it says it expects one."""
    caplog.set_level(logging.WARNING, logger="frameatlas")
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR and r.name.startswith("frameatlas")]
    if errors and not getattr(caplog, "errors_expected", False):
        pytest.fail("frameatlas logged errors: " + "; ".join(r.getMessage() for r in errors))


@pytest.fixture(autouse=True)
def fresh_models():
    """Every test loads its own encoders: a model registered by one test never leaks into another."""
    from frameatlas import models

    models.clear_loaded()
    yield
    models.clear_loaded()


@pytest.fixture
def expect_logged_errors(caplog):
    caplog.errors_expected = True
    return caplog


@contextmanager
def lock_held_elsewhere(run_root: Path | str, command: str) -> Iterator[subprocess.Popen]:
    """Another process holding the run's lock (as `command`) for the `with` block; yields it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom frameatlas.lock import run_lock\n"
         "with run_lock(sys.argv[1], sys.argv[2]):\n    print('held', flush=True)\n    sys.stdin.read()",
         str(run_root), command],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole session (see tests/browser.py)."""
    from browser import launch
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """One whole pipeline run (every stage, the tiny test CLIP, on-screen text read) on generated
    videos, made once per session by `run_pipeline.py`: the run folder. Shared: tests that write
    into a run copy it first (`shutil.copytree`)."""
    from runs import pipeline_run

    return pipeline_run(tmp_path_factory.mktemp("finished-run"))
