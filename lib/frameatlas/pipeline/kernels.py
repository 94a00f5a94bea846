"""Stage kernels started ahead of time: while one stage runs, the kernels of the next stages
(`KERNELS_AHEAD`) start and import what their notebooks import (and the libraries each stage
imported in its last run, model libraries aside), so a stage begins with its first cell, not
with seconds of interpreter start and imports.

Every notebook still gets a kernel of its own, started for it and stopped after it: the warm-up
runs silently (nothing in the notebook's history or execution counts) and binds no name in the
notebook's namespace, so a notebook sees the same state as in a kernel papermill starts, with
modules already in `sys.modules` (the manifest lists them: `stages.<name>.kernel.preloaded`).
papermill takes the started kernel through its `km` argument (passed on to nbclient's
`NotebookClient`).

Example:
    >>> from frameatlas.pipeline.kernels import notebook_imports
    >>> from frameatlas.pipeline.execute import notebooks_dir
    >>> "frameatlas.cluster" in notebook_imports(notebooks_dir() / "04_cluster.ipynb")
    True
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["KERNELS_AHEAD", "MODEL_LIBRARIES", "WARM_PACKAGES", "KernelPool", "PreparedKernel", "loaded_modules", "modules_file",
           "notebook_imports", "preload", "stop_kernel"]  # fmt: skip

#: Never imported ahead: a stage imports these only when it loads a model, which it does only when
#: it has something to encode (a cached stage imports none of them).
MODEL_LIBRARIES = frozenset({"torch", "torchvision", "open_clip", "sentence_transformers", "transformers", "tensorflow"})
WARM_UP_SECONDS = 600  # waiting longer than this for a kernel's imports: start the stage with what is there
#: Packages whose submodules a stage's kernel imports ahead when the stage imported them in its
#: last run: they load parts on first use (plotly's figure classes and validators, chromadb's
#: client, sklearn's estimators), 0.3-0.6 s per stage. Model libraries are never among them.
WARM_PACKAGES = frozenset({"plotly", "chromadb", "sklearn", "scipy", "umap", "pynndescent", "numba", "hdbscan", "pandas",
                           "numpy", "pyarrow", "PIL", "av", "cv2", "onnxruntime", "rapidocr_onnxruntime"})  # fmt: skip
#: Kernels of this many stages after the running one are started (and warmed up): with one, a short
#: stage (cluster placing a few new frames, ~1 s) left its successor waiting ~3 s for its imports
#: (visualize: plotly, umap, numba); a kernel waiting idle costs memory, not CPU.
KERNELS_AHEAD = 2


def notebook_imports(notebook: Path) -> list[str]:
    """Modules imported by statements at the top level of `notebook`'s code cells (not the
    parameters cell), in order: `from frameatlas import cluster` gives `frameatlas.cluster`
    (`preload` skips names that are not modules)."""
    try:
        cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return []
    found: list[str] = []
    for cell in cells:
        if cell.get("cell_type") != "code" or "parameters" in (cell.get("metadata", {}).get("tags") or []):
            continue
        source = "".join(cell.get("source", []))
        try:
            tree = ast.parse(source)
        except SyntaxError:  # IPython magics and the like: this cell's imports are left to the notebook
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                found.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.append(node.module)
                found.extend(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")
    return list(dict.fromkeys(found))


def loaded_modules() -> list[str]:
    """The modules of `WARM_PACKAGES` this process has imported, in import order: what a stage
    imported by its end (submodules plotly, chromadb or sklearn import on first use included) is
    what its kernel imports ahead next time (`modules_file`)."""
    return [name for name, module in list(sys.modules.items())
            if module is not None and name.partition(".")[0] in WARM_PACKAGES]  # fmt: skip


def modules_file(cache: Path, stage: str) -> Path:
    """Where a stage's kernel records `loaded_modules()` (in the run's cache folder)."""
    return Path(cache) / "kernels" / f"{stage}-modules.json"


def preload(modules: list[str], recorded: str | None = None) -> list[str]:
    """Import `modules` (in a kernel waiting for its notebook), then the modules listed in the file
    `recorded` (`modules_file`, if it can be read); returns those of `modules` imported. A name
    that is not a module, or fails to import, is passed over: the notebook's own import says why."""
    from ..project import configure_numba_cache
    from .notebook import exit_with_parent

    exit_with_parent()  # a kernel waiting for its notebook must not outlive the runner either
    # numba code imported here (pynndescent compiles some at import, for umap) must come from the cache the
    # stage itself fills (`frameatlas.project`), not from one of numba's own: a first re-run's visualize kernel
    # spent 10 s compiling what the first run had already cached
    configure_numba_cache()
    imported = [name for name in modules if _import(name)]
    try:
        more = json.loads(Path(recorded).read_text()) if recorded else []
    except (OSError, ValueError):
        more = []
    models_before = MODEL_LIBRARIES & sys.modules.keys()
    for name in more if isinstance(more, list) else []:
        if not isinstance(name, str) or name.partition(".")[0] not in WARM_PACKAGES:
            continue
        _import(name)
        if MODEL_LIBRARIES & sys.modules.keys() - models_before:  # a module that brings torch & co. along
            log.warning("%s imported a model library; the rest of the recorded modules are left", name)
            break
    return imported


