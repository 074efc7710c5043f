"""scripts/suite_report.py: phase times and CPU use from marks, slowest files from JUnit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "suite_report.py"
spec = importlib.util.spec_from_file_location("suite_report", SCRIPT)
suite_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite_report)


def test_phases_give_wall_time_and_the_busy_share_of_cpu_between_marks(tmp_path):
    marks = tmp_path / "marks"
    marks.write_text("unit 100.0 1000 4000\nboth 160.0 1900 5000\nend 400.0 2400 7000\n")
    assert suite_report.phases(marks) == ["  unit              60 s   CPU busy  90 %",
                                          "  both             240 s   CPU busy  25 %"]


def test_mark_appends_a_line_of_now(tmp_path):
    marks = tmp_path / "marks"
    suite_report.mark(marks, "unit")
    suite_report.mark(marks, "end")
    names = [line.split()[0] for line in marks.read_text().splitlines()]
    assert names == ["unit", "end"]
    assert len(suite_report.phases(marks)) == 1


def test_slowest_files_sum_their_cases_across_reports(tmp_path):
    a, b = tmp_path / "a.xml", tmp_path / "b.xml"
    a.write_text('<testsuites><testsuite><testcase classname="tests.unit.test_x" name="t1" '
                 'time="2.5"/><testcase classname="tests.unit.test_x" name="t2" time="1.5"/>'
                 '</testsuite></testsuites>')
    b.write_text('<testsuites><testsuite><testcase classname="tests.integration.test_y" '
                 'name="t" time="30"/></testsuite></testsuites>')
    assert suite_report.slowest_files([a, b, tmp_path / "missing.xml"]) == [
        "       30 s  tests/integration/test_y.py", "        4 s  tests/unit/test_x.py"]
