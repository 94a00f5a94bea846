"""Run the stage notebooks in order with papermill: the logic behind `run_pipeline.py`.

Each stage is a parameterized notebook in `notebooks/`. The runner injects the run
directory and the resolved config, saves the executed notebook to `outputs/<run>/reports/`,
exports it to standalone HTML, and records timings, counts and skipped inputs in
`manifest.json`. A stage whose parameters, inputs and code are unchanged since its last
successful execution is not executed again; a failed stage is re-executed on the next run
while the stages before it are kept.

Inside a notebook, `open_stage` gives the stage its config and run folder, whether it was
injected by the runner or the notebook was opened by hand in JupyterLab.

Example:
    >>> from frameatlas.pipeline import run_pipeline
    >>> exit_code = run_pipeline("pipeline.yaml", stages=["extract"])  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .config import ConfigError, PipelineConfig, config_from_dict, load_config
from .corpus import SkippedInput
from .progress import PROGRESS_ENV
from .report import model_banners
from .store import RunPaths
from .summary import StageSummary
from .files import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_SKIPPED_INPUTS",
    "STAGES",
    "Stage",
    "StageContext",
    "open_stage",
    "run_pipeline",
]

EXIT_OK = 0
EXIT_FAILED = 1  # a stage failed
EXIT_INVALID = 2  # bad config or arguments: nothing was run
EXIT_SKIPPED_INPUTS = 3  # finished, but some inputs were skipped (see manifest.json)

PACKAGE_DIR = Path(__file__).resolve().parent


def notebooks_dir() -> Path:
    """The stage notebooks: `notebooks/` of the source tree (FRAMEATLAS_NOTEBOOKS overrides)."""
    override = os.environ.get("FRAMEATLAS_NOTEBOOKS")
    if override:
        return Path(override).resolve()
    return PACKAGE_DIR.parent.parent / "notebooks"


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: its notebook, the config sections it reads, the tables it reads and writes."""

    name: str
    notebook: str
    sections: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    model_kinds: tuple[str, ...] = ()  # kinds of model this stage alone records: gone from the manifest when it stops using them

    @property
    def report_stem(self) -> str:
        return Path(self.notebook).stem


STAGES: tuple[Stage, ...] = (
    Stage("extract", "01_extract.ipynb", ("corpus", "extract"), inputs=(), outputs=("frames", "videos")),
    Stage(
        "caption", "02_caption.ipynb", ("models", "caption"), inputs=("frames",), outputs=("captions",),  # + ocr when on
        model_kinds=("caption", "ocr"),
    ),  # fmt: skip
    Stage(
        "embed", "03_embed.ipynb", ("models", "embed", "index", "search"), inputs=("frames", "captions", "ocr"),
        outputs=("embeddings",),
    ),  # fmt: skip
    Stage(
        "cluster", "04_cluster.ipynb", ("models", "cluster"),
        inputs=("frames", "embeddings", "caption_embeddings"), outputs=("clusters", "frames_annotated", "keyframes"),
    ),  # fmt: skip
    Stage(
        "visualize", "05_visualize.ipynb", ("models", "visualize", "search"),
        inputs=("frames", "embeddings", "frames_annotated", "caption_embeddings", "ocr_embeddings"), outputs=("projections",),
    ),  # fmt: skip
    Stage(
        "render", "06_render.ipynb", ("models", "search", "render"),
        inputs=("frames", "videos", "embeddings", "clusters", "caption_embeddings", "ocr_embeddings"),
        outputs=("render_videos", "render_segments"),
    ),  # fmt: skip
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


# --- inside a stage notebook ----------------------------------------------------------------


@dataclass
class StageContext:
    """What a stage notebook works with: the validated config and the run folder."""

    stage: str
    config: PipelineConfig
    run: RunPaths
    force: bool = False
    started: float = field(default_factory=time.perf_counter)

    def finish(
        self, summary: StageSummary | dict[str, Any], skipped: Iterable[SkippedInput] = (), **extra: Any
    ) -> dict[str, Any]:
        """Record the stage's result for the runner's manifest: a `StageSummary` (or, for old
        notebooks, its counts and skipped inputs)."""
        if isinstance(summary, StageSummary):
            base = summary.result()
        else:
            base = {"counts": summary, "skipped": [item.as_dict() for item in skipped]}
        if "models" in extra:
            base["models"] = extra.pop("models")
        if not base.get("models"):
            base.pop("models", None)
        result = {"stage": self.stage, "seconds": round(time.perf_counter() - self.started, 3), **base, **extra}
        atomic_write_json(self.run.stage_result(self.stage), result)
        return result


def open_stage(
    stage: str,
    *,
    config: dict[str, Any] | None = None,
    config_path: str | Path | None = None,
    run_dir: str | Path | None = None,
    force: bool = False,
) -> StageContext:
    """Set a notebook up for `stage`: the runner injects `config` and `run_dir`; by hand,
    `config_path` (the default `../pipeline.yaml`) is read and validated instead.
    """
    if stage not in STAGE_NAMES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGE_NAMES)}")
    if config is not None:
        cfg = config_from_dict(config, source="injected config")
    elif config_path is not None:
        cfg = load_config(config_path)
    else:
        raise ValueError("open_stage needs either config (a dict) or config_path (a pipeline.yaml)")
    run = RunPaths(run_dir or cfg.run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.config_file, cfg.to_parameters())  # search and later stages read it
    _log_to_notebook(run, stage)
    return StageContext(stage, cfg, run, force=force)


