"""The rule scripts (scripts/*.py) stay thin: settings -> one library call -> outputs.

Logic belongs in the library (scripts/tomoclust), where it is unit-tested; a rule script only
unpacks its rule's inputs and params, calls the library and writes the outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.py"))
MAX_LINES = 40


def test_there_are_rule_scripts():
    assert len(SCRIPTS) > 30


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_rule_script_is_at_most_40_lines(script):
    n = len(script.read_text().splitlines())
    assert n <= MAX_LINES, (f"{script.name} has {n} lines (at most {MAX_LINES}): move its logic "
                            "into the library (the stage module, or tomoclust/rule.py for glue)")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_rule_script_runs_through_run_rule(script):
    # logging to the rule's log, one-line errors: every script ends in run_rule(snakemake, main)
    last = script.read_text().rstrip().splitlines()[-1]
    assert last.endswith("run_rule(snakemake, main)"), f"{script.name} ends in {last!r}"
