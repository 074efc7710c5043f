"""A user's project: found from the working directory, its catalog and workspace, its state
folder; and `conflux init` output that runs as generated."""

import subprocess
import sys
from pathlib import Path

import pytest

from conflux.cli.init import package_name, render_project
from conflux.core.errors import ConfigError
from conflux.core.project import Project
from conflux.core.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def write_project(folder: Path, tool: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(f"[project]\nname = 'x'\n\n{tool}\n")
    return folder


def test_the_repository_is_the_demo_project():
    project = Project.load(REPO)
    assert project.catalog == "pipelines.catalog:DATASETS"
    assert project.workspace_file == REPO / "workspace.yaml"
    assert {ds.name for ds in project.load_catalog()} >= {"orders", "revenue_by_nation"}


def test_the_nearest_conflux_project_above_the_working_directory_wins(tmp_path):
    outer = write_project(tmp_path, '[tool.conflux]\ncatalog = "outer.cat:DATASETS"')
    inner = write_project(tmp_path / "inner", '[tool.dagster]\nmodule_name = "inner.defs"')
    deep = inner / "src" / "pkg"
    deep.mkdir(parents=True)
    assert Project.find(env={}, start=deep).root == outer  # [tool.conflux] before [tool.dagster]
    assert Project.find(env={"CONFLUX_PROJECT": str(inner)}, start=deep).root == inner
    bare = tmp_path.parent / f"{tmp_path.name}-bare"
    bare.mkdir()
    assert Project.find(env={}, start=bare) == Project(root=bare)


def test_state_and_workspace_follow_the_project_never_the_installed_package(tmp_path):
    root = write_project(tmp_path / "p", '[tool.conflux]\ncatalog = "p.cat:DATASETS"\n\n'
                                         '[tool.dagster]\nmodule_name = "p.defs"')
    settings = Settings.from_env({"CONFLUX_PROJECT": str(root)})
    assert settings.home == root / ".conflux"
    assert settings.project_root == root
    # no workspace.yaml of its own: one is made in the state folder from [tool.dagster]
    assert settings.workspace == root / ".conflux" / "workspace.yaml"
    text = Project.load(root).workspace_yaml()
    assert "module_name: p.defs" in text and f"working_directory: {root}" in text
    (root / "workspace.yaml").write_text("load_from: []\n")
    assert Settings.from_env({"CONFLUX_PROJECT": str(root)}).workspace == root / "workspace.yaml"
    home = tmp_path / "elsewhere"
    assert Settings.from_env({"CONFLUX_PROJECT": str(root), "CONFLUX_HOME": str(home)}).home == home


@pytest.mark.parametrize("tool, message", [
    ('[tool.conflux]\ncatalog = "not a path"', "must look like 'package.module:ATTRIBUTE'"),
    ('[tool.conflux]\ncatalg = "a.b:C"', "unknown key(s) in [tool.conflux]: catalg"),
    ("[tool.conflux\n", "is not valid TOML"),
])
def test_a_bad_conflux_table_is_named(tmp_path, tool, message):
    root = write_project(tmp_path, tool)
    with pytest.raises(ConfigError, match=None) as exc:
        Project.load(root)
    assert message in str(exc.value)


def test_a_missing_or_broken_catalog_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match=r"no catalog: .*\[tool.conflux\] catalog"):
        Project(root=tmp_path).load_catalog()
    root = write_project(tmp_path / "q", '[tool.conflux]\ncatalog = "nowhere.catalog:DATASETS"')
    with pytest.raises(ConfigError, match="cannot load catalog 'nowhere.catalog:DATASETS'"):
        Project.load(root).load_catalog()


def test_package_names_from_folder_names():
    assert package_name(Path("/x/my-sensors")) == "my_sensors"
    assert package_name(Path("/x/2fast")) == "project_2fast"
    assert package_name(Path("/x/class")) == "project_class"


def test_init_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        render_project(tmp_path, package="p", topic="p.t", conflux_requirement="conflux")
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_init_writes_a_project_whose_own_tests_pass(tmp_path):
    folder = tmp_path / "cold-chain"
    files = render_project(folder, package="cold_chain", topic="cold_chain.readings",
                           conflux_requirement="conflux")
    names = {str(f.relative_to(folder)) for f in files}
    assert {"pyproject.toml", "cold_chain/catalog.py", "tests/test_catalog.py"} <= names
    project = Project.load(folder)
    assert project.catalog == "cold_chain.catalog:DATASETS"
    assert project.dev_producer == "cold_chain.producer:run"
    assert project.dagster_module == "cold_chain.definitions"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                         cwd=folder, capture_output=True, text=True, timeout=240,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(folder),
                              "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout
