"""The runner behind `run_pipeline.py` and `frameatlas run`: stages in order, each re-run only
when its fingerprint (parameters, input tables, notebook, library code, outside inputs)
changed, under the run's lock, with the manifest and the dashboard kept up to date.

Example:
    >>> from frameatlas.pipeline import run_pipeline
    >>> exit_code = run_pipeline("pipeline.yaml", stages=["extract"])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import ConfigError, PipelineConfig, load_config
from ..files import remove_orphan_temps
from ..lock import RunLocked, acquire_run_lock
from ..report import model_banners, next_step_lines, write_dashboard
from ..store import RunPaths
from .execute import StageFailed, execute_stage, export_html, kernel_pool, notebooks_dir, prepare_execution
from .export import refresh_report_links
from .kernels import KERNELS_AHEAD, KernelPool
from .manifest import load_manifest, merge_models, now, package_versions, record_invocation, with_weight_hashes, write_manifest
from .registry import OPTIONAL_STAGES, STAGE_NAMES, STAGES, Stage

log = logging.getLogger(__name__)

__all__ = [
    "EXIT_FAILED", "EXIT_INVALID", "EXIT_LOCKED", "EXIT_OK", "EXIT_SKIPPED_INPUTS", "run_pipeline", "stage_fingerprint",
    "stage_timing",
]  # fmt: skip

EXIT_OK = 0
EXIT_FAILED = 1  # a stage failed
EXIT_INVALID = 2  # bad config or arguments: nothing was run
EXIT_SKIPPED_INPUTS = 3  # finished, but some inputs were skipped (see manifest.json)
EXIT_LOCKED = 4  # another process is writing into the run folder: nothing was run

PACKAGE_DIR = Path(__file__).resolve().parent.parent


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


def _split_names(names: Iterable[str]) -> list[str]:
    """`--stages extract caption` and `--stages extract,caption` mean the same."""
    return [name.strip() for item in names for name in item.split(",") if name.strip()]


def _select_stages(names: list[str] | None) -> list[Stage]:
    if names:
        unknown = [n for n in names if n not in STAGE_NAMES]
        if unknown:
            raise ConfigError(f"--stages: unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGE_NAMES)}")
    wanted = set(names) if names else None
    return [s for s in STAGES if (wanted is None or s.name in wanted)]


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
    started_at = now()
    try:
        cfg = load_config(config_path, list(overrides))
        selected = _select_stages(_split_names(stages) if stages else None)
        forced = set(_split_names(force))
        bad_force = forced - set(STAGE_NAMES) - {"all"}
        if bad_force:
            raise ConfigError(
                f"--force: unknown stage(s) {', '.join(sorted(bad_force))}; stages are {', '.join(STAGE_NAMES)} or all"
            )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    run = RunPaths(cfg.run_dir)
    try:
        lock = acquire_run_lock(run.root)  # names this command line as the holder
    except RunLocked as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_LOCKED
    try:
        remove_orphan_temps(run.root)
        handler = _log_to_file(run)
        try:
            return _run_stages(cfg, run, selected, forced, show_progress, started, started_at)
        finally:
            logging.getLogger("frameatlas").removeHandler(handler)
            handler.close()
    finally:
        lock.release()


class _ReportExports:
    """The stages' HTML reports, exported one at a time in a background thread: a report is
    exported while the next stage runs (nothing later stages read comes from it). The runner
    waits for them all before it refreshes links and banners and writes the dashboard."""

    def __init__(self, run: RunPaths):
        from concurrent.futures import ThreadPoolExecutor

        self._run = run
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frameatlas-export")
        self._pending: list[tuple[dict[str, Any], Any]] = []

    def submit(self, entry: dict[str, Any], notebook: Path, title: str, banners: list[str]) -> None:
        """Export `notebook`; `entry` (its stage's manifest entry) gets `report` and the time taken."""

        def export() -> tuple[Path | None, float]:
            began = time.time()
            return export_html(notebook, title, banners), time.time() - began

        self._pending.append((entry, self._worker.submit(export)))

    def collect(self, wait: bool = False) -> None:
        """Record the exports done (all of them, waiting, with `wait`) in their entries."""
        still = []
        for entry, future in self._pending:
            if not (wait or future.done()):
                still.append((entry, future))
                continue
            try:
                html, seconds = future.result()
            except Exception as error:  # a report that cannot be made does not undo the stage's work
                log.error("cannot export the report of %s: %s", entry.get("notebook"), error)
                entry["report"], entry["report_error"] = None, f"{type(error).__name__}: {error}"
                continue
            entry["report"] = _rel(self._run, html) if html else None
            timing = entry.get("timing")
            if timing is not None:  # its time counts for its stage, though the next stage ran meanwhile
                timing["export"] = round(seconds, 3)
                for key in ("total", "overhead"):
                    if key in timing:
                        timing[key] = round(timing[key] + seconds, 3)
        self._pending = still

    def close(self) -> None:
        self.collect(wait=True)
        self._worker.shutdown()


def _run_stages(
    cfg: PipelineConfig, run: RunPaths, selected: list[Stage], forced: set[str], show_progress: bool, started: float,
    started_at: str,
) -> int:  # fmt: skip
    manifest = load_manifest(run)
    manifest.update(
        {
            "frameatlas": __version__,
            "run": cfg.run.name,
            "run_dir": str(run.root),
            "config_file": str(cfg.source) if cfg.source else None,
            "config": cfg.to_parameters(),
            "versions": package_versions(),
            "models": manifest.get("models", []),
        }
    )
    manifest.setdefault("created", now())
    entries: dict[str, Any] = manifest.setdefault("stages", {})
    exit_code = EXIT_OK
    ran = []
    enabled = [stage for stage in selected if stage.enabled(cfg)]
    exports = _ReportExports(run)
    with tempfile.TemporaryDirectory(prefix="frameatlas-kernels-") as sockets:
        pool = kernel_pool(run, show_progress, Path(sockets))
        try:
            for stage in selected:
                later = enabled[enabled.index(stage) + 1 :] if stage in enabled else []
                succeeded = _run_stage(
                    stage, cfg, run, manifest, entries, forced, show_progress, pool, later[:KERNELS_AHEAD], exports
                )
                if entries.get(stage.name, {}).get("status") in {"done", "failed"}:
                    ran.append(stage.name)
                if not succeeded:
                    exit_code = EXIT_FAILED
                    break
        finally:
            pool.close()  # kernels started for stages that turned out unchanged
            exports.close()
    _refresh_report_banners(run, manifest)
    refresh_report_links(run)  # no report links to one this invocation did not make
    if exit_code == EXIT_OK and any(entry.get("skipped") for entry in entries.values()):
        exit_code = EXIT_SKIPPED_INPUTS
    record_invocation(manifest, started_at, time.perf_counter() - started, ran, exit_code)
    write_manifest(run, manifest)
    # an optional stage (classify) gets a row once it has been configured
    dashboard = write_dashboard(run, manifest, [n for n in STAGE_NAMES if n not in OPTIONAL_STAGES or n in entries])
    _print_summary(manifest, selected, dashboard, run)
    return exit_code


def _run_stage(
    stage: Stage, cfg: PipelineConfig, run: RunPaths, manifest: dict[str, Any], entries: dict[str, Any],
    forced: set[str], show_progress: bool, pool: KernelPool, upcoming: list[Stage], exports: _ReportExports,
) -> bool:  # fmt: skip
    """Run (or reuse) one stage and record it in the manifest; False when it failed.

    A stage that runs takes the kernel started for it ahead (if any) and has the kernels of the
    `upcoming` stages started while it works: a stage after one that did work usually has work too
    (its inputs changed); if not, its kernel is stopped unused."""
    entry = entries.get(stage.name, {})
    if not stage.enabled(cfg):
        if stage.optional and not entry:
            return True  # an optional stage never configured for this run: nothing to record
        entries[stage.name] = {**entry, "status": "disabled"}
        log.info("%s: disabled in the config", stage.name)
        return True
    stage_started = time.perf_counter()
    try:
        extra = stage.external_inputs(cfg) if stage.external_inputs else None
        fingerprint = stage_fingerprint(stage, cfg, run, extra)
    except Exception as error:  # e.g. the demo corpus could not be fetched
        log.error("%s: cannot prepare inputs: %s", stage.name, error)
        entries[stage.name] = {**entry, "status": "failed", "error": str(error), "finished": now()}
        return False
    is_forced = stage.name in forced or "all" in forced
    outputs_present = all(run.table(name).exists() for name in stage.outputs)
    unchanged = entry.get("status") in {"done", "unchanged"} and entry.get("fingerprint") == fingerprint
    if unchanged and outputs_present and not is_forced:
        pool.discard(stage.name)
        entry.update({"status": "unchanged", "checked": now(), "check_seconds": round(time.perf_counter() - stage_started, 3)})
        entries[stage.name] = entry
        log.info("%s: inputs and parameters unchanged, reusing its results", stage.name)
        return True
    log.info("%s: running %s", stage.name, stage.notebook)
    launched = time.time()
    # No kernel started ahead (the first stage to run): start it now, so that it boots and imports
    # while this process imports papermill and writes the manifest.
    pool.start(stage.name, notebooks_dir() / stage.notebook, entry.get("imports", []))
    entries[stage.name] = {"status": "running", "started": now(), "fingerprint": None}
    exports.collect()
    write_manifest(run, manifest)
    try:
        prepare_execution()
        kernel = pool.take(stage.name)
        for following in upcoming:  # with the libraries it imported last time (model libraries aside)
            imported_before = entries.get(following.name, {}).get("imports", [])
            pool.start(following.name, notebooks_dir() / following.notebook, imported_before, during=stage.name)
        notebook = execute_stage(stage, cfg, run, is_forced, show_progress, kernel)
        returned = time.time()
        result = _read_stage_result(run, stage)
        if result.get("models") or stage.model_kinds:
            merge_models(manifest, with_weight_hashes(result.get("models", [])), stage.model_kinds)
        banners = model_banners(manifest)
        timing = stage_timing(notebook, result, launched, returned, returned)  # + its export, once done
        kernel_record = kernel.record(launched) if kernel is not None else {"prestarted": False}
    except StageFailed as error:
        entries[stage.name] = {
            "status": "failed",
            "error": error.error,
            "notebook": _rel(run, error.notebook),
            "report": None,
            "seconds": round(time.perf_counter() - stage_started, 3),
            "finished": now(),
        }
        if error.notebook.exists():  # the partial notebook, up to the cell that failed
            exports.submit(entries[stage.name], error.notebook, f"{stage.notebook} (failed)", [])
        print(f"\nerror: {error}", file=sys.stderr)
        return False
    entries[stage.name] = {
        "status": "done",
        "fingerprint": fingerprint,
        "started": entries[stage.name]["started"],
        "finished": now(),
        "seconds": round(time.perf_counter() - stage_started, 3),
        "work_seconds": result.get("seconds"),
        "counts": result.get("counts", {}),
        "skipped": result.get("skipped", []),
        "notebook": _rel(run, notebook),
        "report": None,  # once exported
        "banners": banners,
        "timing": timing,
        "kernel": kernel_record,
        **{
            k: v
            for k, v in result.items()
            if k not in {"stage", "seconds", "counts", "skipped", "models", "opened_at", "finished_at"}
        },
    }
    exports.submit(entries[stage.name], notebook, f"{cfg.run.name} · {stage.notebook}", banners)
    write_manifest(run, manifest)
    return True


def _cell_times(notebook: Path) -> list[tuple[str, float | None, float | None]]:
    """(first tag, start, end) of each executed code cell, wall clock, from papermill's metadata."""
    import datetime as dt

    def stamp(value: Any) -> float | None:
        try:
            return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() if value else None
        except ValueError:
            return None

    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return []
    times = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        meta = cell.get("metadata", {})
        timing = meta.get("papermill", {})
        times.append(((meta.get("tags") or [""])[0], stamp(timing.get("start_time")), stamp(timing.get("end_time"))))
    return times


def stage_timing(notebook: Path, result: dict[str, Any], launched: float, returned: float, exported: float) -> dict[str, float]:
    """Where a stage's wall time went, in seconds, for the manifest (`stages.<name>.timing`).

    * `kernel_start`: from the runner starting papermill to the notebook's first cell (kernel
      process, its imports, connecting);
    * `imports`: the setup cell's imports, up to `open_stage`;
    * `setup`: the rest of the setup cell (config, lock, model records and banners);
    * `work`: from `open_stage` to `ctx.finish` minus `setup` (the stage's own work);
    * `report_cells`: the cells after the work (tables, figures, checks);
    * `kernel_stop`: the last cell's end to papermill's return; `export`: the HTML report.
    `overhead` is everything but `work`.
    """
    cells = [cell for cell in _cell_times(notebook) if cell[1] is not None and cell[2] is not None]
    opened, finished = result.get("opened_at"), result.get("finished_at")
    timing: dict[str, float] = {"total": returned - launched + (exported - returned)}
    if cells:
        timing["kernel_start"] = cells[0][1] - launched
        last_end = max(end for _, _, end in cells)
        timing["kernel_stop"] = returned - last_end
        setup = next((cell for cell in cells if cell[0] not in {"parameters", "injected-parameters"}), None)
        if setup and opened and finished:
            timing["cells_before_setup"] = setup[1] - cells[0][1]
            timing["imports"] = opened - setup[1]
            timing["setup"] = max(0.0, setup[2] - opened)
            timing["work"] = finished - opened - timing["setup"]
            timing["report_cells"] = last_end - finished
    timing["export"] = exported - returned
    if "work" in timing:
        timing["overhead"] = timing["total"] - timing["work"]
    return {key: round(value, 3) for key, value in timing.items()}


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


def _log_to_file(run: RunPaths) -> logging.Handler:
    run.logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run.logs / "pipeline.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("frameatlas").addHandler(handler)
    return handler


def _print_summary(manifest: dict[str, Any], selected: list[Stage], dashboard: Path, run: RunPaths) -> None:
    invocations = len(manifest.get("invocations", []))
    lines = ["", f"frameatlas run '{manifest['run']}' in {manifest['last_invocation_seconds']:.1f} s"
             + (f" ({manifest['cumulative_seconds']:.1f} s over {invocations} invocations)" if invocations > 1 else "")]  # fmt: skip
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
    outdated = {name: entry["outdated_by"] for name, entry in manifest["stages"].items() if entry.get("outdated_by")}
    if outdated:
        lines.append("  older than the results they build on (the next full run redoes them): "
                     + ", ".join(f"{name} (before {by})" for name, by in outdated.items()))  # fmt: skip
    lines.append(f"Dashboard: {_display_path(dashboard)}")
    try:
        lines.extend(next_step_lines(run, manifest))
    except Exception as error:  # advice must never turn a finished run into a failure
        log.warning("cannot suggest next steps: %s", error)
    print("\n".join(lines))


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
