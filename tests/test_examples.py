"""The examples run offline as a new user runs them; each is judged by what it did."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from agentguard.sim.scripts import coding_agent_script

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_agent_loop_carries_on_after_the_daemon_resumes_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = _load("resume_agent_loop")
    answer = example.main()
    output = capsys.readouterr().out

    assert answer == coding_agent_script(8).final.content
    steps = [int(step) for step in re.findall(r"^  step (\d+):", output, re.MULTILINE)]
    # Every step once, in order: the resumed loop carried on, it did not start again.
    assert steps == list(range(1, 9)), output
    parked = output.index("parked: budget_window (HTTP 429)")
    resumed = output.index("resumed by the daemon")
    assert parked < resumed, output
    before_park = re.findall(r"^  step \d+:", output[:parked], re.MULTILINE)
    assert 0 < len(before_park) < 8, output  # it parked mid-task, and finished after
    record = example.guard.parked.get(example.SESSION_ID)
    assert record.state == "resumed"
    assert [t.state for t in record.history][-2:] == ["resuming", "resumed"]