def _log_to_notebook(run: RunPaths, stage: str) -> None:
    logger = logging.getLogger("frameatlas")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        if getattr(handler, "_frameatlas", False):
            logger.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    run.logs.mkdir(parents=True, exist_ok=True)
    logfile = logging.FileHandler(run.logs / f"{stage}.log", encoding="utf-8")
    logfile.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for handler in (console, logfile):
        handler._frameatlas = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


# --- the runner -----------------------------------------------------------------------------


class StageFailed(RuntimeError):
    def __init__(self, stage: str, error: str, notebook: Path):
        super().__init__(f"stage {stage!r} failed: {error}\n  partial notebook: {notebook}")
        self.stage, self.error, self.notebook = stage, error, notebook


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str | None:
    if not path.exists():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _code_digest() -> str:
    """Changes whenever the library's code changes, so stages re-run after an upgrade or edit."""
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix in {".py", ".j2"}:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stage_fingerprint(stage: Stage, cfg: PipelineConfig, run: RunPaths, extra: Any = None) -> str:
    """Everything a stage's result depends on: parameters, input tables, notebook, library code."""
    return _digest(
        {
            "params": cfg.stage_params(*stage.sections),
            "inputs": {name: _file_digest(run.table(name)) for name in stage.inputs},
            "notebook": _file_digest(notebooks_dir() / stage.notebook),
            "code": _code_digest(),
            "extra": extra,
        }
    )


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform(), "frameatlas": __version__}
    for package in ("av", "numpy", "pandas", "pyarrow", "pillow", "papermill", "nbconvert", "scenedetect", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        import av

        versions["ffmpeg_libavcodec"] = ".".join(map(str, av.library_versions["libavcodec"]))
    except Exception:  # pragma: no cover - informative only
        pass
    return versions


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _execute_notebook(stage: Stage, cfg: PipelineConfig, run: RunPaths, force: bool, show_progress: bool) -> Path:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = notebooks_dir() / stage.notebook
    if not source.exists():
        raise StageFailed(stage.name, f"notebook {source} not found", source)
    output = run.reports / stage.notebook
    run.reports.mkdir(parents=True, exist_ok=True)
    run.stage_result(stage.name).unlink(missing_ok=True)
    parameters = {"config": cfg.to_parameters(), "run_dir": str(run.root), "force": force}
    # The kernel must be this interpreter (with frameatlas installed), whatever PATH says.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    try:
        with _environment(**{PROGRESS_ENV: "report", "PATH": path, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}):
            papermill.execute_notebook(
                str(source),
                str(output),
                parameters=parameters,
                kernel_name="python3",
                cwd=str(source.parent),
                progress_bar=show_progress,
                log_output=True,
                # Local IPC sockets: the kernel is never reachable from the network.
                config=_kernel_config(),
            )
    except PapermillExecutionError as error:
        export_html(output, f"{stage.notebook} (failed)")
        raise StageFailed(stage.name, f"{error.ename}: {error.evalue}", output) from None
    except Exception as error:  # kernel died, timeout, missing kernel...
        raise StageFailed(stage.name, f"{type(error).__name__}: {error}", output) from None
    return output


def _kernel_config():
    from traitlets.config import Config

    config = Config()
    config.KernelManager.transport = "ipc"
    return config


def export_html(notebook: Path, title: str = "", banners: Iterable[str] = ()) -> Path | None:
    """Export an executed notebook to standalone HTML next to it: images embedded, no CDN scripts."""
    import nbformat
    from nbconvert import HTMLExporter

    if not notebook.exists():
        return None
    exporter = HTMLExporter(
        template_name="frameatlas_report",
        extra_template_basedirs=[str(PACKAGE_DIR / "templates" / "nbconvert")],
        embed_images=True,
    )
    resources = {"frameatlas_title": title, "frameatlas_banners": list(banners)}
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4), resources=resources)
    target = notebook.with_suffix(".html")
    atomic_write_text(target, body)
    return target


