"""The docs cannot drift: the generated references match the code, every relative link in the
README and docs/ reaches a file, benchmark figures are written by the scripts into one results
file and nowhere else."""

from __future__ import annotations

import datetime as dt
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
RESULTS_PAGE = DOCS / "benchmark-results.md"


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def test_generated_references_are_current(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    code = _generator().main(["--check"])
    assert code == 0, ("docs/cli.md or docs/configuration.md is out of date: run "
                       f"`python docs/generate.py` (or `make docs`)\n{capsys.readouterr().err}")


def test_cli_reference_lists_every_command():
    from conflux.cli import build_parser

    text = (DOCS / "cli.md").read_text()
    parser = build_parser()
    top = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in top.choices:
        assert f"`conflux {name}`" in text


def test_configuration_reference_has_every_setting_and_resource_field():
    import conflux.core.settings as settings
    from conflux import KafkaResource, LakeResource, PostgresResource, SchemaRegistryResource

    text = (DOCS / "configuration.md").read_text()
    for variable in re.findall(r"^\| ``([A-Z_]+)``", settings.__doc__, re.M):
        assert f"`{variable}`" in text
    for cls in (KafkaResource, LakeResource, PostgresResource, SchemaRegistryResource):
        assert f"`{cls.__name__}`" in text
        for field in cls.model_fields:
            assert f"| `{field}` |" in text


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _links(text: str):
    text = re.sub(r"```.*?```", "", text, flags=re.S)   # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)                # nor does inline code
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # an absolute URL (https:, mailto:) or an anchor on the same page
        yield target.split("#", 1)[0]


def test_every_relative_link_reaches_a_file():
    broken = []
    for page in _pages():
        for target in _links(page.read_text()):
            path = (page.parent / target).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_link_check_sees_links():
    text = "see [a](docs/a.md), [b](https://x.org), [c](#here), `[d](no.md)`, [e](b.md#part)"
    assert list(_links(text)) == ["docs/a.md", "b.md"]


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().encode()) < 12_000


def test_benchmark_figures_only_in_the_results_file():
    """A latency percentile with a number beside it is a measured figure: it belongs in the
    file the benchmark scripts write, not in prose that nobody re-measures."""
    figure = re.compile(r"\bp(?:50|95|99)\b[^\n|]{0,12}?\d+(?:\.\d+)?\s*(?:s|ms)\b")
    found = [f"{page.relative_to(REPO)}: {m.group(0)}" for page in _pages()
             if page != RESULTS_PAGE for m in figure.finditer(page.read_text())]
    assert not found, "benchmark figures outside docs/benchmark-results.md:\n" + "\n".join(found)


# --- bench.common.record_results -----------------------------------------------------------------

def test_record_results_writes_one_dated_section_per_benchmark(tmp_path):
    from bench.common import Figures, record_results

    path = tmp_path / "results.md"
    out = Figures()
    out("\nlatency p95 1.00 s")
    out("throughput 10/s")
    when = dt.datetime(2026, 12, 6, 12, 30, tzinfo=dt.timezone.utc)
    record_results("event_path", out.lines, command="python -m bench.event_path --quick",
                   path=path, when=when)
    record_results("batch_path", ["one run: 40.0s"], command="python -m bench.batch_path",
                   path=path, when=when)
    text = path.read_text()
    assert text.startswith("# Benchmark results")
    assert text.index("## batch_path") < text.index("## event_path")  # name order
    event = text[text.index("## event_path"):]
    assert "- date: 2026-12-06 12:30 UTC" in event
    assert re.search(r"- machine: \d+ cores", event)
    assert re.search(r"- commit: ([0-9a-f]{7,}|unknown)", event)
    assert "- command: `python -m bench.event_path --quick`" in event
    assert "```\nlatency p95 1.00 s\nthroughput 10/s\n```" in event

    # a second run replaces its own section and keeps the others
    later = when + dt.timedelta(days=1)
    record_results("event_path", ["latency p95 2.00 s"], command="python -m bench.event_path",
                   path=path, when=later)
    text = path.read_text()
    assert text.count("## event_path") == 1 and text.count("## batch_path") == 1
    assert "latency p95 2.00 s" in text and "latency p95 1.00 s" not in text
    assert "- date: 2026-12-07 12:30 UTC" in text
    assert "one run: 40.0s" in text


def test_record_results_default_command_names_the_benchmark(tmp_path, monkeypatch):
    import sys

    from bench.common import record_results

    monkeypatch.setattr(sys, "argv", ["bench/sizing.py", "--events", "1000", "--idle", "10"])
    path = record_results("sizing", ["total 1.0"], path=tmp_path / "r.md")
    assert "- command: `python -m bench.sizing --events 1000 --idle 10`" in path.read_text()


def test_figures_prints_and_keeps_lines(capsys):
    from bench.common import Figures

    out = Figures()
    out("\nheader")
    out("row 1")
    assert capsys.readouterr().out == "\nheader\nrow 1\n"
    assert out.lines == ["", "header", "row 1"]


def test_results_page_is_the_scripts_own():
    """The committed results page starts with the header the scripts write."""
    from bench.common import RESULTS, RESULTS_HEADER

    assert RESULTS == RESULTS_PAGE
    assert RESULTS_PAGE.read_text().startswith(RESULTS_HEADER)


@pytest.mark.parametrize("script", ["event_path", "batch_path", "sizing", "lake_s3"])
def test_benchmarks_record_what_they_print(script):
    source = (REPO / "bench" / f"{script}.py").read_text()
    assert f'record_results("{script}", out.lines)' in source
