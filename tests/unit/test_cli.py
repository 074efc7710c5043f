import pytest

from conflux.cli import build_parser, main


def test_reset_without_yes_refuses(capsys):
    assert main(["stack", "reset"]) == 2
    assert "--yes" in capsys.readouterr().err


def test_env_prints_export_lines(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CONFLUX_HOME", str(tmp_path))
    assert main(["stack", "env"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = {line.split("=")[0].removeprefix("export ") for line in out}
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DAGSTER_HOME", "CONFLUX_POSTGRES_URL",
            "CONFLUX_LAKE_PATH"} <= names
    assert all(line.startswith("export ") for line in out)


def test_bad_configuration_is_a_clear_error_not_a_traceback(capsys, monkeypatch):
    monkeypatch.setenv("CONFLUX_KAFKA_PORT", "nope")
    assert main(["stack", "env"]) == 1
    assert "CONFLUX_KAFKA_PORT" in capsys.readouterr().err


def test_unknown_service_is_named(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CONFLUX_HOME", str(tmp_path))
    assert main(["stack", "up", "zookeeper"]) == 2
    assert "unknown service 'zookeeper'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["stack", "up", "-h"], ["dev", "-h"], ["init", "-h"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out
