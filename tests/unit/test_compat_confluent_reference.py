"""conflux.contracts.compat must agree with Confluent Schema Registry's own JSON Schema test data.

The data lives outside the repository (read-only reference folder next to it). Each case gives
an original and an updated schema and Confluent's BACKWARD verdict: can the update read data
written with the original? Cases with reserved-field metadata are a Confluent-only extension
and are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conflux.contracts.compat import diff_schemas

REFERENCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
FILES = ("confluent-diff-schema-examples.json", "confluent-diff-combined-schema-examples.json")


def _load_cases() -> list:
    if not all((REFERENCE_DIR / name).is_file() for name in FILES):
        return []
    params = []
    for name in FILES:
        for index, case in enumerate(json.loads((REFERENCE_DIR / name).read_text(encoding="utf-8"))):
            if "original_metadata" in case or "update_metadata" in case:
                continue
            case_id = f"{name.removeprefix('confluent-diff-').removesuffix('-examples.json')}" \
                      f"[{index}] {case['description'].strip()}"
            params.append(pytest.param(case, id=case_id))
    return params


CASES = _load_cases()


def _missing_reference() -> None:
    reason = f"Confluent reference data not found in {REFERENCE_DIR} (expected {', '.join(FILES)})"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def test_reference_data_is_present():
    if not CASES:
        _missing_reference()
    assert len(CASES) == 131


@pytest.mark.parametrize("case", CASES or [pytest.param(None, id="reference-data-missing")])
def test_backward_verdict_matches_confluent(case):
    if case is None:
        _missing_reference()
    problems = diff_schemas(reader=case["update_schema"], writer=case["original_schema"])
    assert (problems == []) is case["compatible"], (
        f"Confluent says compatible={case['compatible']} (changes: {case['changes']}); "
        f"found: {[str(p) for p in problems]}"
    )
