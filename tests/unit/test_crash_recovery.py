"""Pure parts of crash recovery: run-worker health, leftovers of a killed service, the chaos
harness's fault plan, its phase markers and its publisher's counts (its oracle:
test_chaos_oracle.py)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conflux.core.settings import Settings
from conflux.stack.procs import group_members, pid_alive
from conflux.observe.run_workers import fail_dead_workers, process_started_at, worker_alive
from conflux.stack.service import Service
from reliability.chaos import TARGETS, Fault, Injector, Phases, Publisher, Result, plan_faults
from conflux.event import offsets
def test_a_live_worker_is_alive_and_a_dead_one_is_not():
    assert worker_alive(os.getpid(), reported_at=time.time())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_started_at(child.pid) is None
    assert not worker_alive(child.pid, reported_at=time.time())


def test_a_reused_pid_is_not_the_worker():
    # this process started long after a worker that reported "its" pid at the epoch's dawn
    assert not worker_alive(os.getpid(), reported_at=1_000_000.0)


def test_no_pid_yet_is_left_to_the_start_timeout():
    assert worker_alive(None, reported_at=time.time())


def test_a_started_run_whose_worker_is_gone_is_marked_failed():
    import dagster as dg
    # the event Dagster's code server records when it starts a run worker (test-only import:
    # conflux itself only reads the event)
    from dagster._core.events import EngineEventData

    @dg.op
    def noop():
        pass

    @dg.job
    def job():
        noop()

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with dg.DagsterInstance.ephemeral() as instance:
        runs = {name: instance.create_run_for_job(job_def=job, status=dg.DagsterRunStatus.STARTED)
                for name in ("dead", "alive", "no_pid")}
        for name, pid in (("dead", child.pid), ("alive", os.getpid())):
            instance.report_engine_event(
                f"Started process for run (pid: {pid}).", runs[name],
                EngineEventData(metadata={"pid": dg.MetadataValue.text(str(pid))}))
        checked, failed = fail_dead_workers(instance)
        assert checked == 3 and failed == [runs["dead"].run_id]
        status = {n: instance.get_run_by_id(r.run_id).status.value for n, r in runs.items()}
        assert status == {"dead": "FAILURE", "alive": "STARTED", "no_pid": "STARTED"}


class _Sleeper(Service):
    """A leader that starts a child in its own process group, like the daemon its code servers."""

    name = "sleeper"

    def __init__(self, settings, claim: bool):
        super().__init__(settings)
        self.claim = claim

    def marker(self) -> str:
        return "sleeper"

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import subprocess, sys, time; "
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                "time.sleep(60)"]

    def owns_leftover(self, pid: int) -> bool:
        return self.claim


@pytest.mark.parametrize("claim", [True, False])
def test_leftovers_of_a_killed_leader_are_ended_only_when_claimed(tmp_path, claim):
    service = _Sleeper(Settings.from_env({"CONFLUX_HOME": str(tmp_path)}), claim)
    leader = subprocess.Popen(service.command(), start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(group_members(leader.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        children = [p for p in group_members(leader.pid) if p != leader.pid]
        assert len(children) == 1
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        ended = service.clear_leftovers(leader.pid, timeout=1.0)
        if claim:
            assert ended == children and not pid_alive(children[0])
        else:
            assert ended == [] and pid_alive(children[0])
    finally:
        for pid in group_members(leader.pid):
            os.kill(pid, signal.SIGKILL)


def test_fault_plan_covers_every_target_and_replays_by_seed():
    plan = plan_faults(random.Random(5), 20, [("postgres", 30.0), ("kafka", 30.0)])
    kills = [f.target for f in plan if f.kind == "kill"]
    assert len(kills) == 20 and set(kills) == set(TARGETS)
    assert [f.kind for f in plan[-2:]] == ["outage", "outage"]
    again = plan_faults(random.Random(5), 20, [("postgres", 30.0), ("kafka", 30.0)])
    assert [(f.target, f.delay_s) for f in plan] == [(f.target, f.delay_s) for f in again]
    assert [f.target for f in plan_faults(random.Random(6), 20, [])] != kills


def test_a_kill_with_nothing_to_kill_is_reported_not_counted(tmp_path):
    """When the sensor drains a burst inline, tick by tick, no ingest run starts: the harness
    says so and does not count the kill point (it used to stop with a traceback)."""
    import dagster as dg

    with dg.DagsterInstance.ephemeral() as instance:
        injector = Injector(stack=None, instance=instance, rng=random.Random(1),
                            phases=Phases(tmp_path, "nowhere"))
        injector.run_wait_s = 0.5
        fault = Fault("kill", "run-worker", 0.0)
        injector.apply(fault)
    assert fault.missed and fault.detail.startswith("nothing killed: no ingest run started")
    done = Fault("kill", "kafka", 0.0, detail="killed pid 1; restarted in 3.0s", phase="service")
    result = Result(1, 10, 10, 0, [fault, done])
    assert ("kill points survived: 1 ({'kafka': 1}); 1 planned kill(s) found nothing to kill"
            in result.lines())
    assert not result.complete  # a kill point missed, and none in a write phase


def test_a_run_is_complete_only_when_a_third_of_the_kills_hit_a_write_phase():
    def kills(*phases):
        return [Fault("kill", "code-server", 0.0, phase=p) for p in phases]
    assert Result(1, 1, 1, 0, kills("write", "read", "service")).complete
    assert not Result(1, 1, 1, 0, kills("write", "read", "service", "written")).complete
    assert "  write      1  {'code-server': 1}" in Result(1, 1, 1, 0, kills("write")).lines()


def test_a_writer_killed_in_its_write_phase_leaves_that_phase_behind(tmp_path):
    """The marker path end to end: a process marks its phases, the harness waits for "write",
    kills it and reads the phase it died in from the marker it left."""
    env = {**os.environ, "CONFLUX_PHASE_DIR": str(tmp_path), "DAGSTER_HOME": "/chaos-test"}
    code = ("import time; from conflux.event.phases import mark; "
            "mark('read', 'orders', 'run-1'); time.sleep(0.3); "
            "mark('write', 'orders', 'run-1'); time.sleep(60)")
    writer = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        phases = Phases(tmp_path, "/chaos-test")
        assert phases.wait(sensor=True, timeout=0.2) is None  # not an inline micro-batch
        found = phases.wait(sensor=False, timeout=30)
        assert found == (writer.pid, ["write", "orders", "run-1"])
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert phases.left_by(writer.pid) == "write"
        assert not list(tmp_path.glob(f"{writer.pid}-*"))
    finally:
        writer.kill()
    other = Phases(tmp_path, "/another-stack")  # another stack's processes are not seen
    stranger = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        assert other.wait(sensor=False, timeout=2) is None
    finally:
        stranger.kill()


class _Future:
    def __init__(self, offset: int | None):
        from types import SimpleNamespace

        self.is_done = True
        self.value = SimpleNamespace(partition=0, offset=offset)

    def succeeded(self) -> bool:
        return self.value.offset is not None


class _FlakyKafka:
    """Acknowledges sends (all but one), but creating a producer fails every other time — the
    case in which the harness once counted an acknowledged batch twice."""

    def __init__(self):
        self.calls = 0
        self.offset = 0

    def producer(self, **_):
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError("broker unavailable")
        kafka = self

        class _Producer:
            def send(self, *_, **__):
                kafka.offset += 1
                return _Future(kafka.offset if kafka.offset != 700 else None)  # one lost ack

            def flush(self, timeout):
                pass

            def close(self, timeout):
                pass
        return _Producer()


def test_the_publisher_counts_distinct_acknowledged_records_not_attempts(monkeypatch):
    from reliability import chaos
    from reliability.chaos import Sent

    monkeypatch.setattr(chaos.time, "sleep", lambda s: None)
    publisher = Publisher(_FlakyKafka(), refs={})
    publisher.records = [Sent("t", b"k%d" % i, b"{}", [], i) for i in range(1600)]
    publisher.publish(list(range(1600)), rate=0, deadline=time.monotonic() + 60)
    assert publisher.distinct == 1600 == len({i for i, _, _ in publisher.acks})
    assert len(publisher.acks) == 1600 and publisher.resent == publisher.attempts - 1600 > 0


def test_a_silent_spell_between_ticks_is_noted():
    assert offsets.tick_gap(None, 100.0) == ""  # the first tick ever
    assert offsets.tick_gap(100.0, 105.0) == ""
    assert offsets.tick_gap(105.0, 140.0) == "resumed after 35s without a tick; "
    assert offsets.tick_gap(100.0, 100.0 + offsets.GAP_NOTE_S) != ""


def _run(run_id: str, status: str, age_s: float = 500, **tags):
    import datetime as dt
    from types import SimpleNamespace

    run = SimpleNamespace(run_id=run_id, status=SimpleNamespace(value=status), tags=tags)
    updated = dt.datetime.fromtimestamp(1_800_000_000 - age_s, dt.timezone.utc)
    return SimpleNamespace(dagster_run=run, update_timestamp=updated)


def test_the_harness_waits_for_failed_runs_until_a_retry_or_requeue_succeeds_them():
    from reliability.chaos import awaiting_retry

    runs = [_run("a", "FAILURE", **{"dagster/will_retry": "false"}),
            _run("b", "FAILURE"), _run("b2", "SUCCESS", **{"dagster/parent_run_id": "b"}),
            _run("c", "FAILURE"), _run("c2", "STARTED", **{"conflux/requeued_from": "c"}),
            _run("d", "FAILURE", **{"conflux/requeue_depth": "5"})]  # given up: shows as lost
    assert [r.dagster_run.run_id for r in awaiting_retry(runs, now=1_800_000_000)] == ["a"]
