"""Scenario scripts in tests/raft/scenarios/ (see tests/raft/scenario.py for the
format). Each must reproduce its expected output exactly."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from .scenario import check_script

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 5


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario(path: Path) -> None:
    expected, actual = check_script(path)
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                f"{path.name} (expected)",
                f"{path.name} (actual)",
            )
        )
        pytest.fail(f"scenario output changed (RAFTKV_SCENARIO_REWRITE=1 rewrites):\n{diff}")
