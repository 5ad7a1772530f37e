"""`agentguard demo`, the main job, runs end to end offline: routed steps, a park on the budget
window, the resume, the whole answer, and a summary against the same agent unguarded; every
line fits 80 columns and each model call is one line."""

from __future__ import annotations

import io
import re
from decimal import Decimal

import pytest
from rich.console import Console

from agentguard.demo import run_demo
from agentguard.sim.scripts import coding_agent_script

STEP_LINE = re.compile(r"^\s*(\d+) (gpt-4o-mini|gpt-4o|haiku-4-5|sonnet-4-6)\s")


def _run(steps: int) -> tuple[int, str]:
    buffer = io.StringIO()
    # A console far wider than 80 columns: the demo must fit 80 by itself, not by rich's wrap.
    code = run_demo(Console(file=buffer, width=200), steps=steps, budget_usd=0.02, window_s=3)
    return code, buffer.getvalue()


def _summary_row(output: str, name: str) -> tuple[str, str]:
    match = re.search(rf"^  {name}\s+(\S+)\s+(\S+)", output, re.MULTILINE)
    assert match is not None, f"no summary row {name!r} in:\n{output}"
    return match.group(1), match.group(2)


def test_the_demo_parks_resumes_answers_and_compares_with_the_unguarded_agent() -> None:
    code, output = _run(steps=12)
    assert code == 0, output
    lines = output.splitlines()

    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, "\n".join(too_wide)

    steps = [int(match.group(1)) for line in lines if (match := STEP_LINE.match(line))]
    assert steps == list(range(1, 13)), output  # each call printed once, in order
    models = {match.group(2) for line in lines if (match := STEP_LINE.match(line))}
    assert models == {"gpt-4o", "gpt-4o-mini"}, output  # routed per step

    assert (
        "Tiers: small = gpt-4o-mini, large = gpt-4o; easy steps go small, the rest large." in lines
    )
    park = output.index("parked: budget 'demo'")
    resume = output.index("resumed: demo-task")
    assert park < resume < output.index("Answer:"), output
    assert "Parked record demo-task: parked -> resuming -> resumed." in output

    # The whole answer, never cut: its last sentence ends the paragraph.
    final = coding_agent_script(12).final.content
    assert final is not None
    answer = output[output.index("Answer:") :].split("\n\n")[0]
    assert " ".join(answer.split()[1:]) == " ".join(final.split())

    guarded_calls, unguarded_calls = _summary_row(output, "model calls")
    assert guarded_calls == unguarded_calls == "12"
    guarded_cost, unguarded_cost = (
        Decimal(cell.lstrip("$")) for cell in _summary_row(output, "cost")
    )
    assert Decimal(0) < guarded_cost < unguarded_cost, output
    assert _summary_row(output, "parks / resumes")[0] == "1"


@pytest.mark.parametrize("api", ["responses", "anthropic"])
def test_the_demo_runs_on_the_other_apis(api: str) -> None:
    buffer = io.StringIO()
    code = run_demo(Console(file=buffer, width=200), steps=12, window_s=3, api=api)
    output = buffer.getvalue()
    assert code == 0, output
    lines = output.splitlines()
    steps = [int(match.group(1)) for line in lines if (match := STEP_LINE.match(line))]
    # Each call printed once, in order. The scripted agent picks its next step from the
    # assistant turns it is sent, so a trim that drops old turns can make it repeat one: the
    # guarded run may take more calls than the script's 12, never fewer.
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 12, output
    assert any(line.startswith("parked: budget 'demo'") for line in lines), output
    assert any(line.startswith("resumed: demo-task") for line in lines), output
    assert "Answer:" in lines
    cost = next(line for line in lines if line.strip().startswith("cost"))
    guarded, unguarded = (Decimal(value.lstrip("$")) for value in cost.split()[1:3])
    assert 0 < guarded < unguarded, cost


def test_the_demo_refuses_an_unknown_api() -> None:
    with pytest.raises(ValueError, match="expected one of chat, responses, anthropic"):
        run_demo(Console(file=io.StringIO()), api="grpc")
