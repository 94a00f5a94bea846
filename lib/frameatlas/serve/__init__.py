"""`frameatlas serve RUN_DIR`: the investigator as a local web app over one finished run.

Play a video beside the similarity of prompts over time (add, remove and subtract prompts live,
a threshold, click to seek), search the whole run by text, image or frame, export clips.
Tables are read once; models load on the first query that needs them and stay loaded.

It binds 127.0.0.1 unless told otherwise (and warns when told). While it runs, the run folder
holds `.frameatlas-serve.json` with its address (pid, url), removed when it stops, so other
tools can use the running app instead of loading models again. It writes nothing else into the
run but clips in `exports/`.

Example:
    $ frameatlas serve outputs/demo            # http://127.0.0.1:8765/
    >>> from frameatlas.serve import serve
    >>> serve("outputs/demo", port=8765)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from ..files import atomic_write_json
from ..lock import RunLocked, run_lock
from .client import ADDRESS_FILE

log = logging.getLogger(__name__)


def __getattr__(name: str):
    """`NotARun` and `running_app` come from the investigator, imported on first use: the CLI's
    client (`serve.client`) must not pay for pandas and the search module to talk to a server."""
    if name == "NotARun":
        from ..investigator.data import NotARun

        return NotARun
    if name == "running_app":
        from ..investigator.jupyter import running_app

        return running_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["ADDRESS_FILE", "DEFAULT_HOST", "DEFAULT_PORT", "NotARun", "running_app", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _announce(root: Path, address: dict | None) -> None:
    """Write (or with None, remove) the address file, briefly under the run's lock; if another
    process is writing into the run, say so and go on without it."""
    path = root / ADDRESS_FILE
    from ..investigator.jupyter import running_app

    try:
        with run_lock(root, "frameatlas serve (address file)"):
            if address is None:
                current = running_app(root)
                if current is None or current.get("pid") == os.getpid():
                    path.unlink(missing_ok=True)
            else:
                atomic_write_json(path, address)
    except RunLocked as error:
        log.warning("serve: could not %s %s: %s", "remove" if address is None else "write", path, error)
    except OSError as error:  # a read-only run folder: serving still works
        log.warning("serve: could not %s %s (%s)", "remove" if address is None else "write", path, error)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(run_dir: Path | str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          ready: Callable[[str], None] | None = None, warm: bool = True) -> None:  # fmt: skip
    """Serve the investigator for `run_dir` until interrupted (Ctrl-C).

    Raises `NotARun` (naming the folder) for a folder that is not a run, `OSError` when the
    port is taken. `port=0` picks a free port. `ready(url)` is called once it listens. With
    `warm`, the vectors and the image model load in the background once the first page has asked
    for the run (not before: they would slow that page down), so the first query waits less.
    """
    import uvicorn

    from ..investigator.data import RunView, check_run_folder
    from .app import create_app

    run = check_run_folder(run_dir)
    if host not in LOCAL_HOSTS:
        log.warning("serve: listening on %s: anyone who can reach this machine can read this run's videos and frames", host)
    view = RunView(run.root)
    app = create_app(view, warm=warm)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}/"

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        _announce(run.root, {"url": url, "host": host, "port": bound_port, "pid": os.getpid(), "run": str(run.root),
                             "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})  # fmt: skip
        if ready is not None:
            ready(url)
        try:
            yield
        finally:
            _announce(run.root, None)

    app.router.lifespan_context = lifespan
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if server.started and server.should_exit:
        # Stopped by Ctrl-C/SIGTERM. uvicorn re-raises the signal once it has shut down, but
        # asyncio's own SIGINT handler can turn that into a cancel the finished task ignores:
        # say it here, so the CLI always ends with the interrupted status.
        raise KeyboardInterrupt
