"""The run dashboard (`outputs/<run>/index.html`) and the next steps printed at the end of a run.

The page is static and uses relative links only (no absolute local path appears on it), so the
whole run folder can be zipped and shared, or served from any web server. It opens with a summary
(videos, hours of footage, frames, clusters, time), says in one sentence per stage what happened,
shows the clusters (montages, keyframe strips) and the rendered videos (inline players), and says
why anything that is absent is absent, and what to do about a substituted model.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from .files import atomic_write_text
from .store import RunPaths

log = logging.getLogger(__name__)

__all__ = [
    "cli_has_command",
    "format_duration",
    "model_banners",
    "next_step_lines",
    "next_steps",
    "remedies",
    "run_reference",
    "without_local_paths",
    "write_dashboard",
]

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("frameatlas", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)

_ENV.filters["basename"] = lambda path: Path(str(path)).name

FALLBACK_PREFIX = "fallback-"  # model ids of the weight-free image descriptor
# An absolute path in text (an error message, a reason): not preceded by a word, a dot, a slash or a colon,
# so URLs, dates and relative paths are left alone.
_ABSOLUTE_PATH = re.compile(r"(?<![\w./:~])/(?:[\w.+@-]+/)+([\w.+@-]*)")


def without_local_paths(text: str, run: RunPaths, manifest: dict[str, Any]) -> str:
    """`text` with every absolute local path made relative: inside the run, relative to it; in the
    corpus, relative to the videos folder; the home folder as ~; any other path as …/its-name.

    Example:
        >>> run = RunPaths("/data/atlas/outputs/demo")
        >>> without_local_paths("bad frame /data/atlas/outputs/demo/frames/a.jpg in /opt/x/y.mp4", run, {})
        'bad frame frames/a.jpg in …/y.mp4'
    """
    corpus = ((manifest.get("config") or {}).get("corpus") or {}).get("videos")
    prefixes = [(str(run.root) + "/", ""), (str(run.root), ".")]
    if corpus:
        prefixes.append((str(corpus).rstrip("/") + "/", f"{Path(str(corpus)).name}/"))
    prefixes.append((str(Path.home()) + "/", "~/"))
    for prefix, replacement in prefixes:
        text = text.replace(prefix, replacement)
    return _ABSOLUTE_PATH.sub(lambda match: f"…/{match.group(1)}", text)


def model_banners(manifest: dict[str, Any]) -> list[str]:
    """Warnings every report must show: models that were substituted, and what that turns off."""
    from .models import ModelRecord

    banners = []
    for record in manifest.get("models", []):
        banner = ModelRecord(**record).banner
        if banner:
            banners.append(banner)
    return banners


def format_duration(seconds: float | None) -> str:
    """Seconds as people read them.

    Example:
        >>> format_duration(42.31), format_duration(645.78), format_duration(7380)
        ('42.3 s', '10 min 46 s', '2 h 3 min')
    """
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


# --- what to do next -------------------------------------------------------------------------------


def run_reference(run: RunPaths, manifest: dict[str, Any], *, start: Path | None = None) -> str:
    """How a command names the run folder: relative to `start` (the terminal's folder), else to the
    config file's folder (the dashboard: a shared page names no local folder), else by its name."""
    bases = [start] if start is not None else []
    config_file = manifest.get("config_file")
    if config_file:
        bases.append(Path(config_file).parent)
    for base in bases:
        try:
            return run.root.resolve().relative_to(Path(base).resolve()).as_posix() or "."
        except ValueError:
            continue
    return str(run.root) if start is not None else run.root.name


def _image_record(manifest: dict[str, Any]) -> dict[str, Any]:
    return next((m for m in manifest.get("models", []) if m.get("kind") == "image"), {})


def _has_clip_text(manifest: dict[str, Any]) -> bool:
    image = _image_record(manifest)
    return bool(image) and not str(image.get("model_id", "")).startswith(FALLBACK_PREFIX)


def _answered_query(run: RunPaths) -> str | None:
    """A `search.queries` entry the render stage could answer (its video has segments)."""
    path = run.table("render_videos")
    if not path.exists():
        return None
    videos = pd.read_parquet(path)
    answered = videos[(videos.kind == "query") & (videos.segments > 0) & videos.status.isin(["rendered", "cached"])]
    return next((str(title).strip() for title in answered.title if str(title).strip()), None)


def _ocr_query(run: RunPaths) -> str | None:
    """The most frequent line of on-screen text (lower-cased; lines of several words first): the OCR
    channel answers it, since frames show exactly that text. OCR often runs big words together
    ("BIGBUCKBUNNY"), so one-word lines count too."""
    path = run.table("ocr")
    if not path.exists():
        return None
    texts = pd.read_parquet(path, columns=["text"]).text.dropna().astype(str)
    lines = Counter(
        line.strip().lower() for text in texts for line in text.splitlines()
        if sum(c.isalpha() for c in line) >= max(3, 0.7 * len(line.replace(" ", "")))
    )  # fmt: skip
    if not lines:
        return None
    return max(lines, key=lambda line: (len(line.split()) >= 2, lines[line], -len(line)))


def _caption_query(run: RunPaths) -> str | None:
    """A cluster named from its captions: the caption channel answers its terms."""
    path = run.table("clusters")
    if not path.exists():
        return None
    clusters = pd.read_parquet(path, columns=["labelling", "name", "name_source"])
    latest = clusters[(clusters.labelling == clusters.labelling.iloc[-1]) & (clusters.name_source == "captions")]
    return str(latest.name.iloc[0]).replace(",", "") if len(latest) else None


def _sample_frame(run: RunPaths) -> str | None:
    path = run.table("embeddings")
    if not path.exists():
        return None
    keys = pd.read_parquet(path, columns=["frame_key"]).frame_key
    return str(keys.iloc[len(keys) // 2]) if len(keys) else None


def cli_has_command(name: str) -> bool:
    """Whether this installation's `frameatlas` command line has the sub-command `name`.

    The CLI sits above this layer, so it is not imported here: every entry point (`frameatlas`,
    `run_pipeline.py`) has loaded it already; without it nothing is claimed.
    """
    cli = sys.modules.get("frameatlas.cli")
    if cli is None or not hasattr(cli, "build_parser"):
        return False
    parser = cli.build_parser()
    return any(name in action.choices for action in parser._actions if isinstance(action, argparse._SubParsersAction))


def next_steps(run: RunPaths, manifest: dict[str, Any], run_ref: str) -> list[dict[str, str]]:
    """Commands that work on this run, each with what it does: open the dashboard, a text search
    some channel of this run can answer (CLIP's text side, else a query the render stage answered,
    else a line of on-screen text, else a caption term), a search by one of its frames, and the
    investigator when this installation has it."""
    steps = [{"what": "Open the dashboard in a browser", "command": f"{run_ref}/index.html"}]
    queries = (manifest.get("config") or {}).get("search", {}).get("queries") or []
    text_query, channel = None, ""
    if _has_clip_text(manifest) and queries:
        text_query, channel = queries[0], "CLIP's text side"
    if text_query is None and (answered := _answered_query(run)):
        text_query, channel = answered, "the captions, on-screen text or speech of this run"
    if text_query is None and (ocr := _ocr_query(run)):
        text_query, channel = ocr, "the on-screen text channel"
    if text_query is None and (caption := _caption_query(run)):
        text_query, channel = caption, "the caption channel"
    if text_query:
        steps.append({"what": f"Search by text (answered by {channel})",
                      "command": f"frameatlas search {shlex.quote(run_ref)} {shlex.quote(text_query)} --top-k 10"})  # fmt: skip
    if frame := _sample_frame(run):
        steps.append({"what": "Find frames that look like one frame",
                      "command": f"frameatlas search {shlex.quote(run_ref)} --frame {shlex.quote(frame)} --top-k 10"})  # fmt: skip
    if cli_has_command("serve"):
        steps.append(
            {"what": "Play, search and export in the investigator", "command": f"frameatlas serve {shlex.quote(run_ref)}"}
        )
    return steps


def remedies(manifest: dict[str, Any], config_ref: str = "pipeline.yaml") -> list[dict[str, Any]]:
    """For each substituted model: what happened, and the exact commands that undo it."""
    config = manifest.get("config") or {}
    found = []
    for record in manifest.get("models", []):
        if not record.get("fallback_reason"):
            continue
        kind, requested = record.get("kind"), str(record.get("requested", ""))
        steps: list[str] = []
        if kind == "image":
            image = (config.get("models") or {}).get("image") or {}
            name, pretrained = image.get("name") or requested.split("/")[0], image.get("pretrained")
            download = f"frameatlas models download {shlex.quote(str(name))}"
            if pretrained and not str(pretrained).startswith(("/", ".")):
                download += f" --pretrained {shlex.quote(str(pretrained))}"
            steps = [
                f"{download}   # on a machine that reaches huggingface.co; prints the weights file",
                f"# copy that file here and set models.image.pretrained: <that file> in {config_ref}"
                " (or copy the whole hub cache and point HF_HOME at it)",
            ]
        elif kind == "caption":
            steps = [
                f"frameatlas models download {shlex.quote(requested)} --kind caption   # on a connected machine",
                "# copy the printed folder here and set caption.caption_model: <that folder>"
                f" in {config_ref} (or copy the hub cache and point HF_HOME at it)",
            ]
        elif kind == "ocr":
            steps = ["pip install rapidocr-onnxruntime   # ships its weights: nothing else to download"]
        steps.append(f"frameatlas run {config_ref}   # the stages that used the substitute run again")
        found.append({"kind": kind, "requested": requested, "used": record.get("model_id"),
                      "reason": record.get("fallback_reason"), "off": record.get("disabled_features") or [],
                      "commands": steps})  # fmt: skip
    return found


# --- the dashboard ---------------------------------------------------------------------------------

STATUS_LEGEND = [
    ("done", "ran in this invocation or an earlier one, and finished; the time is how long it took"),
    ("unchanged", "not run again: its inputs, parameters and code are the same as when it last ran, "
                  "so its results (and the time shown, marked “earlier”) are from that run"),
    ("failed", "stopped with an error (shown above); the next run resumes it with its cached work"),
    ("disabled", "switched off in the config (`enabled: false`)"),
    ("not run", "not asked for in any invocation yet (`--stages` left it out)"),
]  # fmt: skip


def _count(counts: dict[str, Any], key: str, default: Any = 0) -> Any:
    value = counts.get(key, default)
    return default if value is None else value


def _stage_sentence(name: str, counts: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """One plain sentence about what a stage did, and its few key numbers."""
    c = counts
    if name == "extract":
        footage = format_duration(_count(c, "video_seconds", None))
        sentence = (f"Sampled {_count(c, 'frames')} frames from {_count(c, 'videos')} videos ({footage} of footage); "
                    f"{_count(c, 'videos_cached')} of them reused from earlier runs.")  # fmt: skip
        return sentence, [("frames", str(_count(c, "frames"))), ("videos", str(_count(c, "videos"))), ("footage", footage)]
    if name == "caption":
        parts, numbers = [], []
        if _count(c, "frames_captioned") or _count(c, "frames_cached"):
            parts.append(f"Wrote a text prompt for each of {_count(c, 'frames')} frames (caption model: "
                         f"{c.get('caption_model', '—')}, terms ranked by {c.get('clip_model', '—')}).")  # fmt: skip
            numbers.append(("prompts", str(_count(c, "frames"))))
        elif str(c.get("clip_model", "")).startswith(FALLBACK_PREFIX):
            parts.append("No captions: the weight-free fallback image model cannot rank words, and no caption model ran.")
        else:
            parts.append("No captions were written.")
        if "ocr_frames_read" in c:
            read, cached, per_frame = _count(c, "ocr_frames_read"), _count(c, "ocr_frames_cached"), c.get("ocr_seconds_per_frame")
            with_text = f"{_count(c, 'ocr_frames_with_text')} show text"
            if read:
                earlier = f" ({cached} more from earlier runs)" if cached else ""
                timing = f" ({per_frame:.2f} s per frame read)" if isinstance(per_frame, (int, float)) else ""
                parts.append(f"Read on-screen text on {read} frames{earlier}; {with_text}{timing}.")
            else:  # a re-run with every frame's text cached: "read on 0 frames (0.00 s per frame)" said nothing
                parts.append(f"On-screen text of {cached} frames, all from earlier runs; {with_text}.")
            numbers.append(("frames with text", str(_count(c, "ocr_frames_with_text"))))
        reused = [(_count(c, key), what) for key, what in (("frames_caption_reused", "caption"), ("ocr_frames_reused", "text"))]
        if any(count for count, _ in reused):  # near-duplicate frames (caption.reuse_distance, caption.ocr.reuse_distance)
            parts.append("Frames nearly identical to an earlier frame of their video took its result instead of being read again: "
                         + ", ".join(f"{count} for the {what}" for count, what in reused if count) + ".")  # fmt: skip
        if _count(c, "ocr_frames_gated"):  # caption.ocr.gate_short_side
            parts.append(f"{_count(c, 'ocr_frames_gated')} frames showed no text candidate to a small, quick detection "
                         "and were not read at full size.")  # fmt: skip
        if "speech_segments" in c:
            transcribed = _count(c, "speech_videos_transcribed") + _count(c, "speech_videos_cached")
            parts.append(f"Transcribed what is said in {transcribed} videos with {c.get('speech_model', 'Whisper')}: "
                         f"{_count(c, 'speech_segments')} utterances, {_count(c, 'speech_words')} words"
                         f" ({_count(c, 'speech_videos_no_audio')} videos have no sound).")  # fmt: skip
            numbers.append(("utterances", str(_count(c, "speech_segments"))))
        return " ".join(parts), numbers
    if name == "embed":
        rate = c.get("frames_per_second")
        sentence = (f"Turned {_count(c, 'frames')} frames into vectors with {c.get('model', 'the image model')} "
                    f"({_count(c, 'frames_cached')} reused) and stored them in the search index.")  # fmt: skip
        numbers = [("vectors", str(_count(c, "frames")))]
        if isinstance(rate, (int, float)) and rate:
            numbers.append(("frames/s", f"{rate:.1f}"))
        return sentence, numbers
    if name == "cluster":
        noise = _count(c, "noise")
        placed = c.get("fit") == "placed"  # new frames put into the kept k-means fit (cluster.refit_new_fraction)
        sentence = (f"Grouped {_count(c, 'frames')} frames into {_count(c, 'clusters')} clusters ({c.get('params', '')}), "
                    f"named from {c.get('name_source') or 'nothing'}"
                    + (f"; {_count(c, 'placed_frames')} new frames placed into the kept clustering, earlier frames keep "
                       "their clusters" if placed else "")
                    + (f"; {noise} frames fit no cluster." if noise else "."))  # fmt: skip
        return sentence, [("clusters", str(_count(c, "clusters"))), ("keyframes", str(_count(c, "keyframes")))]
    if name == "visualize":
        projections = c.get("projections") or "—"
        timelines = _count(c, "timeline_videos")
        placed = c.get("projections_placed")  # new frames put into kept fits instead of refitting (visualize.refit_new_fraction)
        sentence = (f"Drew {_count(c, 'map_points')} frames in 3D ({projections}"
                    + (f"; {_count(c, 'frames_placed')} new frames placed into the kept {placed} fits" if placed else "") + ")"
                    + (f" and similarity timelines for {timelines} videos." if timelines else "; no timelines (see below)."))  # fmt: skip
        return sentence, [("maps", str(len(str(projections).split(",")) if c.get("projections") else 0)),
                          ("timelines", str(timelines))]  # fmt: skip
    if name == "render":
        sentence = (f"Cut {_count(c, 'rendered') + _count(c, 'cached')} videos ({_count(c, 'cluster_videos')} clusters, "
                    f"{_count(c, 'query_videos')} {'query' if _count(c, 'query_videos') == 1 else 'queries'}) from {_count(c, 'segments')} segments, "
                    f"{format_duration(_count(c, 'output_seconds', None))} in all"
                    + (f"; {_count(c, 'failed')} failed." if _count(c, "failed") else "."))  # fmt: skip
        return sentence, [("videos", str(_count(c, "rendered") + _count(c, "cached"))), ("segments", str(_count(c, "segments")))]
    if name == "classify":
        sentence = (f"Classified {_count(c, 'videos')} videos in {_count(c, 'samples')} samples (videos and windows) from "
                    f"{_count(c, 'modalities')} modalities" + (
                        f"; {c.get('chosen')} reached accuracy {c.get('accuracy', 0):.2f}, macro-F1 {c.get('macro_f1', 0):.2f} "
                        f"cross-validated by video on {_count(c, 'labelled')} labelled samples." if "accuracy" in c
                        else "; zero-shot only (no labels)."))  # fmt: skip
        return sentence, [("classes", str(_count(c, "classes"))), ("samples", str(_count(c, "samples")))]
    numeric = [(k.replace("_", " "), str(v)) for k, v in c.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return "", numeric[:3]


def _classes(run: RunPaths, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Per video, the classify stage's answer (trained, else zero-shot) from tables/predictions.parquet
    (or another run's model's, `frameatlas classify --predict`); none once the stage is switched off."""
    path = run.table("predictions")
    if not path.exists() or (manifest.get("stages", {}).get("classify") or {}).get("status") == "disabled":
        return []
    table = pd.read_parquet(path)
    videos = table[(table.level == "video") & ((table.source != "zero-shot") | (table.modality == "zero-shot"))]
    rows = []
    for _, group in sorted(videos.groupby("video_id"), key=lambda item: (item[1].video_name.iat[0], item[0])):
        trained = group[group.source != "zero-shot"]  # one video per id: names may repeat across folders
        shot = group[group.modality == "zero-shot"]
        row = {"video": group.video_name.iat[0], "label": None, "probability": None, "how": "", "truth": None, "zero_shot": None}
        if len(trained):
            first = trained.iloc[0]
            row.update(label=first.label, probability=float(first.probability), how=f"{first.modality} ({first.split})",
                       truth=first.true_label if pd.notna(first.true_label) else None)  # fmt: skip
        if len(shot):
            row["zero_shot"] = f"{shot.label.iat[0]} ({float(shot.probability.iat[0]):.2f})"
            if row["label"] is None:
                row.update(label=shot.label.iat[0], probability=float(shot.probability.iat[0]), how="zero-shot")
        rows.append(row)
    return rows


def _stages(run: RunPaths, manifest: dict[str, Any], stage_names: Sequence[str]) -> list[dict[str, Any]]:
    recorded = manifest.get("stages", {})
    rows = []
    for name in [*stage_names, *[n for n in recorded if n not in stage_names]]:
        entry = recorded.get(name, {})
        status = entry.get("status", "not run")
        report, notebook = entry.get("report"), entry.get("notebook")
        sentence, numbers = _stage_sentence(name, entry.get("counts") or {}) if entry.get("counts") else ("", [])
        rows.append({
            **entry, "name": name, "status": status, "sentence": sentence, "numbers": numbers,
            "raw_counts": entry.get("counts") or {},
            "report": report if report and (run.root / report).is_file() else None,
            "notebook": notebook if notebook and (run.root / notebook).is_file() else None,
            "earlier": status == "unchanged",
        })  # fmt: skip
    return rows


def _videos(run: RunPaths) -> list[dict[str, Any]]:
    path = run.table("videos")
    if not path.exists():
        return []
    videos = pd.read_parquet(path).sort_values("video_name")
    strips = _keyframe_strips(run)
    rows = []
    for video in videos.to_dict("records"):
        sheet = run.contact_sheet(video["video_id"])
        video["contact_sheet"] = run.relative(sheet) if sheet.exists() else None
        video["keyframe_strip"] = strips.get(video["video_id"])
        video.pop("video_path", None)  # a local absolute path: not on a page meant to be shared
        rows.append(video)
    return rows


def _keyframe_strips(run: RunPaths) -> dict[str, str]:
    folder = run.root / "plots" / "keyframes"
    strips = {}
    for path in sorted(folder.glob("*.png")) if folder.is_dir() else []:
        video_id = path.stem.rsplit("-", 1)[-1]
        strips[video_id] = run.relative(path)
    return strips


def _clusters(run: RunPaths) -> list[dict[str, Any]]:
    if not run.table("clusters").exists() or not run.table("frames").exists():
        return []
    from .cluster.stage import cluster_table

    try:
        table = cluster_table(run)
    except Exception as error:  # the dashboard must still be written; the cluster report has the detail
        log.warning("dashboard: cannot summarise the clusters: %s", error)
        return []
    rendered: dict[int, str] = {}  # cluster label -> its rendered video (named cluster_NN_<name>)
    for video in _rendered_videos(run):
        if video.get("kind") == "cluster" and (match := re.match(r"cluster_(\d+)_", str(video.get("name", "")))):
            rendered[int(match.group(1))] = video["path"]
    rows = []
    for cluster in table.to_dict("records"):
        montage = cluster.get("montage")
        rows.append({
            "label": cluster["label"], "name": cluster["name"], "name_source": cluster["name_source"],
            "size": cluster["size"], "share": cluster["share"], "videos": cluster["videos"],
            "montage": montage if montage and (run.root / montage).is_file() else None,
            "video": rendered.get(int(cluster["label"])),
        })  # fmt: skip
    return rows


def _rendered_videos(run: RunPaths) -> list[dict[str, Any]]:
    """The render stage's outputs that exist on disk, clusters first (from tables/render_videos)."""
    import markupsafe

    from .speech import subtitle_track

    path = run.table("render_videos")
    if not path.exists():
        return []
    posters = _render_posters(run)
    rows = []
    for video in pd.read_parquet(path).to_dict("records"):
        if video.get("path") and (run.root / video["path"]).is_file():
            sheet = video.get("contact_sheet")
            video["contact_sheet"] = sheet if sheet and (run.root / sheet).is_file() else None
            vtt = (run.root / video["path"]).with_suffix(".vtt")  # the speech heard in it (render stage)
            video["subtitles"] = markupsafe.Markup(subtitle_track(vtt))
            video["poster"] = posters.get(video.get("name"))
            rows.append(video)
    return rows


def _render_posters(run: RunPaths) -> dict[str, str]:
    """Rendered video name -> the thumbnail of its best-scoring segment's best frame, shown before the video
    plays (a rendered video opens on its title card, which would leave every player on the page alike)."""
    segments_path, frames_path = run.table("render_segments"), run.table("frames")
    if not segments_path.exists() or not frames_path.exists():
        return {}
    try:
        segments = pd.read_parquet(segments_path, columns=["name", "video_id", "score", "best_timestamp"])
        frames = pd.read_parquet(frames_path, columns=["video_id", "timestamp", "thumbnail"])
    except Exception as error:  # noqa: BLE001 - players without a poster still play
        log.warning("dashboard: no posters for the rendered videos: %s", error)
        return {}
    frames_by_video = {video_id: group.sort_values("timestamp") for video_id, group in frames.groupby("video_id")}
    posters = {}
    for name, group in segments.dropna(subset=["best_timestamp"]).groupby("name"):
        best = group.sort_values("score", ascending=False, kind="stable").iloc[0]
        candidates = frames_by_video.get(best.video_id)
        if candidates is None or not len(candidates):
            continue
        nearest = candidates.iloc[int((candidates.timestamp - best.best_timestamp).abs().to_numpy().argmin())]
        if (run.root / str(nearest.thumbnail)).is_file():
            posters[str(name)] = str(nearest.thumbnail)
    return posters


def _interactive_pages(run: RunPaths) -> list[dict[str, str]]:
    """Standalone pages under plots/ (3D maps, timelines, investigator pages), maps first."""
    folder = run.root / "plots"
    patterns = ("map_*.html", "timeline_*.html", "investigate_*.html")
    pages = [page for pattern in patterns for page in sorted(folder.glob(pattern))] if folder.is_dir() else []
    return [{"href": run.relative(page), "title": page.stem.replace("_", " ")} for page in pages]


def _absences(
    run: RunPaths, manifest: dict[str, Any], stages: list[dict[str, Any]], pages, clusters, rendered
) -> list[dict[str, str]]:
    """What a reader may look for and not find, each with the reason."""
    by_name = {stage["name"]: stage for stage in stages}
    fallback = not _has_clip_text(manifest) and bool(_image_record(manifest))
    config = manifest.get("config") or {}
    absent = []

    def stage_reason(name: str) -> str:
        status = by_name.get(name, {}).get("status", "not run")
        return {"disabled": f"the {name} stage is disabled in the config", "failed": f"the {name} stage failed (see above)",
                "not run": f"the {name} stage has not run yet"}.get(status, "")  # fmt: skip

    if not any(page["title"].startswith("timeline") for page in pages):
        notes = [n for n in by_name.get("visualize", {}).get("notes", []) if "timeline" in n]
        if stage_reason("visualize"):
            why = stage_reason("visualize")
        elif fallback:
            why = "timelines need CLIP: the weight-free fallback image model has no text side to score frames against the queries"
        elif not (config.get("visualize") or {}).get("timelines", True):
            why = "visualize.timelines is false in the config"
        else:
            why = notes[0] if notes else "no timelines were drawn (see reports/05_visualize.html)"
        absent.append({"what": "Similarity timelines", "why": why})
    if not any(page["title"].startswith("map") for page in pages):
        absent.append({"what": "3D maps", "why": stage_reason("visualize") or "no map was drawn (see reports/05_visualize.html)"})
    captions = by_name.get("caption", {}).get("raw_counts", {})
    if by_name.get("caption", {}).get("status") in {"done", "unchanged"} and not (
        captions.get("frames_captioned") or captions.get("frames_cached")
    ):
        why = (
            "captions need CLIP to rank words, or a caption model (caption.caption_model): this run has the "
            "weight-free fallback and no caption model"
            if fallback
            else "no caption model or CLIP ranking produced text"
        )
        absent.append({"what": "Captions (and the caption search channel, caption-named clusters)", "why": why})
    elif stage_reason("caption"):
        absent.append({"what": "Captions and on-screen text", "why": stage_reason("caption")})
    if not clusters:
        absent.append(
            {"what": "Clusters", "why": stage_reason("cluster") or "no clustering is stored in tables/clusters.parquet"}
        )
    if not rendered:
        absent.append(
            {
                "what": "Rendered videos",
                "why": stage_reason("render") or "the render stage made no video (see reports/06_render.html)",
            }
        )
    return absent


def _models(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for model in manifest.get("models", []):
        weights = model.get("weights")
        rows.append({**model, "weights": Path(str(weights)).name if weights else None})  # the name only: no local path
    return rows


def _summary(manifest: dict[str, Any], videos, clusters) -> dict[str, Any]:
    stages = manifest.get("stages", {})
    extract = (stages.get("extract") or {}).get("counts") or {}
    footage = sum(float(v.get("duration") or 0) for v in videos) or extract.get("video_seconds")
    return {
        "videos": len(videos) or extract.get("videos", 0),
        "footage": format_duration(footage) if footage else "—",
        "hours": f"{footage / 3600:.2f}" if footage else "0",
        "frames": extract.get("frames", sum(int(v.get("frames_sampled") or 0) for v in videos)),
        "clusters": sum(1 for c in clusters if c["label"] >= 0),
        # manifests from before invocations were recorded have one total, of their last invocation
        "cumulative": format_duration(manifest.get("cumulative_seconds", manifest.get("total_seconds"))),
        "last": format_duration(manifest.get("last_invocation_seconds")),
        "invocations": len(manifest.get("invocations", [])),
    }


def write_dashboard(run: RunPaths, manifest: dict[str, Any], stage_names: Sequence[str] = ()) -> Path:
    """Render `index.html` from the manifest and the run's tables; `stage_names` (the pipeline's
    stages in order) adds rows for stages that have not run yet."""
    stages = _stages(run, manifest, stage_names)
    videos, clusters = _videos(run), _clusters(run)
    pages, rendered = _interactive_pages(run), _rendered_videos(run)
    config_file = manifest.get("config_file")
    config_ref = Path(config_file).name if config_file else "pipeline.yaml"
    run_ref = run_reference(run, manifest)
    html = _ENV.get_template("dashboard.html.j2").render(
        manifest=manifest, summary=_summary(manifest, videos, clusters), stages=stages, legend=STATUS_LEGEND,
        videos=videos, clusters=clusters, skipped=manifest.get("skipped_inputs", []), banners=model_banners(manifest),
        remedies=remedies(manifest, config_ref), models=_models(manifest), pages=pages, rendered=rendered,
        absent=_absences(run, manifest, stages, pages, clusters, rendered), steps=next_steps(run, manifest, run_ref),
        config_name=config_ref, run_ref=run_ref, classes=_classes(run, manifest),
        steps_from=f"the folder of {config_ref}" if "/" in run_ref else f"the folder holding {run_ref}/",
    )  # fmt: skip
    atomic_write_text(run.dashboard, without_local_paths(html, run, manifest))
    return run.dashboard


def _shown_from_here(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def next_step_lines(run: RunPaths, manifest: dict[str, Any]) -> list[str]:
    """The end-of-run lines: commands that work on this run, and the remedy for any substitution."""
    run_ref = run_reference(run, manifest, start=Path.cwd())
    config_file = manifest.get("config_file")
    config_ref = _shown_from_here(Path(config_file)) if config_file else "pipeline.yaml"
    lines = ["", "Next steps:"]
    for step in next_steps(run, manifest, run_ref):
        lines.append(f"  {step['what']}:\n    {step['command']}")
    for remedy in remedies(manifest, shlex.quote(config_ref)):
        off = ", ".join(remedy["off"]) or "nothing"
        lines.append(f"The {remedy['kind']} model {remedy['requested']} was replaced by {remedy['used']} "
                     f"({remedy['reason']}); off in this run: {off}. To use the real model:")  # fmt: skip
        lines.extend(f"    {command}" for command in remedy["commands"])
    return lines
