"""`conflux contracts register | check | diff` through the real CLI and the real registry."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def conflux(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "conflux"), *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          capture_output=True, text=True, timeout=120)


def test_register_then_check_passes_and_a_breaking_edit_fails_check(stack):
    reg = conflux("contracts", "register")
    assert reg.returncode == 0, reg.stderr
    assert "orders@" in reg.stdout and "lineitem@" in reg.stdout
    again = conflux("contracts", "register")
    assert "registered" not in again.stdout.replace("unchanged", "")  # nothing new
    ok = conflux("contracts", "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "orders" in ok.stdout and "OK" in ok.stdout

    broken = conflux("contracts", "check", "--catalog", "tests.fixtures.broken_catalog:DATASETS")
    assert broken.returncode == 1
    out = broken.stdout
    assert "subject 'orders'" in out and "BACKWARD" in out
    assert "o_totalprice" in out and "o_total" in out  # both the removed and the added field
    assert "1 contract(s) break" in broken.stderr
    refused = conflux("contracts", "register", "--catalog", "tests.fixtures.broken_catalog:DATASETS")
    assert refused.returncode == 1 and "o_totalprice" in refused.stderr


def test_diff_exit_codes(tmp_path):
    old = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    new_ok = {**old, "properties": {**old["properties"], "b": {"type": "integer"}}}
    new_bad = {**old, "properties": {"a": {"type": "integer"}}}
    files = {}
    for name, doc in {"old": old, "ok": new_ok, "bad": new_bad}.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(doc))
    (tmp_path / "broken.json").write_text("{not json")

    assert conflux("contracts", "diff", files["old"], files["ok"], "--mode", "BACKWARD").returncode == 0
    bad = conflux("contracts", "diff", files["old"], files["bad"])
    assert bad.returncode == 1 and "#/properties/a" in bad.stdout
    assert conflux("contracts", "diff", files["old"], files["ok"], "--mode", "FORWARD").returncode == 1
    invalid = conflux("contracts", "diff", files["old"], tmp_path / "broken.json")
    assert invalid.returncode == 2 and "broken.json" in invalid.stderr
    assert conflux("contracts", "diff", files["old"], files["ok"], "--mode", "SIDEWAYS").returncode == 2
    assert conflux("contracts", "diff", files["old"]).returncode == 2
