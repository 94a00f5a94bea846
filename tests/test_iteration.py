"""Iteration speed: models load only when used, per-stage timing in the manifest, and
`frameatlas search` through a running `frameatlas serve` (issue 17, part A).

The pipeline and the server run as real processes on copies of the session's `finished_run`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import videogen
from runs import copy_project, run_pipeline
from test_serve import Server  # `frameatlas serve RUN --port 0` in its own process

REPO = Path(__file__).resolve().parent.parent
MODEL_MODULES = {"torch", "open_clip", "sentence_transformers", "transformers"}


# --------------------------------------------------------------------------- lazy models


def in_fresh_process(code: str) -> dict:
    """Run `code` (which sets `result`) in a new interpreter; `result` plus the heavy modules imported."""
    script = f"import json, sys\n{code}\nresult['modules'] = sorted(m for m in {sorted(MODEL_MODULES)!r} if m in sys.modules)\nprint(json.dumps(result))"  # noqa: E501
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO / "tests")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_processes_skip_the_iri_grammar_and_still_validate_notebooks():
    """jsonschema's optional `rfc3987_syntax` compiles a grammar at import (over 1 s per process):
    frameatlas's processes pass it over, and notebooks (papermill, nbformat) still validate."""
    code = (
        "import frameatlas, chromadb, nbformat, papermill\n"
        "from frameatlas.pipeline.execute import notebooks_dir\n"
        "notebook = nbformat.read(str(notebooks_dir() / '04_cluster.ipynb'), as_version=4)\n"
        "nbformat.validate(notebook)\n"
        "notebook.cells[0]['cell_type'] = 'no such type'\n"
        "try:\n    nbformat.validate(notebook)\n    refused = False\n"
        "except nbformat.ValidationError:\n    refused = True\n"
        "result = {'grammar': sys.modules.get('rfc3987_syntax') is not None, 'refused': refused}"
    )  # fmt: skip
    found = in_fresh_process(code)
    assert found["grammar"] is False and found["refused"] is True
    # a process that imported it before frameatlas keeps it
    kept = in_fresh_process("import rfc3987_syntax, frameatlas\nresult = {'kept': sys.modules['rfc3987_syntax'] is not None}")
    assert kept["kept"] is True


def test_a_known_clip_model_is_described_without_loading_and_remembers_its_texts(tmp_path):
    import tinyclip

    folder = tinyclip.save_tiny_local_dir(tmp_path / "tiny")
    setup = (
        "from frameatlas.config import ModelsConfig\nfrom frameatlas.models import image_encoder\n"
        f"cfg = ModelsConfig(image={{'name': 'local-dir:{folder}', 'pretrained': None, 'on_missing_weights': 'error'}})\n"
        "encoder = image_encoder(cfg)\n"
    )  # fmt: skip
    first = in_fresh_process(
        setup + "vectors = encoder.encode_text(['a red square', 'a blue circle'])\n"
        "result = {'record': encoder.record.as_dict(), 'loaded': encoder.loaded, 'vectors': vectors.tolist()}"
    )
    assert first["loaded"] and "open_clip" in first["modules"]
    assert first["record"]["dim"] == 32 and first["record"]["model_id"].startswith("clip-tiny-")

    again = in_fresh_process(
        setup + "record = encoder.record.as_dict()\nvectors = encoder.encode_text(['a blue circle', 'a red square'])\n"
        "result = {'record': record, 'input_key': encoder.input_key, 'loaded': encoder.loaded, 'vectors': vectors.tolist()}"
    )
    assert again["modules"] == [] and not again["loaded"]  # no torch, no open_clip: nothing was loaded
    assert again["record"] == first["record"] and again["input_key"] == "frame1"
    assert np.allclose(again["vectors"], first["vectors"][::-1])  # the same vectors, from the cache

    (folder / "open_clip_model.safetensors").write_bytes((folder / "open_clip_model.safetensors").read_bytes() + b"\0")
    changed = in_fresh_process(setup + "result = {'record': encoder.record.as_dict(), 'loaded': encoder.loaded}")
    assert changed["record"]["weights_sha256"] != first["record"]["weights_sha256"]  # a changed file is described anew
    assert changed["record"]["model_id"] != first["record"]["model_id"]


