"""Pid files, ports, health waits and stopping: real processes and sockets, no services."""

import os
import signal
import subprocess
import socket
import sys
import time
from pathlib import Path

import pytest

from conflux.core.errors import StackError
from conflux.core.settings import Settings
from conflux.stack.procs import PidFile, pid_alive, port_open, spawn, stop_pid, wait_for
from conflux.stack.service import Service

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)", "conflux-test-sleeper"]


def test_pid_file_recognises_our_live_process_and_forgets_dead_ones(tmp_path):
    proc = spawn(SLEEPER, log=tmp_path / "s.log")
    pf = PidFile(tmp_path / "s.pid", "conflux-test-sleeper")
    pf.write(proc.pid)
    assert pf.live_pid() == proc.pid
    assert stop_pid(proc.pid, timeout=5) == "stopped"
    assert pf.live_pid() is None
    assert not pf.path.exists(), "a stale pid file is removed"


def test_a_service_stops_on_sigterm_even_when_its_launcher_ignores_sigterm(tmp_path):
    """Dagster maps SIGTERM to SIGINT's handler, SIG_IGN in a process started in the
    background (``make test``'s second pytest, ``nohup conflux dev &``); an ignored signal stays
    ignored across exec, so the services spawned then ignored ``stop``'s SIGTERM."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        proc = spawn(SLEEPER, log=tmp_path / "s.log")
    finally:
        signal.signal(signal.SIGTERM, previous)
    time.sleep(0.3)  # running the sleep, past the interpreter's start
    assert stop_pid(proc.pid, timeout=5) == "stopped"


def test_pid_file_does_not_claim_a_reused_pid(tmp_path):
    """After a crash the pid may belong to someone else: the marker must not match it."""
    proc = spawn(SLEEPER, log=tmp_path / "s.log")
    try:
        pf = PidFile(tmp_path / "x.pid", "conflux-other-service")
        pf.write(proc.pid)
        assert pf.live_pid() is None
    finally:
        stop_pid(proc.pid, timeout=5)


def test_garbage_pid_file_is_treated_as_stale(tmp_path):
    path = tmp_path / "g.pid"
    path.write_text("not-a-pid\n")
    assert PidFile(path, "m").live_pid() is None
    assert not path.exists()


def test_stop_escalates_to_sigkill_for_a_process_ignoring_sigterm(tmp_path):
    stubborn = [sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]
    proc = spawn(stubborn, log=tmp_path / "s.log")
    time.sleep(0.5)  # let it install the handler
    assert stop_pid(proc.pid, timeout=1) == "killed"
    assert not pid_alive(proc.pid)


def test_stop_waits_for_the_rest_of_the_group_after_the_leader(tmp_path):
    """A daemon's code server finishing its work after SIGTERM: stop returns once it is gone."""
    child_pid = tmp_path / "child.pid"
    (tmp_path / "child.py").write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.5), sys.exit(0)))\n"
        "time.sleep(60)\n")
    (tmp_path / "leader.py").write_text(
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, {str(tmp_path / 'child.py')!r}])\n"
        f"open({str(child_pid)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n")
    proc = spawn([sys.executable, str(tmp_path / "leader.py")], log=tmp_path / "s.log")
    deadline = time.monotonic() + 10
    while not (child_pid.exists() and child_pid.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the child's handler is installed
    child = int(child_pid.read_text())
    assert stop_pid(proc.pid, timeout=10) == "stopped"
    assert not pid_alive(proc.pid) and not pid_alive(child)


def test_port_open_sees_a_listener(unused_port):
    assert not port_open("127.0.0.1", unused_port)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", unused_port))
        srv.listen()
        assert port_open("127.0.0.1", unused_port)


def test_wait_for_names_the_service_and_its_log_on_timeout(tmp_path):
    log = tmp_path / "svc.log"
    log.write_text("line one\nthe real reason\n")
    with pytest.raises(StackError, match=r"(?s)svc did not become healthy.*svc\.log.*the real reason"):
        wait_for(lambda: False, service="svc", log=log, timeout=0.3)


def test_wait_for_reports_an_early_exit(tmp_path):
    log = tmp_path / "c.log"
    proc = spawn([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], log=log)
    with pytest.raises(StackError, match=r"(?s)crashy exited with code 3.*boom"):
        wait_for(lambda: False, service="crashy", log=log, timeout=10, proc=proc)


class _PortService(Service):
    name = "fake"

    def __init__(self, settings, port):
        super().__init__(settings)
        self._port = port

    @property
    def port(self):
        return self._port

    def marker(self):
        return "conflux-fake-service"

    def command(self):
        return [sys.executable, "-c", "import time; time.sleep(60)", "conflux-fake-service"]


def test_up_refuses_a_port_held_by_a_process_we_did_not_start(tmp_path, unused_port):
    svc = _PortService(Settings.from_env({"CONFLUX_HOME": str(tmp_path)}), unused_port)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", unused_port))
        srv.listen()
        with pytest.raises(StackError, match=f"port 127.0.0.1:{unused_port} is in use"):
            svc.up()


def test_up_down_twice_reports_each_state(tmp_path, unused_port):
    settings = Settings.from_env({"CONFLUX_HOME": str(tmp_path)})
    listener = [sys.executable, "-c",
                f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1',{unused_port})); "
                "s.listen(); time.sleep(60)", "conflux-fake-service"]
    svc = _PortService(settings, unused_port)
    svc.command = lambda: listener
    assert "started" in svc.up()
    assert "already running" in svc.up()
    assert "stopped" in svc.down()
    assert svc.down() == "fake: not running"


@pytest.fixture
def unused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_down_ends_orphans_carrying_the_stacks_dagster_home_and_nothing_else(tmp_path):
    """A code server whose daemon was killed: re-parented to pid 1, deaf to SIGTERM."""
    from conflux.core.settings import Settings
    from conflux.stack import Stack

    settings = Settings.from_env({"CONFLUX_HOME": str(tmp_path / "home"),
                                  "CONFLUX_CACHE": str(tmp_path / "cache")})
    deaf = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "time.sleep(60)")

    def orphan(dagster_home: Path) -> int:
        """A process whose parent has exited (double fork): returns its pid."""
        out = tmp_path / f"pid-{dagster_home.name}"
        launcher = (f"import os, subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {deaf!r}], "
                    f"env=dict(os.environ, DAGSTER_HOME={str(dagster_home)!r}), start_new_session=True); "
                    f"open({str(out)!r}, 'w').write(str(p.pid))")
        subprocess.run([sys.executable, "-c", launcher], check=True, timeout=30)
        return int(out.read_text())

    ours, other = orphan(settings.dagster_home), orphan(tmp_path / "another_home")
    time.sleep(0.5)  # both installed their SIGTERM handler
    try:
        ended = Stack(settings).end_strays()
        assert ended == [ours]
        assert not pid_alive(ours) and pid_alive(other)
    finally:
        for pid in (ours, other):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
