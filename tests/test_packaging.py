"""The install files agree with each other and with what the README promises."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import videogen
import yaml
from conftest import REPO


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_environment_yml_pip_section_matches_pyproject_dependencies():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item)
    listed = sorted(req for req in pip_section if not req.startswith("-e"))
    assert listed == sorted(_pyproject()["project"]["dependencies"])
    assert any(req.startswith("-e .") for req in pip_section), "environment.yml must install frameatlas itself"
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"]


def test_console_script_and_package_location():
    project = _pyproject()
    assert project["project"]["scripts"]["frameatlas"] == "frameatlas.cli:main"
    assert project["tool"]["setuptools"]["packages"]["find"]["where"] == ["lib"]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in ci


def test_every_stage_notebook_exists_and_has_a_parameters_cell():
    import nbformat
    from frameatlas.pipeline import STAGES

    for stage in STAGES:
        notebook = nbformat.read(REPO / "notebooks" / stage.notebook, as_version=4)
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, stage.notebook
        for name in ("config", "config_path", "run_dir", "force"):
            assert f"{name} =" in tagged[0].source
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "commit notebooks without outputs"


def test_the_package_sees_the_checkouts_notebooks_and_default_config():
    """lib/frameatlas/notebooks and templates/pipeline.yaml are symlinks: one copy of each file in git."""
    import frameatlas

    package = Path(frameatlas.__file__).parent
    assert (package / "notebooks").is_symlink() and (package / "templates" / "pipeline.yaml").is_symlink()
    assert (package / "notebooks").samefile(REPO / "notebooks")
    assert (package / "templates" / "pipeline.yaml").samefile(REPO / "pipeline.yaml")
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]["frameatlas"]
    assert {"notebooks/*.ipynb", "templates/*.yaml"} <= set(package_data)


_NOT_SOURCE_NAMES = shutil.ignore_patterns(
    ".git", ".venv", "outputs", "data", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"
)


def _not_source(folder: str, names: list[str]) -> set[str]:
    """What the test does not copy into its build tree: environments, caches, results, earlier builds,
    and anything that is not a file, folder or symlink (a running kernel's sockets in notebooks/)."""
    skipped = set(_NOT_SOURCE_NAMES(folder, names))
    for name in set(names) - skipped:
        mode = os.lstat(os.path.join(folder, name)).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            skipped.add(name)
    return skipped


def _run(command: list, **options) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=600, **options)
    assert result.returncode == 0, f"{command}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.mark.slow
def test_a_wheel_installed_into_a_fresh_venv_runs_a_pipeline_from_an_unrelated_folder(tmp_path):
    from frameatlas.pipeline import STAGES

    # sdist from a copy of the checkout (symlinks kept, as git checks them out), then a wheel from the sdist,
    # the way `python -m build` does it; no build isolation and no index: nothing is downloaded
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=_not_source)
    dist = tmp_path / "dist"
    sdist_code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"
    sdist = dist / _run([sys.executable, "-c", sdist_code], cwd=source).stdout.strip().splitlines()[-1]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, sdist])
    (wheel,) = dist.glob("frameatlas-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    for stage in STAGES:
        assert f"frameatlas/notebooks/{stage.notebook}" in packed
    for template in ("pipeline.yaml", "dashboard.html.j2", "nbconvert/frameatlas_report/index.html.j2"):
        assert f"frameatlas/templates/{template}" in packed
    # every module and data file of the package (a new sub-package without __init__.py, a new template)
    shipped_kinds = {".py", ".ipynb", ".j2", ".json", ".yaml", ".html", ".css", ".js"}
    expected = set()
    for folder, subfolders, names in os.walk(source / "lib" / "frameatlas", followlinks=True):  # into the symlinks
        subfolders[:] = [name for name in subfolders if name not in ("__pycache__", ".ipynb_checkpoints")]
        for name in names:
            path = Path(folder, name)
            if path.suffix in shipped_kinds and path.is_file():
                expected.add(path.relative_to(source / "lib").as_posix())
    assert {"frameatlas/__init__.py", "frameatlas/notebooks/01_extract.ipynb"} <= expected
    assert expected - packed == set()

    # a fresh venv gets the wheel alone; torch & co. come from this environment through a .pth file,
    # which adds that site-packages folder but runs none of its .pth files (the checkout's editable install)
    fresh = tmp_path / "fresh"
    venv.create(fresh, symlinks=True, with_pip=False)
    python = fresh / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel])
    fresh_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    ours = sysconfig.get_paths()
    ours = dict.fromkeys([ours["purelib"], ours["platlib"]])  # one folder on most systems
    (fresh_site / "heavy_dependencies.pth").write_text("".join(f"{folder}\n" for folder in ours))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FRAMEATLAS_NOTEBOOKS", "VIRTUAL_ENV")}
    env["PATH"] = f"{fresh / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # a kernel found by name runs the fresh python
    # nbconvert's HTML templates are data files under the prefix that installed nbconvert, not in site-packages
    env["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    imported = _run([python, "-c", "import frameatlas; print(frameatlas.__file__)"], cwd=elsewhere, env=env).stdout
    assert Path(imported.strip()).is_relative_to(fresh_site), imported

    videos = tmp_path / "clips"
    videogen.make_video(videos / "one.mp4", seconds=2, fps=10, scene_cuts=[1.0])
    frameatlas = fresh / "bin" / "frameatlas"
    _run([frameatlas, "init", "proj", "--videos", videos], cwd=elsewhere, env=env)
    _run(
        [frameatlas, "run", "proj/pipeline.yaml", "--stages", "extract", "--no-progress", "--set", "models.image.name=fallback",
         "--set", "extract.every_seconds=0.5", "--set", "extract.thumbnail_long_side=64"],
        cwd=elsewhere, env=env,
    )  # fmt: skip
    run = elsewhere / "proj" / "outputs" / "proj"
    frames = pd.read_parquet(run / "tables" / "frames.parquet")
    assert len(frames) == 4 and sorted(frames.timestamp) == [0.0, 0.5, 1.0, 1.5]
    assert (run / "reports" / "01_extract.html").stat().st_size > 0
    assert (run / "index.html").is_file()