def load_manifest(run: RunPaths) -> dict[str, Any]:
    if run.manifest.exists():
        try:
            return json.loads(run.manifest.read_text())
        except ValueError:
            log.warning("%s is not valid JSON; starting a new manifest", run.manifest)
    return {}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _collect_skipped(stages: dict[str, Any]) -> list[dict[str, str]]:
    skipped: list[dict[str, str]] = []
    for entry in stages.values():
        skipped.extend(entry.get("skipped", []))
    return skipped


def _write_manifest(run: RunPaths, manifest: dict[str, Any]) -> None:
    manifest["updated"] = _now()
    stages = manifest.setdefault("stages", {})  # in pipeline order, also for runs made before a stage existed
    ordered = sorted(stages.items(), key=lambda item: _stage_order(item[0]))
    stages.clear()  # in place: the runner holds this dict
    stages.update(ordered)
    manifest["skipped_inputs"] = _collect_skipped(manifest.get("stages", {}))
    atomic_write_json(run.manifest, manifest)


def _stage_order(name: str) -> int:
    return STAGE_NAMES.index(name) if name in STAGE_NAMES else len(STAGE_NAMES)


def _split_names(names: Iterable[str]) -> list[str]:
    """`--stages extract caption` and `--stages extract,caption` mean the same."""
    return [name.strip() for item in names for name in item.split(",") if name.strip()]


def _select_stages(cfg: PipelineConfig, names: Iterable[str] | None) -> list[Stage]:
    if names:
        unknown = [n for n in names if n not in STAGE_NAMES]
        if unknown:
            raise ConfigError(f"--stages: unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGE_NAMES)}")
    wanted = set(names) if names else None
    return [s for s in STAGES if (wanted is None or s.name in wanted)]


def _stage_enabled(cfg: PipelineConfig, stage: Stage) -> bool:
    section = getattr(cfg, stage.name, None)
    return bool(getattr(section, "enabled", True))


