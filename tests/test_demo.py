"""`agentguard demo`, the main job, runs end to end offline: routed steps, a park on the budget
window, the resume, the answer."""

from __future__ import annotations

import io

from rich.console import Console

from agentguard.demo import run_demo


def test_the_demo_parks_resumes_and_answers() -> None:
    buffer = io.StringIO()
    code = run_demo(Console(file=buffer, width=160), steps=12, budget_usd=0.02)
    output = buffer.getvalue()
    assert code == 0, output
    assert "parked:" in output and "resuming demo-task" in output
    assert "gpt-4o-mini" in output and "gpt-4o " in output  # routed per step
    assert "Answer: I fixed the rounding bug" in output
    assert "state=resumed" in output