def test_missing_weights_are_remembered_until_they_could_appear(tmp_path):
    checkpoint = tmp_path / "weights" / "clip.safetensors"
    code = (
        "from frameatlas.config import ModelsConfig\nfrom frameatlas.models import image_encoder\n"
        f"encoder = image_encoder(ModelsConfig(image={{'name': 'ViT-B-32', 'pretrained': '{checkpoint}', 'on_missing_weights': 'fallback'}}))\n"
        "result = {'record': encoder.record.as_dict()}"
    )  # fmt: skip
    first = in_fresh_process(code)
    assert first["record"]["model_id"].startswith("fallback-") and "no such file" in first["record"]["fallback_reason"]
    again = in_fresh_process(code)
    assert again["record"] == first["record"] and again["modules"] == []  # remembered: open_clip not even imported
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"not weights")
    appeared = in_fresh_process(code.replace("result = {", "result = {'loaded': encoder.loaded, "))
    assert appeared["record"]["backend"] == "open_clip" and not appeared["loaded"]  # found now, loaded on first use


# --------------------------------------------------------------------------- the pipeline


@pytest.mark.slow
def test_adding_a_video_reruns_later_stages_without_loading_models_they_do_not_need(finished_run, tmp_path):
    config, run = copy_project(finished_run, tmp_path)
    imported_before = {
        name: entry.get("imports", []) for name, entry in json.loads((run / "manifest.json").read_text())["stages"].items()
    }
    videogen.make_video(tmp_path / "videos" / "delta.mp4", seconds=2, fps=10, scene_cuts=[1.0])
    run_pipeline(config)
    manifest = json.loads((run / "manifest.json").read_text())
    stages = manifest["stages"]
    executed = [name for name, entry in stages.items() if entry.get("status") == "done"]
    assert {"extract", "caption", "embed", "cluster", "visualize", "render"} <= set(executed)

    # extract has new frames to embed, so it loads CLIP, and also makes the noise check's queries
    new_frames = int((pd.read_parquet(run / "tables" / "frames.parquet").video_name == "delta.mp4").sum())
    assert new_frames >= 4 and stages["extract"]["counts"]["frames_embedded"] == new_frames
    # work on the new video only: one video decoded, only its frames read by OCR, the others' reused
    assert (stages["extract"]["counts"]["videos_processed"], stages["extract"]["counts"]["videos_cached"]) == (1, 3)
    caption = stages["caption"]["counts"]
    assert (caption["ocr_frames_read"], caption["ocr_frames_cached"]) == (new_frames, caption["frames"] - new_frames)
    assert "open_clip" in stages["extract"]["imports"]
    # embed finds every vector made: it indexes them and runs its checks without loading CLIP again
    assert "open_clip" not in stages["embed"]["imports"] and stages["embed"]["counts"]["frames_embedded"] == 0
    embed_report = (run / stages["embed"]["report"]).read_text()
    assert "computed now" in embed_report  # the vectors changed: the quality checks ran, from the stored queries
    for name in ("cluster", "visualize", "render"):  # their text queries and vocabulary vectors are remembered
        assert not MODEL_MODULES & set(stages[name]["imports"]), (name, stages[name]["imports"])

    for name in executed:
        timing = stages[name]["timing"]
        parts = ("kernel_start", "imports", "setup", "work", "report_cells", "kernel_stop", "export")
        assert all(timing[part] >= -0.05 for part in parts), (name, timing)  # wall clocks of two processes: rounding
        assert abs(sum(timing[part] for part in parts) + timing["cells_before_setup"] - timing["total"]) < 0.5
        assert timing["overhead"] == pytest.approx(timing["total"] - timing["work"], abs=0.01)
        # the report is exported in the background while the next stage runs: not in the stage's own seconds
        assert timing["total"] <= stages[name]["seconds"] + timing["export"] + 0.1
        assert (run / stages[name]["report"]).is_file()

    # every notebook ran in a kernel of its own, started with the modules its notebook imports:
    # each stage after the first while the stage two before it worked (the second: while the first)
    from frameatlas.pipeline.execute import notebooks_dir
    from frameatlas.pipeline.kernels import KERNELS_AHEAD, notebook_imports

    assert KERNELS_AHEAD == 2
    pids = [stages[name]["kernel_pid"] for name in executed]
    assert len(set(pids)) == len(pids)
    assert stages[executed[0]]["kernel"]["started_while"] is None  # started as the run reached it, while papermill loads
    for name in executed:
        kernel = stages[name]["kernel"]
        assert kernel["prestarted"] and kernel["pid"] == stages[name]["kernel_pid"] and "warm_up_error" not in kernel
        if name != executed[0]:
            assert kernel["started_while"] == executed[max(0, executed.index(name) - KERNELS_AHEAD)]
        assert "frameatlas.pipeline" in kernel["preloaded"] and not MODEL_MODULES & set(kernel["preloaded"])
        notebook = notebooks_dir() / Path(stages[name]["notebook"]).name
        assert set(kernel["preloaded"]) <= set(notebook_imports(notebook)) | set(imported_before[name])

    # each stage's kernel recorded the modules it loaded, for its next kernel to import ahead
    from frameatlas.pipeline.kernels import modules_file

    recorded = json.loads(modules_file(run / "cache", "visualize").read_text())
    assert "plotly.graph_objs" in recorded and not {name.partition(".")[0] for name in recorded} & MODEL_MODULES

    # the new video is searchable, and its frames are in the clusters
    clusters = pd.read_parquet(run / "tables" / "frames_annotated.parquet")
    assert (clusters.video_name == "delta.mp4").sum() == new_frames and clusters.cluster.notna().all()


