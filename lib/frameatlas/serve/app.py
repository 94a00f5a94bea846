"""The investigator's web app over one run: pages, a small JSON API, and the run's media.

Routes (everything else is 404):

* ``/`` the app; ``/static/{investigator.js, investigator.css, plotly.min.js}`` (plotly.js from
  the installed plotly package: the app works offline).
* ``/media/video/{video_id}`` a source video, with HTTP Range (206 Partial Content) so the
  browser can seek; ``/media/thumb/{frame_key}`` a frame's thumbnail; ``/media/subtitles/{video_id}``
  what is said in a video (the WebVTT file `tables/speech_videos.parquet` names); ``/media/export/{name}``
  a clip this server exported. Files are looked up by the ids in the run's tables, never by a
  path from the URL, and each is resolved inside the corpus or the run folder.
* ``GET /api/run`` videos and settings; ``POST /api/curves`` prompt curves for one video;
  ``GET /api/search`` (text, frame or an uploaded image; paged) and ``/api/search.csv``;
  ``POST /api/upload`` a query image; ``POST /api/export`` a clip with padding into
  ``RUN_DIR/exports/`` (under the run's lock; a speech hit's clip covers its utterance); ``POST /api/query`` a whole search result with the
  arguments of `frameatlas search`, which sends its queries here when this app runs (`serve.client`).

Bad parameters get 400 with the reason as JSON ``{"error": ...}``; unexpected errors are logged
with their traceback and answered with a 500 that carries none.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import threading
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..investigator.data import Prompt, RunView
from ..search import SearchError, SearchResult, search

log = logging.getLogger(__name__)

__all__ = ["create_app"]

MAX_PROMPTS = 24
MAX_TEXT = 500
MAX_UPLOAD_BYTES = 20 << 20
KEPT_UPLOADS = 32
MAX_TOP_K = 5000
STATIC_TYPES = {"investigator.js": "text/javascript", "investigator.css": "text/css"}
EXPORT_NAME = re.compile(r"^[A-Za-z0-9._-]+\.mp4$")


class BadRequest(HTTPException):
    def __init__(self, reason: str):
        super().__init__(400, reason)


def _static_file(name: str) -> Path:
    return Path(str(resources.files("frameatlas.investigator") / "static" / name))


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


# ---------------------------------------------------------------- parameters


def _int(params, name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{name}={raw!r}: must be a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name}={value}: must be from {low} to {high}")
    return value


def _float(value: Any, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name}={value!r}: must be a number from {low} to {high}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise BadRequest(f"{name}={value!r}: must be a number from {low} to {high}")
    return number


def _text(value: Any, name: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(f"{name}: must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise BadRequest(f"{name}: longer than {MAX_TEXT} characters")
    return value.strip()


async def _json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


# ---------------------------------------------------------------- the app


class Investigator:
    """The state of one served run: its view, uploaded query images, clips exported so far."""

    def __init__(self, view: RunView, warm: bool = False):
        self.view = view
        self.warm = warm  # load vectors and model after the first GET /api/run has been answered
        self.uploads: OrderedDict[str, Any] = OrderedDict()
        self.exports: dict[str, Path] = {}
        self._subtitles: tuple[int | None, dict[str, Path]] | None = None
        self._lock = threading.Lock()

    # ---- pages and files

    async def index(self, request: Request) -> Response:
        return FileResponse(_static_file("app.html"), media_type="text/html")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.min.js":
            return FileResponse(_plotly_js(), media_type="text/javascript")
        if name not in STATIC_TYPES:
            raise HTTPException(404)
        return FileResponse(_static_file(name), media_type=STATIC_TYPES[name])

    async def video(self, request: Request) -> Response:
        video = self.view.video(request.path_params["video_id"])
        if video is None or video.source is None or not video.source.is_file():
            raise HTTPException(404)
        return FileResponse(video.source, media_type="video/mp4")

    async def thumbnail(self, request: Request) -> Response:
        path = self.view.thumbnail(request.path_params["frame_key"])
        if path is None or not path.is_file():
            raise HTTPException(404)
        return FileResponse(path, media_type="image/jpeg")

    def subtitle_files(self) -> dict[str, Path]:
        """video_id -> its WebVTT file, as the run's speech table names them (re-read when the table changes)."""
        from ..speech import subtitle_files

        table = self.view.run.table("speech_videos")
        stamp = table.stat().st_mtime_ns if table.exists() else None
        if self._subtitles is None or self._subtitles[0] != stamp:
            self._subtitles = (stamp, subtitle_files(self.view.run))
        return self._subtitles[1]

    async def subtitles(self, request: Request) -> Response:
        path = self.subtitle_files().get(request.path_params["video_id"])
        if path is None or not path.is_file():
            raise HTTPException(404)
        return FileResponse(path, media_type="text/vtt")

    async def exported(self, request: Request) -> Response:
        path = self.exports.get(request.path_params["name"])
        if path is None or not path.is_file():
            raise HTTPException(404)
        return FileResponse(path, media_type="video/mp4")

    # ---- the API

    async def run(self, request: Request) -> Response:
        warm, self.warm = self.warm, False
        described = self.view.describe()
        from ..speech import spoken_languages

        said = self.subtitle_files()
        languages = spoken_languages(self.view.run) if said else {}
        for video in described["videos"]:  # the player's subtitle track, for videos with speech
            video["subtitles"] = f"/media/subtitles/{video['video_id']}" if video["video_id"] in said else None
            video["language"] = languages.get(video["video_id"])
        return JSONResponse(described, background=BackgroundTask(_warm, self.view) if warm else None)

    def _video_id(self, value: Any) -> str:
        if not isinstance(value, str) or self.view.video(value) is None:
            raise BadRequest(f"video_id={value!r}: not a video of this run (GET /api/run lists them)")
        return value

    def curves(self, body: dict) -> dict:
        video_id = self._video_id(body.get("video_id"))
        raw = body.get("prompts", [])
        if not isinstance(raw, list) or len(raw) > MAX_PROMPTS:
            raise BadRequest(f"prompts: must be a list of at most {MAX_PROMPTS} prompts")
        prompts = []
        for n, item in enumerate(raw):
            if isinstance(item, str):
                item = {"text": item}
            if not isinstance(item, dict):
                raise BadRequest(f"prompts[{n}]: must be a text or {{text, negative, weight}}")
            prompts.append(Prompt(
                _text(item.get("text"), f"prompts[{n}].text"),
                _text(item.get("negative") or None, f"prompts[{n}].negative", required=False),
                _float(item.get("weight", 1.0), f"prompts[{n}].weight", 0.0, 10.0),
            ))  # fmt: skip
        return self.view.curves(video_id, prompts).as_json()

    async def curves_endpoint(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        body = await _json_body(request)
        return JSONResponse(await run_in_threadpool(self.curves, body))

    async def upload(self, request: Request) -> Response:
        from PIL import Image, UnidentifiedImageError

        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            raise BadRequest(f"upload: {declared} bytes, more than {MAX_UPLOAD_BYTES} allowed")
        data = await request.body()
        if not data:
            raise BadRequest("upload: empty body; send the image's bytes")
        if len(data) > MAX_UPLOAD_BYTES:
            raise BadRequest(f"upload: {len(data)} bytes, more than {MAX_UPLOAD_BYTES} allowed")
        try:
            with Image.open(io.BytesIO(data)) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise BadRequest(f"upload: not a readable image ({error})") from None
        image_id = hashlib.sha256(data).hexdigest()[:16]
        with self._lock:
            self.uploads[image_id] = image
            self.uploads.move_to_end(image_id)
            while len(self.uploads) > KEPT_UPLOADS:
                self.uploads.popitem(last=False)
        return JSONResponse({"image_id": image_id, "width": image.width, "height": image.height})

    def _search(self, params) -> SearchResult:
        """Run `frameatlas.search.search` for the query in `params` (text, frame or image)."""
        given = [name for name in ("text", "frame", "image") if params.get(name)]
        if len(given) != 1:
            raise BadRequest("give exactly one of text, frame (a frame_key) or image (an id from POST /api/upload)")
        options = self.view.config.search
        query: dict[str, Any] = {}
        if params.get("text"):
            query["text"] = _text(params.get("text"), "text")
        elif params.get("frame"):
            query["frame_key"] = _text(params.get("frame"), "frame")
        else:
            image = self.uploads.get(params.get("image"))
            if image is None:
                raise BadRequest(
                    f"image={params.get('image')!r}: unknown or expired upload id; POST the image to /api/upload again"
                )
            query["image"] = image
        videos = params.getlist("video") if hasattr(params, "getlist") else []
        for video in videos:
            if not any(video in (v.video_id, v.name) for v in self.view.videos):
                raise BadRequest(f"video={video!r}: not a video of this run")
        threshold = params.get("threshold")
        try:
            return search(
                self.view.run, **query, top_k=_int(params, "top_k", max(options.top_k, 100), 1, MAX_TOP_K),
                threshold=_float(threshold, "threshold", 1e-6, 1.0) if threshold else options.threshold,
                relative=True if threshold else options.relative, videos=videos or None,
                suppress_seconds=_float(params.get("suppress", 0.0), "suppress", 0.0, 3600.0),
                min_text_score=options.min_text_score,
            )  # fmt: skip
        except SearchError as error:
            raise BadRequest(str(error)) from None

    def search_page(self, params) -> dict:
        page = _int(params, "page", 0, 0, 10_000)
        per_page = _int(params, "per_page", 12, 1, 200)
        result = self._search(params)
        hits = result.hits.iloc[page * per_page : (page + 1) * per_page]
        channels = [c for c in result.channels]
        rows = []
        for hit in hits.itertuples(index=False):
            row = hit._asdict()
            rows.append({
                "rank": int(row["rank"]), "score": float(row["score"]), "video_id": str(row["video_id"]),
                "video_name": str(row["video_name"]), "timestamp": float(row["timestamp"]), "frame_key": str(row["frame_key"]),
                "scores": {c: (None if pd.isna(row.get(f"score_{c}")) else float(row[f"score_{c}"])) for c in channels},
                "said": {"text": row["speech_text"], "start": float(row["speech_start"]), "end": float(row["speech_end"]),
                         "segment_id": row.get("speech_segment") or None}
                if row.get("speech_text") else None,  # the utterance the speech channel matched there
            })  # fmt: skip
        return {
            "query": result.query, "text": params.get("text") or None, "channels": channels, "notes": result.notes,
            "total": int(len(result.hits)), "page": page, "per_page": per_page, "hits": rows,
            "threshold_value": result.threshold_value,
        }  # fmt: skip

    async def search_endpoint(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        return JSONResponse(await run_in_threadpool(self.search_page, request.query_params))

    async def search_csv(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        result = await run_in_threadpool(self._search, request.query_params)
        return Response(result.hits.to_csv(index=False), media_type="text/csv",
                        headers={"content-disposition": 'attachment; filename="hits.csv"'})  # fmt: skip

    def query(self, body: dict) -> dict:
        """`search` with the arguments of `frameatlas search` (see `serve.client`): the whole
        result, its hits as a pandas "table" JSON and the text the CLI prints."""
        from ..search import format_hits

        def number(name: str, low: float, high: float) -> float | None:
            value = body.get(name)
            return None if value is None else _float(value, name, low, high)

        def names(name: str) -> list[str] | None:
            value = body.get(name)
            if value is None:
                return None
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise BadRequest(f"{name}: must be a list of strings")
            return value

        query: dict[str, Any] = {"text": body.get("text"), "frame_key": body.get("frame_key")}
        for name in ("text", "frame_key"):
            if query[name] is not None and not isinstance(query[name], str):
                raise BadRequest(f"{name}: must be a string")
        if body.get("image") is not None:
            query["image"] = self.uploads.get(body.get("image"))
            if query["image"] is None:
                raise BadRequest(
                    f"image={body.get('image')!r}: unknown or expired upload id; POST the image to /api/upload again"
                )
        time_range = body.get("time_range")
        if time_range is not None:
            if not isinstance(time_range, list) or len(time_range) != 2:
                raise BadRequest("time_range: must be [start, end] (either may be null)")
            time_range = tuple(None if t is None else _float(t, "time_range", -1e9, 1e9) for t in time_range)
        top_k = body.get("top_k", 20)
        if not isinstance(top_k, int) or isinstance(top_k, bool):
            raise BadRequest(f"top_k={top_k!r}: must be a whole number")
        try:
            result = search(
                self.view.run, **query, top_k=top_k, threshold=number("threshold", -1e9, 1e9),
                relative=bool(body.get("relative", True)), videos=names("videos"), time_range=time_range,
                suppress_seconds=number("suppress_seconds", 0.0, 1e9) or 0.0, channels=names("channels"),
                min_text_score=number("min_text_score", -1e9, 1e9),
            )  # fmt: skip
        except SearchError as error:
            raise BadRequest(str(error)) from None
        if "image" in query and isinstance(body.get("image_label"), str):
            result.query = f"image {body['image_label']}"  # the file the CLI uploaded, named as searching there would
        return {
            "query": result.query, "channels": result.channels, "notes": result.notes,
            "threshold_value": result.threshold_value, "hits": result.hits.to_json(orient="table", index=False),
            "text": format_hits(result),
        }  # fmt: skip

    async def query_endpoint(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        body = await _json_body(request)
        return JSONResponse(await run_in_threadpool(self.query, body))

    async def export_endpoint(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        from .export import ExportRefused, export_clip

        body = await _json_body(request)
        view = self.view
        if "frame_key" in body:
            frame_key = _text(body.get("frame_key"), "frame_key")
            if view.thumbnail(frame_key) is None:
                raise BadRequest(f"frame_key={frame_key!r}: not a frame of this run")
            request_args: dict[str, Any] = {"frame_key": frame_key}
            if body.get("segment_id") is not None:  # a speech hit: the clip covers the utterance it matched
                request_args["segment_id"] = _text(body.get("segment_id"), "segment_id")
        else:
            video_id = self._video_id(body.get("video_id"))
            duration = max(view.video(video_id).duration, 0.0) or 1e9
            start = _float(body.get("start"), "start", 0.0, duration)
            end = _float(body.get("end"), "end", 0.0, duration)
            if end < start:
                raise BadRequest(f"end={end} is before start={start}")
            request_args = {"video_id": video_id, "start": start, "end": end}
        try:
            clip = await run_in_threadpool(export_clip, view, **request_args)
        except ExportRefused as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        with self._lock:
            self.exports[clip.path.name] = clip.path
        return JSONResponse({"name": clip.path.name, "url": f"/media/export/{clip.path.name}", "duration": clip.duration,
                             "segments": clip.segments})  # fmt: skip


async def _http_error(request: Request, error: HTTPException) -> Response:
    if error.status_code == 404:
        return JSONResponse({"error": "not found"}, status_code=404)
    return JSONResponse({"error": error.detail}, status_code=error.status_code)


async def _server_error(request: Request, error: Exception) -> Response:
    log.error("serve: %s %s failed", request.method, request.url.path, exc_info=error)
    return JSONResponse({"error": "internal error; the server's log has the details"}, status_code=500)


def _warm(view: RunView) -> None:
    """Load what the first query needs (frame vectors, the image model, thumbnail paths), off the request path."""
    try:
        queries = view.settings()["queries"]
        if view.videos and queries:
            view.curves(view.videos[0].video_id, [Prompt(queries[0])])
        view.thumbnail("")
    except Exception as error:  # noqa: BLE001 - an optimisation only: the query itself will report the problem
        log.info("serve: warming up failed (%s); the first query loads what it needs", error)


def create_app(view: RunView, *, warm: bool = False) -> Starlette:
    """The Starlette app serving `view` (a `RunView` of a finished run); `warm`: see `serve`."""
    app_state = Investigator(view, warm)
    routes = [
        Route("/", app_state.index),
        Route("/static/{name}", app_state.static),
        Route("/media/video/{video_id}", app_state.video, methods=["GET", "HEAD"]),
        Route("/media/thumb/{frame_key}", app_state.thumbnail, methods=["GET", "HEAD"]),
        Route("/media/subtitles/{video_id}", app_state.subtitles, methods=["GET", "HEAD"]),
        Route("/media/export/{name}", app_state.exported, methods=["GET", "HEAD"]),
        Route("/api/run", app_state.run),
        Route("/api/curves", app_state.curves_endpoint, methods=["POST"]),
        Route("/api/search", app_state.search_endpoint),
        Route("/api/search.csv", app_state.search_csv),
        Route("/api/query", app_state.query_endpoint, methods=["POST"]),
        Route("/api/upload", app_state.upload, methods=["POST"]),
        Route("/api/export", app_state.export_endpoint, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.state.investigator = app_state
    return app
