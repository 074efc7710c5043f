"""`Stack.up` stops what it started when a later service fails, and `conflux dev` exits 1 naming
a service that stopped, with and without a producer — on fake services (the real stack:
tests/integration/test_dev_watch.py)."""

from __future__ import annotations

import importlib
import signal
from types import SimpleNamespace

import pytest

from conflux.core.errors import StackError
from conflux.core.settings import Settings
from conflux.stack import Stack
from conflux.stack.service import Launch, ServiceStatus

cli = importlib.import_module("conflux.cli.main")  # the module (conflux.cli.main is the function)


class FakeService:
    def __init__(self, name: str, *, running: bool = False, fails: bool = False):
        self.name, self.running, self.fails = name, running, fails
        self.pidfile = SimpleNamespace(live_pid=lambda: 1 if self.running else None)

    def status(self) -> ServiceStatus:
        return ServiceStatus(self.name, self.running, 1 if self.running else None, "")

    def up(self) -> str:
        if self.fails:
            raise StackError(f"{self.name} exited with code 2 while starting")
        was, self.running = self.running, True
        return f"{self.name}: {'already running' if was else 'started'}"

    def launch(self) -> Launch:
        return Launch(pid=1, proc=None if self.running else object(), began=0.0)

    def await_up(self, launch: Launch) -> str:
        return self.up()

    def abort(self, launch: Launch) -> None:
        self.running = False

    def down(self) -> str:
        self.running = False
        return f"{self.name}: stopped"


@pytest.fixture
def stack(monkeypatch, tmp_path):
    monkeypatch.setattr("conflux.stack.platform.register_contracts", lambda *a, **k: {})
    monkeypatch.setattr("conflux.stack.platform.ensure_platform_topics", lambda *a, **k: None)
    monkeypatch.setattr(Stack, "end_strays", lambda self: [])
    stack = Stack(Settings.from_env({"CONFLUX_HOME": str(tmp_path)}))
    stack.services = {name: FakeService(name) for name in stack.names}
    return stack


def test_a_start_that_fails_half_way_stops_what_this_start_started(stack):
    stack.services["postgres"].running = True  # someone else's: left alone
    stack.services["dagster-webserver"].fails = True
    lines: list[str] = []
    with pytest.raises(StackError, match="dagster-webserver exited"):
        stack.up(report=lines.append)
    assert "start failed: stopping what it had started (kafka)" in lines
    assert {n: s.running for n, s in stack.services.items()} == {
        "postgres": True, "kafka": False, "dagster-webserver": False, "dagster-daemon": False,
        "conflux-metrics": False, "conflux-schema-registry": False}


def test_a_start_stopped_by_ctrl_c_stops_what_it_started(stack, monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(FakeService, "launch", interrupted)  # while Kafka starts
    with pytest.raises(KeyboardInterrupt):
        stack.up(report=lambda line: None)
    assert not any(s.running for s in stack.services.values())


def test_gone_names_the_services_whose_process_exited(stack):
    stack.up(report=lambda line: None)
    stack.services["kafka"].running = False
    assert stack.gone(stack.names) == ["kafka"]


@pytest.fixture
def dev(stack, monkeypatch):
    """``conflux dev`` on the fake stack; returns a function running it with a producer."""
    monkeypatch.setattr(cli, "WATCH_EVERY_S", 0.05)
    monkeypatch.setattr(cli, "_stack", lambda args: stack)
    monkeypatch.setattr(cli, "_start_relay", lambda settings, should_stop: None)
    monkeypatch.setattr(signal, "signal", lambda *args: None)

    def run(producer=None, argv=("dev",)) -> int:
        monkeypatch.setattr(cli, "_dev_producer", lambda no_producer: producer)
        return cli.main(list(argv))

    return run


def kill_later(stack, name: str, after: int = 3):
    """``stack.gone`` as it is, but ``name`` stops after ``after`` looks."""
    real, looks = stack.gone, []

    def gone(names):
        looks.append(1)
        if len(looks) == after:
            stack.services[name].running = False
        return real(names)

    stack.gone = gone


def test_dev_without_a_producer_exits_1_naming_the_service_that_stopped(stack, dev, capsys):
    kill_later(stack, "dagster-daemon")
    assert dev(argv=("dev", "--no-producer")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("conflux: [STACK_SERVICE_FAILED] dagster-daemon "
                                               "no longer running"), err
    assert not any(s.running for s in stack.services.values())  # the rest was stopped


def test_dev_stops_its_producer_when_a_service_stops(stack, dev, capsys):
    stopped = []

    def producer(settings, *, rate, should_stop):
        while not should_stop():
            pass
        stopped.append(rate)

    kill_later(stack, "kafka")
    assert dev(producer, ("dev", "--rate", "7")) == 1
    assert stopped == [7.0] and "kafka no longer running" in capsys.readouterr().err


def test_a_producer_failing_because_a_service_went_away_names_the_service(stack, dev, capsys):
    def producer(settings, *, rate, should_stop):
        stack.services["kafka"].running = False
        raise ConnectionRefusedError("broker gone")

    assert dev(producer) == 1
    assert "kafka no longer running" in capsys.readouterr().err


def test_ctrl_c_or_sigterm_ends_dev_with_0(stack, dev):
    def producer(settings, *, rate, should_stop):
        raise KeyboardInterrupt

    assert dev(producer) == 0
    assert not any(s.running for s in stack.services.values())