# --------------------------------------------------------------------------- kernels started ahead


def make_notebook(path: Path, *cells: str) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = new_notebook(cells=[new_code_cell("value = None", metadata={"tags": ["parameters"]})]
                            + [new_code_cell(source) for source in cells])  # fmt: skip
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


NAMESPACE_CELL = "import os, sys\nstate = {'pid': os.getpid(), 'names': sorted(k for k in globals() if not k.startswith('_'))}"
PROBE_CELL = (
    "preloaded_before_its_import = 'frameatlas.store' in sys.modules\n"
    "from frameatlas import store\n"
    "leaked = 'set by the first notebook'\n"
    "print(json.dumps({**state, 'preloaded': preloaded_before_its_import, 'count': get_ipython().execution_count}))"
)


def executed_state(notebook: Path) -> dict:
    return json.loads(json.loads(notebook.read_text())["cells"][-1]["outputs"][0]["text"][0])


def test_each_notebook_gets_a_fresh_kernel_started_ahead_with_only_its_own_imports(tmp_path):
    import papermill
    from frameatlas.pipeline import execute
    from frameatlas.pipeline.kernels import KernelPool, notebook_imports

    notebook = make_notebook(tmp_path / "probe.ipynb", "import json\n" + NAMESPACE_CELL, PROBE_CELL)
    assert notebook_imports(notebook) == ["json", "os", "sys", "frameatlas", "frameatlas.store"]

    def run(name: str, **kernel) -> dict:
        output = tmp_path / f"{name}.ipynb"
        papermill.execute_notebook(str(notebook), str(output), kernel_name="python3", engine_name=execute._engine(),
                                   progress_bar=False, cwd=str(tmp_path),
                                   config=execute._kernel_config(Path(tempfile.mkdtemp(dir=tmp_path))),
                                   **kernel)  # fmt: skip
        return executed_state(output)

    def manager():  # local sockets in a folder of each kernel's own, as the runner's pool does
        from jupyter_client.manager import AsyncKernelManager

        return AsyncKernelManager(kernel_name="python3", config=execute._kernel_config(Path(tempfile.mkdtemp(dir=tmp_path))))

    pool = KernelPool(manager, {"cwd": str(tmp_path), "env": dict(os.environ), "extra_arguments": execute.KERNEL_ARGUMENTS})
    try:
        firsts = [pool.start("probe", notebook), pool.start("other", notebook)]
        assert firsts[0] is pool.start("probe", notebook)  # one kernel per stage
        pool.discard("other")  # a stage found unchanged: its kernel is stopped
        assert not firsts[1].manager.has_kernel and pool.take("other") is None
        first = pool.take("probe")
        assert first.manager.has_kernel
        ahead = run("ahead", km=first.manager)
        assert not first.manager.has_kernel  # stopped with its notebook
        second_kernel = pool.start("probe", notebook, also=["colorsys", "torch"])  # imported in its last run, say
        second = run("second", km=pool.take("probe").manager)
        fresh = run("fresh")  # papermill starts this one itself
    finally:
        pool.close()

    assert first.preloaded == ["json", "os", "sys", "frameatlas", "frameatlas.store"] and first.error is None
    assert ahead["preloaded"] and second["preloaded"] and not fresh["preloaded"]
    assert len({ahead["pid"], second["pid"], fresh["pid"]}) == 3 and ahead["pid"] == first.pid == first.record(0)["pid"]
    assert second["pid"] == second_kernel.pid
    assert second_kernel.preloaded == first.preloaded + ["colorsys"]  # a model library is never imported ahead
    # the same namespace as in a kernel papermill started (nothing from the warm-up, nothing from
    # the notebook run before in the first kernel) and the same execution counts
    assert ahead["names"] == second["names"] == fresh["names"] and "leaked" not in second["names"]
    assert ahead["count"] == second["count"] == fresh["count"]