def _extra_inputs(stage: Stage, cfg: PipelineConfig) -> Any:
    """Inputs that live outside the run folder: the video files, which model weights exist."""
    if stage.name == "extract":
        from .frames import prepare_corpus

        listing = prepare_corpus(cfg)
        return {"videos": listing.fingerprint(), "problems": [s.as_dict() for s in listing.skipped]}
    if stage.name in ("caption", "embed"):
        from .models import weights_available

        # Weights appearing (or vanishing) changes the result even with the same config.
        found = {"image_weights": weights_available(cfg.models)}
        if stage.name == "caption":
            from .caption import caption_weights_available

            found["caption_weights"] = caption_weights_available(cfg.caption, cfg.models)
            if cfg.caption.ocr.enabled:
                from .models.ocr import ocr_available

                found["ocr_package"] = ocr_available()  # installing it later must re-run the stage
        return found
    if stage.name == "render":
        from .models import weights_available
        from .render import source_files

        # Videos are cut from the sources: one vanishing, coming back or changing matters.
        return {"sources": source_files(RunPaths(cfg.run_dir)), "image_weights": weights_available(cfg.models)}
    return None


def _merge_models(manifest: dict[str, Any], records: list[dict[str, Any]], owned: tuple[str, ...] = ()) -> None:
    kinds = {record["kind"] for record in records} | set(owned)
    manifest["models"] = [m for m in manifest.get("models", []) if m.get("kind") not in kinds] + records


def _refresh_report_banners(run: RunPaths, manifest: dict[str, Any]) -> None:
    """Re-export reports whose banners are out of date (e.g. exported before a fallback was known)."""
    banners = model_banners(manifest)
    for stage in STAGES:
        entry = manifest.get("stages", {}).get(stage.name, {})
        if entry.get("status") not in {"done", "unchanged"} or entry.get("banners", []) == banners:
            continue
        notebook = run.reports / stage.notebook
        if notebook.exists():
            export_html(notebook, f"{manifest['run']} · {stage.notebook}", banners)
            entry["banners"] = banners


