"""Every ``conflux`` subcommand, given bad input or services that are down, ends with exit 2
(usage error) or 1 (failure) and one line on stderr naming the problem, never a traceback
(the exit codes of ``conflux.cli.main``'s docstring).

Postgres, Kafka and the Dagster webserver are "down": their ports are loopback ports nothing
listens on. Most cases run ``main()`` in this process; those in ``AS_USERS_RUN_IT`` run the
installed ``conflux`` command, in the background while the others run. Nothing is started:
``stack up`` and ``dev`` only get input they refuse before starting anything.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conflux.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[2]
CONFLUX = str(Path(sys.executable).parent / "conflux")
CLEARED = ("KAFKA_BOOTSTRAP_SERVERS", "CONFLUX_POSTGRES_URL", "CONFLUX_DAGSTER_URL",
           "CONFLUX_WORKSPACE", "CONFLUX_KAFKA_BROKERS", "CONFLUX_DEBUG")
DAY = ("--start", "2020-01-01", "--end", "2020-01-02")


@dataclass(frozen=True)
class Case:
    """``conflux ARGV`` ends with ``code`` and a message containing ``says`` (``{name}``
    placeholders: the test's files and ports)."""

    argv: tuple[str, ...]
    code: int
    says: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.env.items())
        return " ".join(self.argv) + extra


def case(*argv: str, code: int, says: str, **env: str) -> Case:
    return Case(argv, code, says, env)