def test_a_kernel_started_ahead_imports_the_modules_its_stage_loaded_last_time_but_no_model_library(tmp_path):
    import papermill
    from frameatlas.pipeline import execute
    from frameatlas.pipeline.kernels import KernelPool, modules_file

    cache = tmp_path / "cache"
    modules_file(cache, "probe").parent.mkdir(parents=True)
    # recorded by the stage's last kernel: a submodule loaded on first use, a model library, and
    # names outside the warm packages (a module of the notebook's own, a stdlib one)
    modules_file(cache, "probe").write_text(json.dumps(["PIL", "PIL.ImageMorph", "torch", "torch.nn", "colorsys"]))
    probe = (
        "import json, sys\n"
        "print(json.dumps({name: name in sys.modules for name in ('PIL.ImageMorph', 'torch', 'colorsys')}))"
    )  # fmt: skip
    notebook = make_notebook(tmp_path / "probe.ipynb", probe)

    def manager():
        from jupyter_client.manager import AsyncKernelManager

        return AsyncKernelManager(kernel_name="python3", config=execute._kernel_config(Path(tempfile.mkdtemp(dir=tmp_path))))

    launch = {"cwd": str(tmp_path), "env": dict(os.environ), "extra_arguments": execute.KERNEL_ARGUMENTS}
    pool = KernelPool(manager, launch, cache)
    try:
        pool.start("probe", notebook)
        kernel = pool.take("probe")
        output = tmp_path / "ran.ipynb"
        papermill.execute_notebook(str(notebook), str(output), kernel_name="python3", engine_name=execute._engine(),
                                   progress_bar=False, cwd=str(tmp_path), km=kernel.manager,
                                   config=execute._kernel_config(Path(tempfile.mkdtemp(dir=tmp_path))))  # fmt: skip
    finally:
        pool.close()
    assert kernel.error is None
    assert executed_state(output) == {"PIL.ImageMorph": True, "torch": False, "colorsys": False}