def _import(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - e.g. `frameatlas.investigate` is a function, not a module
        return False
    return True


def _warm_up_code(modules: list[str], recorded: Path | None) -> str:
    # One expression: it binds no name in the notebook's namespace (`_` is not set by a silent run).
    path = str(recorded) if recorded is not None else None
    return f"__import__('frameatlas.pipeline.kernels', fromlist=['preload']).preload({modules!r}, {path!r})"


@dataclass
class PreparedKernel:
    """A kernel started for one stage's notebook, and what its warm-up did."""

    stage: str
    manager: Any  # the jupyter_client kernel manager papermill gets as `km`
    pid: int | None = None
    requested: float = field(default_factory=time.time)
    ready: float | None = None  # wall clock when its imports were done
    preloaded: list[str] = field(default_factory=list)
    error: str | None = None
    started_while: str | None = None  # the stage that was running when this kernel was started
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def record(self, taken: float) -> dict[str, Any]:
        """For the manifest (`stages.<name>.kernel`)."""
        return {
            "prestarted": True,
            "pid": self.pid,
            "started_while": self.started_while,
            "preloaded": self.preloaded,
            "ready_seconds": round(self.ready - self.requested, 3) if self.ready else None,
            "waited_seconds": round(max(0.0, (self.ready or taken) - taken), 3),
            **({"warm_up_error": self.error} if self.error else {}),
        }


class KernelPool:
    """Starts the kernels of the stages that come next while the current one runs.

    `start(stage, notebook)` launches a kernel process (quick) and imports the notebook's modules
    in it from a background thread, then those the stage recorded in `cache` in its last run
    (`modules_file`); `take(stage)` hands that kernel over (waiting for its imports) or None when
    none was started for that stage; `close()` stops kernels nobody took.
    """

    def __init__(self, manager_factory, launch_options: dict[str, Any], cache: Path | None = None):
        self._factory = manager_factory  # () -> a kernel manager, not started
        self._launch = launch_options  # start_kernel's keyword arguments: cwd, env
        self._cache = cache
        self._kernels: dict[str, PreparedKernel] = {}

    def start(self, stage: str, notebook: Path, also: Iterable[str] = (), during: str | None = None) -> PreparedKernel | None:
        """Start `stage`'s kernel and import its notebook's modules, then `also` (those of them that
        are not model libraries: see `MODEL_LIBRARIES`); `during`: the stage running meanwhile (recorded)."""
        if stage in self._kernels:
            return self._kernels[stage]
        from jupyter_core.utils import run_sync

        manager = self._factory()
        try:
            # In this thread: the manager is then used by papermill on this thread's event loop.
            run_sync(manager.start_kernel)(**self._launch)
        except Exception as error:  # noqa: BLE001 - the stage starts its own kernel instead
            log.warning("%s: could not start its kernel ahead (%s); it starts its own", stage, error)
            return None
        prepared = PreparedKernel(stage, manager, getattr(getattr(manager.provisioner, "process", None), "pid", None),
                                  started_while=during)  # fmt: skip
        self._kernels[stage] = prepared
        modules = notebook_imports(notebook)
        modules += [name for name in also if name not in modules and name.split(".")[0] not in MODEL_LIBRARIES]
        recorded = modules_file(self._cache, stage) if self._cache is not None else None
        recorded = recorded if recorded is not None and recorded.is_file() else None
        threading.Thread(target=self._warm_up, args=(prepared, modules, recorded), name=f"warm-{stage}", daemon=True).start()
        log.debug("%s: kernel %s started ahead, importing %s", stage, prepared.pid, ", ".join(modules))
        return prepared

    def take(self, stage: str) -> PreparedKernel | None:
        prepared = self._kernels.pop(stage, None)
        if prepared is None:
            return None
        if not prepared._done.wait(WARM_UP_SECONDS):
            prepared.error = f"its imports took longer than {WARM_UP_SECONDS} s"
        if not _alive(prepared.manager):
            log.warning("%s: the kernel started ahead is gone; the stage starts its own", stage)
            stop_kernel(prepared.manager)
            return None
        return prepared

    def discard(self, stage: str) -> None:
        """Stop the kernel started for `stage`, which will not run after all (its inputs are unchanged)."""
        prepared = self._kernels.pop(stage, None)
        if prepared is not None:
            stop_kernel(prepared.manager)

    def close(self) -> None:
        """Stop every kernel started and not taken (a stage that turned out unchanged, or a failure)."""
        for prepared in self._kernels.values():
            prepared._done.wait(5)
            stop_kernel(prepared.manager)
        self._kernels.clear()

    @staticmethod
    def _warm_up(prepared: PreparedKernel, modules: list[str], recorded: Path | None) -> None:
        client = None
        try:
            client = prepared.manager.blocking_client()
            client.start_channels()
            client.wait_for_ready(timeout=WARM_UP_SECONDS)
            imported = f"[name for name in {modules!r} if name in __import__('sys').modules]"
            reply = client.execute_interactive(
                _warm_up_code(modules, recorded), silent=True, store_history=False, user_expressions={"imported": imported},
                timeout=WARM_UP_SECONDS, output_hook=lambda message: None,
            )  # fmt: skip
            content = reply.get("content", {})
            if content.get("status") != "ok":
                prepared.error = f"{content.get('ename')}: {content.get('evalue')}"
            answer = content.get("user_expressions", {}).get("imported", {})
            if answer.get("status") == "ok":
                prepared.preloaded = ast.literal_eval(answer["data"]["text/plain"])
        except Exception as error:  # noqa: BLE001 - recorded; the notebook imports what it needs itself
            prepared.error = f"{type(error).__name__}: {error}"
        finally:
            if client is not None:
                client.stop_channels()
            prepared.ready = time.time()
            prepared._done.set()


def _alive(manager: Any) -> bool:
    from jupyter_core.utils import run_sync

    try:
        return bool(run_sync(manager.is_alive)())
    except Exception:  # noqa: BLE001
        return False


def stop_kernel(manager: Any) -> None:
    """Stop a kernel at once (its stage is done or will not run: nothing left to finalise)."""
    from jupyter_core.utils import run_sync

    if not manager.has_kernel:
        return
    try:
        run_sync(manager.shutdown_kernel)(now=True)
    except Exception as error:  # noqa: BLE001 - it may be gone already
        log.debug("stopping a kernel started ahead: %s", error)
