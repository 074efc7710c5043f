"""The framework's import graph goes one way: core < contracts < io < event/batch/observe/
ledger/outbox < dagster < cli/stack; and nothing in ``conflux`` imports the demo platform."""

import ast
from pathlib import Path

import pytest

CONFLUX = Path(__file__).resolve().parents[2] / "conflux"
LAYERS = {"core": 0, "contracts": 1, "io": 2, "event": 3, "batch": 3, "observe": 3,
          "ledger": 3, "outbox": 3, "dagster": 4, "cli": 5, "stack": 5}
DEMO = ("pipelines", "sensors", "resources", "bench", "reliability", "tests")
ALLOWED = "# layer:"  # an upward import must say why on its line


def imports(path: Path):
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            yield name, node.lineno, lines[node.lineno - 1]


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if parts[0] == "conflux" and len(parts) > 1 else None


def modules():
    return sorted(p for p in CONFLUX.rglob("*.py") if p.parent != CONFLUX)


def test_every_framework_package_has_a_layer():
    packages = {p.relative_to(CONFLUX).parts[0] for p in modules()}
    assert packages <= set(LAYERS), f"give these packages a layer: {packages - set(LAYERS)}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(CONFLUX)))
def test_imports_go_downwards_and_never_to_the_demo(path):
    own = LAYERS[path.relative_to(CONFLUX).parts[0]]
    problems = []
    for name, line, text in imports(path):
        if name.split(".")[0] in DEMO:
            problems.append(f"line {line}: imports the demo or test code ({name})")
        target = layer_of(name)
        if target is not None and target > own and ALLOWED not in text:
            problems.append(f"line {line}: layer {own} imports {name} (layer {target})")
    assert not problems, "\n".join(problems)


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from conflux.cli.main import main\nimport pipelines.catalog\n")
    found = [(name, layer_of(name)) for name, _, _ in imports(bad)]
    assert found == [("conflux.cli.main", 5), ("pipelines.catalog", None)]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(CONFLUX)))
def test_only_dagsters_public_api(path):
    """House rule 1: no ``dagster._*`` (nor ``dagster_*._*``) import anywhere in the framework."""
    private = [(line, text) for name, line, text in imports(path)
               if any(part.startswith("_") for part in name.split(".")[1:])
               and name.split(".")[0].startswith("dagster")]
    assert not private, f"{path.name}: private Dagster imports {private}"


def test_the_stack_runs_dagsters_own_run_launcher():
    import yaml

    from conflux.core.settings import Settings
    from conflux.stack.dagster import render_dagster_yaml

    launcher = yaml.safe_load(render_dagster_yaml(Settings.from_env({})))["run_launcher"]
    assert launcher == {"module": "dagster", "class": "DefaultRunLauncher"}