PG, KAFKA, UI = "127.0.0.1:{pg}", "127.0.0.1:{kafka}", "http://127.0.0.1:{ui}"
CASES = [
    case("stack", "up", "zookeeper", code=2, says="unknown service 'zookeeper'"),
    case("stack", "up", "postgres", code=1, says="{busy} is in use", CONFLUX_PG_PORT="{busy}"),
    case("stack", "down", "zookeeper", code=2, says="unknown service 'zookeeper'"),
    case("stack", "down", code=1, says="CONFLUX_KAFKA_BROKERS", CONFLUX_KAFKA_BROKERS="x"),
    case("stack", "status", "extra", code=2, says="unrecognized arguments"),
    case("stack", "status", code=1, says="stopped"),
    case("stack", "env", "extra", code=2, says="unrecognized arguments"),
    case("stack", "env", code=1, says="CONFLUX_KAFKA_PORT", CONFLUX_KAFKA_PORT="nope"),
    case("stack", "reset", code=2, says="--yes"),
    case("stack", "reset", "--yes", code=1, says="CONFLUX_POSTGRES_URL",
         CONFLUX_POSTGRES_URL="postgresql://x@127.0.0.1:{pg}/x"),
    case("dev", "--rate", "abc", code=2, says="invalid float value: 'abc'"),
    case("dev", "--rate", "0", code=2, says="--rate 0 must be a positive number"),
    case("dev", code=1, says="cannot load dev_producer", CONFLUX_PROJECT="{broken}"),
    case("contracts", "register", "--catalog", "nosuch:X", code=2, says="--catalog"),
    case("contracts", "register", code=1, says=f"Postgres at {PG} is not reachable"),
    case("contracts", "register", code=1, says="not UTF-8", CONFLUX_PROJECT="{latin1}"),
    case("contracts", "check", "--catalog", "not a spec", code=2, says="--catalog"),
    case("contracts", "check", code=1, says=f"Postgres at {PG} is not reachable"),
    case("contracts", "check", code=1, says="nested too deeply", CONFLUX_PROJECT="{deeptoml}"),
    case("contracts", "diff", "{latin1_file}", "{schema}", code=2, says="cannot read schema"),
    case("contracts", "diff", "{not_json}", "{schema}", code=2, says="is not valid JSON"),
    case("contracts", "diff", "{deep}", "{schema}", code=2, says="nests deeper than"),
    case("contracts", "diff", "{missing}", "{schema}", code=2, says="cannot read schema"),
    case("contracts", "diff", "{schema}", "{schema}", "--mode", "SIDEWAYS", code=2,
         says="SIDEWAYS"),
    case("contracts", "diff", "{schema}", "{string_schema}", code=1, says="incompatible"),
    case("contracts", "mode", "orders", "SIDEWAYS", code=2, says="SIDEWAYS"),
    case("contracts", "mode", "orders", "FULL", code=1, says=f"Postgres at {PG}"),
    case("backfill", "nosuch", *DAY, code=2, says="unknown dataset 'nosuch'"),
    case("backfill", "orders", "--start", "x", "--end", "2020-01-02", code=2,
         says="--start 'x' is not a date"),
    case("backfill", "orders", "--start", "2020-02-01", "--end", "2020-01-01", code=2,
         says="is after --end"),
    case("backfill", "orders", *DAY, "--timeout", "x", code=2, says="--timeout"),
    case("backfill", "nation", *DAY, code=2, says="not partitioned"),
    case("backfill", "orders", *DAY, code=1, says=f"Dagster webserver at {UI}"),
    case("replay", "nosuch", "--since", "1h", code=2, says="unknown dataset 'nosuch'"),
    case("replay", "nation", "--since", "1h", code=2, says="batch dataset"),
    case("replay", "orders", "--since", "garbage", code=2, says="'garbage' is neither"),
    case("replay", "orders", "--since", "2999-01-01", code=2, says="in the future"),
    case("replay", "orders", "--since", "1h", "--dry-run", code=1, says=f"Kafka at {KAFKA}"),
    case("ops", "apply", "{latin1_file}", code=2, says="is not UTF-8 text"),
    case("ops", "apply", "{not_json}", code=2, says="line 1: not JSON"),
    case("ops", "apply", "{deep_line}", code=2, says="line 1: nested too deeply"),
    case("ops", "apply", "{unknown_table}", code=2, says="unknown table 'nope'"),
    case("ops", "apply", "{missing}", code=2, says="cannot read"),
    case("ops", "apply", "{empty}", code=1, says=f"Postgres at {PG} is not reachable"),
    case("ops", "relay", "--bogus", code=2, says="unrecognized arguments"),
    case("ops", "relay", "--once", code=1, says=f"Postgres at {PG} is not reachable"),
    case("ops", "status", "extra", code=2, says="unrecognized arguments"),
    case("ops", "status", code=1, says=f"Postgres at {PG} is not reachable"),
    case("init", "{empty_dir}", "--package", "not valid", code=2, says="not a valid Python"),
    case("init", "{full_dir}", code=2, says="is not an empty folder"),
    case("init", "{schema}/sub", code=1, says="Not a directory"),
    case("trace", code=2, says="required: CORRELATION_ID"),
    case("trace", "abc", code=1, says="no Dagster instance"),
    case("trace", "abc", code=1, says=f"Postgres at {PG} is not reachable",
         DAGSTER_HOME="{dagster_home}"),
    case("lag", "nosuch", code=2, says="not an event dataset: nosuch"),
    case("lag", code=1, says=f"Dagster webserver at {UI}"),
    case("lag", code=1, says="not UTF-8", CONFLUX_PROJECT="{latin1}"),
    case("dlq", "list", "no.such.topic", code=2, says="topic 'no.such.topic' is not"),
    case("dlq", "list", "tpch.orders", "--reason", "BOGUS", code=2, says="unknown reason"),
    case("dlq", "list", "tpch.orders", "--since", "soon", code=2, says="'soon' is neither"),
    case("dlq", "list", "tpch.orders", "--limit", "-1", code=2, says="--limit -1"),
    case("dlq", "list", "tpch.orders", "--limit", "x", code=2, says="invalid int value"),
    case("dlq", "list", "tpch.orders", code=1, says=KAFKA),
    case("dlq", "replay", "tpch.orders", "--limit", "0", code=2, says="--limit 0"),
    case("dlq", "replay", "nope", code=2, says="topic 'nope' is not"),
    case("dlq", "replay", "tpch.orders", "--catalog", "nosuch:X", code=2, says="--catalog"),
    case("dlq", "replay", "tpch.orders", code=1, says=f"Dagster webserver at {UI}"),
    case("dlq", "gaps", "no.such.topic", code=2, says="topic 'no.such.topic' is not"),
    case("dlq", "gaps", "tpch.orders", code=1, says="database does not answer"),
    case("dlq", "ack-gaps", "tpch.orders", "1", code=2, says="--note"),
    case("dlq", "ack-gaps", "tpch.orders", "x", "--note", "n", code=2, says="gap ids are numbers"),
    case("dlq", "ack-gaps", "tpch.orders", "1", "--note", "n", code=1,
         says="database does not answer"),
    case("ledger", "rebuild", "--projection", "nosuch", code=2, says="not a ledger projection"),
    case("ledger", "rebuild", "--timeout", "x", code=2, says="--timeout"),
    case("ledger", "rebuild", code=1, says=f"Dagster webserver at {UI}"),
    case("ledger", "rebuild", "--local", "--check", code=1, says=f"Postgres at {PG}"),
    case("ledger", "explain", code=2, says="required: ACCOUNT"),
    case("ledger", "explain", "7", "--projection", "nosuch", code=2,
         says="not a ledger projection"),
    case("ledger", "explain", "7", code=1, says="PROJECTION_NOT_FOUND"),
    case("lake", "history", "nosuch", code=2, says="unknown dataset 'nosuch'"),
    case("lake", "history", "orders", "--limit", "-1", code=2, says="--limit must be 0"),
    case("lake", "history", "orders", code=1, says="no Delta table"),
    case("lake", "show", "orders", "--as-of", "garbage", code=2, says="'garbage' is neither"),
    case("lake", "show", "orders", "--partition", "garbage", code=2, says="not a date"),
    case("lake", "show", "orders", "--version", "-1", code=2, says="--version must be 0"),
    case("lake", "show", "orders", "--version", "x", code=2, says="invalid int value"),
    case("lake", "show", "orders", code=1, says="nothing stored"),
    case("lake", "migrate", "--bogus", code=2, says="unrecognized arguments"),
    case("lake", "migrate", "--dataset", "nosuch", code=1, says="dataset nosuch: not found"),
]
# the tracebacks users saw (issue 20), and exit 2 as a shell sees it
AS_USERS_RUN_IT = {
    "ops apply {latin1_file}", "contracts diff {deep} {schema}", "ops status",
    "replay orders --since 1h --dry-run", "stack up zookeeper", "dev --rate 0",
}


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The command paths of every subcommand that runs something (``stack up``, ``lag``)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path}
    return {leaf for name, sub in subs[0].choices.items() for leaf in leaves(sub, (*path, name))}


def command_of(argv: tuple[str, ...], known: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    return next((path for path in known if argv[:len(path)] == path), None)


COMMANDS = leaves(build_parser())


def params(cases: list[Case]) -> list:
    return [pytest.param(c, id=c.id) for c in cases]


IN_PROCESS = [c for c in CASES if c.id not in AS_USERS_RUN_IT]
SUBPROCESS = [c for c in CASES if c.id in AS_USERS_RUN_IT]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files and ports the cases name, and the environment they run in: no service answers."""
    root = tmp_path_factory.mktemp("cli-errors")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    values = {"pg": free_port(), "kafka": free_port(), "ui": free_port(),
              "busy": busy.getsockname()[1]}
    files = {
        "latin1_file": b"\xff\xfe caf\xe9\n",
        "not_json": b"{oops\n",
        "deep": ("[" * 5000 + "]" * 5000).encode(),
        "deep_line": ('{"table": "orders", "row": ' + "[" * 5000 + "]" * 5000 + "}\n").encode(),
        "unknown_table": b'{"table": "nope", "row": {}}\n',
        "empty": b"",
        "schema": b'{"type": "object", "properties": {"a": {"type": "integer"}}}',
        "string_schema": b'{"type": "object", "properties": {"a": {"type": "string"}}}',
        "full_dir/keep.txt": b"x",
        "latin1/pyproject.toml": b'[tool.conflux]\ncatalog = "caf\xe9:X"\n',
        "deeptoml/pyproject.toml": ("x = " + "[" * 5000 + "]" * 5000 + "\n").encode(),
        "broken/pyproject.toml": b'[tool.conflux]\ncatalog = "nosuch_pkg.catalog:DATASETS"\n'
                                 b'dev_producer = "nosuch_pkg.producer:run"\n',
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        values[name.split("/")[0]] = str(path.parent if "/" in name else path)
    values.update(missing=str(root / "missing.json"), empty_dir=str(root / "new"))
    home = root / "home"
    env = {"CONFLUX_HOME": str(home), "CONFLUX_PROJECT": str(REPO),
           "CONFLUX_PG_PORT": str(values["pg"]), "CONFLUX_KAFKA_PORT": str(values["kafka"]),
           "CONFLUX_KAFKA_CONTROLLER_PORT": str(free_port()),
           "CONFLUX_DAGSTER_PORT": str(values["ui"]), "CONFLUX_LAKE_PATH": str(home / "lake"),
           "DAGSTER_HOME": str(home / "dagster_home"),
           "DAGSTER_PG_URL": f"postgresql+psycopg2://conflux@127.0.0.1:{values['pg']}/conflux"}
    values["dagster_home"] = str(root / "dagster_home")  # an instance whose Postgres is down
    (root / "dagster_home").mkdir()
    from conflux.core.settings import Settings
    from conflux.stack.dagster import render_dagster_yaml

    (root / "dagster_home" / "dagster.yaml").write_text(render_dagster_yaml(Settings.from_env(env)))
    yield values, env
    busy.close()


def resolved(c: Case, values: dict, env: dict) -> tuple[list[str], dict[str, str], str]:
    argv = [a.format(**values) for a in c.argv]
    extra = {k: v.format(**values) for k, v in c.env.items()}
    return argv, {**env, **extra}, c.says.format(**values)


def check(c: Case, code: int, out: str, err: str, says: str) -> None:
    shown = f"exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-4000:]}"
    assert "Traceback" not in err, shown
    assert code == c.code, shown
    lines = [line for line in err.splitlines() if line.strip()]
    if c.argv[-1:] != ("status",) and not (c.code == 1 and c.argv[:2] == ("contracts", "diff")):
        assert lines, shown  # a command's own verdict (status, diff) is its output instead
    last = lines[-1] if lines else out
    if lines and lines[0].startswith("usage:") and ": error: " in last:  # argparse's own
        lines = [last]
    assert len(lines) <= 1, f"more than one line on stderr:\n{shown}"
    assert says in last, f"{says!r} not in the message:\n{shown}"


@pytest.fixture(scope="module")
def users(world):
    """The ``AS_USERS_RUN_IT`` cases, started at once, to run while the in-process ones do."""
    values, env = world
    base = {k: v for k, v in os.environ.items() if k not in CLEARED}

    def run(c: Case):
        argv, case_env, _ = resolved(c, values, env)
        return subprocess.run([CONFLUX, *argv], env={**base, **case_env}, cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(len(SUBPROCESS)) as pool:
        yield {c.id: pool.submit(run, c) for c in SUBPROCESS}


def test_every_subcommand_has_a_usage_case_and_a_failure_case():
    assert len({c.id for c in CASES}) == len(CASES), "two cases with one id"
    assert len(COMMANDS) >= 20 and ("stack", "up") in COMMANDS and ("lag",) in COMMANDS
    codes: dict[tuple[str, ...], set[int]] = {path: set() for path in COMMANDS}
    stale = [c.id for c in CASES if command_of(c.argv, COMMANDS) is None]
    assert not stale, f"cases of subcommands the CLI does not have: {stale}"
    for c in CASES:
        codes[command_of(c.argv, COMMANDS)].add(c.code)
    missing = {" ".join(path): sorted({1, 2} - got) for path, got in codes.items() if got != {1, 2}}
    assert not missing, f"give these subcommands cases exiting with: {missing}"


@pytest.mark.usefixtures("users")
@pytest.mark.parametrize("c", params(IN_PROCESS))
def test_in_process(c, world, monkeypatch, capsys):
    values, env = world
    argv, case_env, says = resolved(c, values, env)
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in case_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    captured = capsys.readouterr()
    check(c, code, captured.out, captured.err, says)


@pytest.mark.parametrize("c", params(SUBPROCESS))
def test_as_users_run_it(c, world, users):
    values, env = world
    res = users[c.id].result()
    check(c, res.returncode, res.stdout, res.stderr, resolved(c, values, env)[2])


def test_an_unexpected_error_is_one_line_and_conflux_debug_shows_its_traceback(monkeypatch,
                                                                              capsys):
    cli = sys.modules["conflux.cli.main"]

    def broken(args):
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "cmd_stack_env", broken)
    assert main(["stack", "env"]) == 1
    err = capsys.readouterr().err
    assert err == ("conflux: internal error: KeyError: 'surprise' (set CONFLUX_DEBUG=1 to see "
                   "the traceback)\n")
    monkeypatch.setenv("CONFLUX_DEBUG", "1")
    assert main(["stack", "env"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("to see the traceback)\n")


def test_a_connection_failure_under_another_error_names_the_service(monkeypatch):
    import psycopg

    from conflux.cli.main import failure

    monkeypatch.setenv("CONFLUX_PG_PORT", "15999")
    try:
        try:
            raise psycopg.OperationalError('connection failed: connection to server at '
                                           '"127.0.0.1", port 15999 failed: Connection refused')
        except psycopg.OperationalError as exc:
            raise RuntimeError("storage unavailable") from exc
    except RuntimeError as exc:
        assert failure(exc) == (1, "[SERVICE_UNAVAILABLE] Postgres at 127.0.0.1:15999 is not "
                                   "reachable (Connection refused); is the stack running? "
                                   "(`conflux stack status`)")
