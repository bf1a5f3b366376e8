"""pyproject.toml and environment.yml must list the same dependencies."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import REPO

# conda-forge names that differ from PyPI names
PIP_TO_CONDA = {"psycopg": "psycopg"}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", requirement)
    assert match, requirement
    return match.group(1).lower().replace("_", "-"), match.group(3).replace(" ", "")


def test_pyproject_and_environment_list_the_same_dependencies():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pip_deps = dict(_split(r) for r in pyproject["project"]["dependencies"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda_deps = dict(
        _split(d)
        for d in env["dependencies"]
        if isinstance(d, str) and not d.startswith(("python", "pip"))
    )
    expected = {PIP_TO_CONDA.get(name, name): spec for name, spec in pip_deps.items()}
    assert conda_deps == expected


def test_environment_installs_the_project_with_test_extras():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e .[test]" in pip_section


def test_no_jupyter_metapackage_at_run_time():
    # `jupyter` makes every papermill start ~1 s slower (reference/SERVICES.md)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = {_split(r)[0] for r in pyproject["project"]["dependencies"]}
    assert "jupyter" not in names
