"""`frameatlas search` next to a running `frameatlas serve`: the query goes to the server, whose
models and tables are loaded already, instead of loading them again in the CLI's process.

The server names itself in the run folder while it runs (`.frameatlas-serve.json`: url, pid,
run). A file whose process is gone, a server of another run, or one that does not answer is
passed over (a debug log line says why) and the CLI searches by itself as before. This module
imports only the standard library, so asking the server costs the CLI no pandas, no torch.

Example:
    >>> from frameatlas.serve.client import search_through_server
    >>> answer = search_through_server("outputs/demo", {"text": "a red car", "top_k": 10})  # doctest: +SKIP
    >>> print(answer["text"] if answer else "no server: search here")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["ADDRESS_FILE", "ServerRefused", "live_server", "search_through_server"]

#: Written by `frameatlas serve` into the run while it runs (also `frameatlas.investigator.jupyter.ADDRESS_FILE`,
#: which the investigator reads; kept here too so this client imports nothing but the standard library).
ADDRESS_FILE = ".frameatlas-serve.json"
QUERY_TIMEOUT = 120.0  # seconds; a server's first query may load its models


class ServerRefused(ValueError):
    """The server answered that the search cannot run (400); the message is the search's own."""


def live_server(run_dir: Path | str) -> str | None:
    """The URL of a `frameatlas serve` running on this very run, or None (no address file, its
    process is gone, or it serves another folder)."""
    path = Path(run_dir) / ADDRESS_FILE
    try:
        data = json.loads(path.read_text())
        pid, url, served = int(data["pid"]), str(data["url"]), data.get("run")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.debug("%s: unreadable (%s); searching without the server", path, error)
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        log.debug("%s names pid %d, which is gone (a server that was killed); searching without it", path, pid)
        return None
    except PermissionError:
        pass  # alive, another user's
    if served and Path(served).resolve() != Path(run_dir).resolve():
        log.debug("%s names a server of %s, not of this folder; searching without it", path, served)
        return None
    return url if url.endswith("/") else url + "/"


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the server is local: never via a proxy


def _post(url: str, data: bytes, content_type: str) -> dict[str, Any]:
    request = urllib.request.Request(url, data=data, method="POST", headers={"content-type": content_type})
    with _opener().open(request, timeout=QUERY_TIMEOUT) as response:
        return json.loads(response.read())


def search_through_server(
    run_dir: Path | str, arguments: dict[str, Any], *, image: Path | str | None = None
) -> dict[str, Any] | None:
    """Run `frameatlas.search.search(run_dir, **arguments)` on the server serving `run_dir`.

    `image`: a query image file, uploaded first. Returns the server's answer (`text` as the CLI
    prints it, `notes`, `hits` as pandas "table" JSON, ...), or None when no live server of this
    run answers (the caller then searches by itself). Raises `ServerRefused` with the search's
    error when the server says the query cannot run.
    """
    url = live_server(run_dir)
    if url is None:
        return None
    try:
        if image is not None:
            try:
                data = Path(image).read_bytes()
            except OSError:
                return None  # searching here names the unreadable file as it always did
            uploaded = _post(url + "api/upload", data, "application/octet-stream")
            arguments = {**arguments, "image": uploaded["image_id"], "image_label": str(image)}
        return _post(url + "api/query", json.dumps(arguments).encode(), "application/json")
    except urllib.error.HTTPError as error:
        if error.code == 400:
            try:
                message = json.loads(error.read()).get("error", "")
            except (ValueError, AttributeError):
                message = ""
            raise ServerRefused(message or f"the server refused the query ({error})") from None
        log.debug("the server at %s failed (%s); searching without it", url, error)
    except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
        log.debug("the server at %s does not answer (%s); searching without it", url, error)
    return None