def test_a_kernel_started_ahead_compiles_numba_code_into_the_stages_cache(tmp_path):
    """The libraries a kernel imports ahead (umap, pynndescent) find the numba code the stage cached before."""
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"} | {"XDG_CACHE_HOME": str(tmp_path)}
    script = (
        "from frameatlas.pipeline.kernels import preload; preload(['numba']); "
        "import numba.core.config, os; print(numba.core.config.CACHE_DIR); print(os.environ['NUMBA_CACHE_DIR'])"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    expected = str(tmp_path / "frameatlas" / "numba")
    assert done.stdout.split() == [expected, expected]


def test_contact_sheets_are_redrawn_only_for_videos_whose_thumbnails_changed(finished_run, tmp_path):
    from frameatlas.frames import SHEET_KEYS, save_contact_sheets
    from frameatlas.store import RunPaths

    def file_identity(path: Path) -> tuple[int, int]:  # a sheet written again is a new file (atomic rename)
        return path.stat().st_ino, path.stat().st_mtime_ns

    run = RunPaths(shutil.copytree(finished_run, tmp_path / "run"))
    (run.contact_sheet("_").with_name(SHEET_KEYS)).unlink(missing_ok=True)  # unknown origin: every sheet is drawn
    drawn = {video["video_name"]: file_identity(path) for video, path in save_contact_sheets(run)}
    assert len(drawn) == 3
    again = {video["video_name"]: file_identity(path) for video, path in save_contact_sheets(run)}
    assert again == drawn  # nothing changed: every sheet kept as it was

    frames = pd.read_parquet(run.table("frames"))
    changed = frames.video_name.iloc[0]
    thumbnail = run.absolute(frames.thumbnail.iloc[0])
    thumbnail.write_bytes(thumbnail.read_bytes() + b"\0")  # a thumbnail made again, say
    redrawn = {video["video_name"]: file_identity(path) for video, path in save_contact_sheets(run)}
    assert [name for name in drawn if redrawn[name] != drawn[name]] == [changed]
    four_across = {video["video_name"]: file_identity(path) for video, path in save_contact_sheets(run, columns=4)}
    assert all(four_across[name] != redrawn[name] for name in drawn)  # other options: every sheet drawn anew


# --------------------------------------------------------------------------- search through serve


def cli_search(run: Path, *args: str) -> tuple[int, str, str, set[str]]:
    """`frameatlas search RUN ARGS` in a new process: status, stdout, stderr without import lines,
    and the frameatlas modules it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "frameatlas.cli", "search", str(run), *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    imported = set(re.findall(r"^import time:.*\|\s*(frameatlas[\w.]*)\s*$", done.stderr, re.M))
    errors = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
    return done.returncode, done.stdout, errors, imported


@pytest.mark.slow
def test_search_goes_through_a_running_server_and_prints_the_same(finished_run, tmp_path):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    frames = pd.read_parquet(run / "tables" / "frames.parquet")
    queries = [
        ("HELLO", "--top-k", "5"),
        ("a red square", "--top-k", "4", "--threshold", "0.8", "--channels", "visual"),
        ("--frame", frames.frame_key.iloc[3], "--top-k", "3", "--video", "alpha.mp4"),
        ("--image", str(run / frames.thumbnail.iloc[5]), "--top-k", "3", "--from", "0.5", "--to", "2.5"),
        ("WORLD", "--channels", "nonsense"),  # refused, with the search's own message
    ]
    server = Server(run, tmp_path / "serve.log")
    try:
        served = [cli_search(run, *query) for query in queries]
        exported = cli_search(run, "HELLO", "--top-k", "3", "--export", str(tmp_path / "served-export"))
    finally:
        assert server.stop() == 130
    assert not (run / ".frameatlas-serve.json").exists()
    here = [cli_search(run, *query) for query in queries]
    exported_here = cli_search(run, "HELLO", "--top-k", "3", "--export", str(tmp_path / "export-here"))

    for query, (status, out, err, imported), (status_here, out_here, err_here, imported_here) in zip(queries, served, here):
        assert (status, out) == (status_here, out_here), query
        assert [l for l in err.splitlines() if l.startswith(("note:", "error:"))] == [
            l for l in err_here.splitlines() if l.startswith(("note:", "error:")) and "frameatlas serve" not in l
        ], query  # fmt: skip
        assert "frameatlas.search" not in imported and "frameatlas.search" in imported_here, query  # asked the server
    assert served[0][0] == 0 and "gamma.mp4" in served[0][1].splitlines()[2]  # the on-screen text's video first
    assert served[-1][0] == 2 and "error: unknown channel(s) nonsense" in served[-1][2]
    assert exported[0] == exported_here[0] == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "served-export" / "hits.csv"),
                                  pd.read_csv(tmp_path / "export-here" / "hits.csv"))  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "served-export" / "top_k").iterdir()) == sorted(
        p.name for p in (tmp_path / "export-here" / "top_k").iterdir()
    )


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_stale_address_file_is_passed_over(finished_run, tmp_path, capsys):
    import socket

    from frameatlas import cli, models
    from frameatlas.search import format_hits, search
    from frameatlas.serve.client import ADDRESS_FILE

    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    for pid, why in ((gone.pid, "which is gone"), (os.getpid(), "does not answer")):
        (run / ADDRESS_FILE).write_text(json.dumps({"url": f"http://127.0.0.1:{closed_port}/", "pid": pid, "run": str(run)}))
        query = f"a green square, asked with pid {pid}"  # a text never encoded before: the model loads here
        models.clear_loaded()
        client_log = logging.getLogger("frameatlas.serve.client")  # the CLI's logging does not propagate to caplog
        seen = Recorder()
        client_log.addHandler(seen)
        client_log.setLevel(logging.DEBUG)
        try:
            assert cli.main(["search", str(run), query, "--top-k", "3", "--channels", "visual"]) == 0
        finally:
            client_log.removeHandler(seen)
            client_log.setLevel(logging.NOTSET)
        out, err = capsys.readouterr()
        assert any(why in message for message in seen.messages), seen.messages
        assert "run `frameatlas serve" in err and "well under a second" in err  # it loaded the model here, and says so
        assert out.strip() == format_hits(search(run, query, top_k=3, channels=["visual"])).strip()