def run_pipeline(
    config_path: str | Path = "pipeline.yaml",
    *,
    stages: Iterable[str] | None = None,
    force: Iterable[str] = (),
    overrides: Iterable[str] = (),
    show_progress: bool = True,
) -> int:
    """Run the enabled stages; returns an exit code (`EXIT_*`). Prints the dashboard path."""
    started = time.perf_counter()
    try:
        cfg = load_config(config_path, list(overrides))
        selected = _select_stages(cfg, _split_names(stages) if stages else None)
        force = set(_split_names(force))
        bad_force = force - set(STAGE_NAMES) - {"all"}
        if bad_force:
            raise ConfigError(f"--force: unknown stage(s) {', '.join(sorted(bad_force))}; stages are {', '.join(STAGE_NAMES)} or all")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    run = RunPaths(cfg.run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    _log_to_file(run)
    manifest = load_manifest(run)
    manifest.update(
        {
            "frameatlas": __version__,
            "run": cfg.run.name,
            "run_dir": str(run.root),
            "config_file": str(cfg.source) if cfg.source else None,
            "config": cfg.to_parameters(),
            "versions": _versions(),
            "models": manifest.get("models", []),
        }
    )
    manifest.setdefault("created", _now())
    stage_entries: dict[str, Any] = manifest.setdefault("stages", {})
    exit_code = EXIT_OK
    for stage in selected:
        entry = stage_entries.get(stage.name, {})
        if not _stage_enabled(cfg, stage):
            stage_entries[stage.name] = {**entry, "status": "disabled"}
            log.info("%s: disabled in the config", stage.name)
            continue
        stage_started = time.perf_counter()
        try:
            fingerprint = stage_fingerprint(stage, cfg, run, _extra_inputs(stage, cfg))
        except Exception as error:  # e.g. the demo corpus could not be fetched
            log.error("%s: cannot prepare inputs: %s", stage.name, error)
            stage_entries[stage.name] = {**entry, "status": "failed", "error": str(error), "finished": _now()}
            exit_code = EXIT_FAILED
            break
        outputs_present = all(run.table(name).exists() for name in stage.outputs)
        unchanged = entry.get("status") in {"done", "unchanged"} and entry.get("fingerprint") == fingerprint
        if unchanged and outputs_present and stage.name not in force and "all" not in force:
            entry.update({"status": "unchanged", "checked": _now(), "check_seconds": round(time.perf_counter() - stage_started, 3)})
            stage_entries[stage.name] = entry
            log.info("%s: inputs and parameters unchanged, reusing its results", stage.name)
            continue
        log.info("%s: running %s", stage.name, stage.notebook)
        stage_entries[stage.name] = {"status": "running", "started": _now(), "fingerprint": None}
        _write_manifest(run, manifest)
        forced = stage.name in force or "all" in force
        try:
            notebook = _execute_notebook(stage, cfg, run, forced, show_progress)
            result = _read_stage_result(run, stage)
            if result.get("models") or stage.model_kinds:
                _merge_models(manifest, result.get("models", []), stage.model_kinds)
            banners = model_banners(manifest)
            html = export_html(notebook, f"{cfg.run.name} · {stage.notebook}", banners)
        except StageFailed as error:
            stage_entries[stage.name] = {
                "status": "failed",
                "error": error.error,
                "notebook": _rel(run, error.notebook),
                "report": _rel(run, error.notebook.with_suffix(".html")),
                "seconds": round(time.perf_counter() - stage_started, 3),
                "finished": _now(),
            }
            print(f"\nerror: {error}", file=sys.stderr)
            exit_code = EXIT_FAILED
            break
        stage_entries[stage.name] = {
            "status": "done",
            "fingerprint": fingerprint,
            "started": stage_entries[stage.name]["started"],
            "finished": _now(),
            "seconds": round(time.perf_counter() - stage_started, 3),
            "work_seconds": result.get("seconds"),
            "counts": result.get("counts", {}),
            "skipped": result.get("skipped", []),
            "notebook": _rel(run, notebook),
            "report": _rel(run, html) if html else None,
            "banners": banners,
            **{k: v for k, v in result.items() if k not in {"stage", "seconds", "counts", "skipped", "models"}},
        }
        _write_manifest(run, manifest)
    _refresh_report_banners(run, manifest)
    manifest["total_seconds"] = round(time.perf_counter() - started, 3)
    _write_manifest(run, manifest)
    from .report import write_dashboard

    dashboard = write_dashboard(run, manifest)
    if exit_code == EXIT_OK and manifest["skipped_inputs"]:
        exit_code = EXIT_SKIPPED_INPUTS
    _print_summary(manifest, selected, dashboard, exit_code)
    return exit_code


def _rel(run: RunPaths, path: Path) -> str:
    try:
        return run.relative(path)
    except ValueError:
        return str(path)


def _read_stage_result(run: RunPaths, stage: Stage) -> dict[str, Any]:
    path = run.stage_result(stage.name)
    if not path.exists():
        log.warning("%s: the notebook did not record a result (%s missing)", stage.name, path)
        return {}
    return json.loads(path.read_text())


def _log_to_file(run: RunPaths) -> None:
    run.logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run.logs / "pipeline.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("frameatlas").addHandler(handler)


def _print_summary(manifest: dict[str, Any], selected: list[Stage], dashboard: Path, exit_code: int) -> None:
    lines = ["", f"frameatlas run '{manifest['run']}' in {manifest['total_seconds']:.1f} s"]
    for stage in selected:
        entry = manifest["stages"].get(stage.name, {})
        counts = ", ".join(f"{k}={v}" for k, v in entry.get("counts", {}).items())
        seconds = entry.get("check_seconds") if entry.get("status") == "unchanged" else entry.get("seconds")
        timing = f"{seconds:7.1f} s" if isinstance(seconds, (int, float)) else " " * 9
        lines.append(f"  {stage.name:<10} {entry.get('status', '-'):<10} {timing}  {counts}")
    skipped = manifest.get("skipped_inputs", [])
    if skipped:
        lines.append(f"  {len(skipped)} input(s) skipped:")
        lines.extend(f"    {item['path']}: {item['reason']}" for item in skipped)
    lines.append(f"Dashboard: {_display_path(dashboard)}")
    print("\n".join(lines))


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
