"""The install files agree with each other and with what the README promises."""

from __future__ import annotations

import tomllib

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
