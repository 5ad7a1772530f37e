"""Sessions on their own: ids, budget keys and lines, parents, binding in contexts and tasks,
and restoring from a parked record (real guards over real SQLite files, no HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal

import pytest

from agentguard import ConfigError, current_session
from agentguard.guard import Guard
from agentguard.ledger import BudgetLine
from agentguard.session import SessionState


@pytest.mark.parametrize("bad", ["", "a/b", "..", "x" * 201, "naïve", "has space", "trailing\n"])
def test_a_session_id_that_could_name_a_path_is_refused(
    make_guard: Callable[..., Guard], bad: str
) -> None:
    with pytest.raises(ValueError, match=r"session id .* is not valid"):
        make_guard().session(bad)


def test_a_misspelt_budget_key_is_refused_with_the_close_match(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard(budgets=[{"key": "research", "limit_usd": 5, "window": "5h"}])
    with pytest.raises(ConfigError) as caught:
        guard.session(budget_key="reserch")
    assert "did you mean 'research'" in str(caught.value)
    assert guard.session(budget_key="default").budget_key == "default"  # implicit, allowed


def test_budget_lines_are_the_key_window_and_the_root_sessions_own_budget(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard(
        budgets=[{"key": "research", "limit_usd": 5, "window": "5h"}],
        limits={"max_session_usd": 2},
    )
    root = guard.session("root", budget_key="research")
    child = guard.session("child", parent=root)
    key_line, own_line = child.budget_lines()
    assert key_line.key == "research" and key_line.limit_usd == Decimal(5)
    assert key_line.window is not None and key_line.window.total_seconds() == 5 * 3600
    assert own_line == BudgetLine("session:root", Decimal(2))
    assert child.budget_key == "research" and child.root_id == "root"
    # Nothing spent or held yet: the session's own budget is the smaller one.
    assert child.remaining_usd == Decimal(2)
    # Every root session gets its own budget; without it, "default" limits nothing.
    assert guard.session("other").remaining_usd == Decimal(2)
    assert make_guard().session("free").remaining_usd is None


def test_spend_adds_up_to_every_ancestor(make_guard: Callable[..., Guard]) -> None:
    guard = make_guard()
    root = guard.session("root")
    child = guard.session("child", parent=root)
    grandchild = guard.session("grandchild", parent=child)
    grandchild.add_spend(Decimal("0.25"), 100, 20)
    child.add_spend(Decimal("0.5"), 10, 2)
    assert grandchild.spent_usd == Decimal("0.25")
    assert child.spent_usd == Decimal("0.75")
    assert root.spent_usd == Decimal("0.75") and root.state.input_tokens == 110


def test_binding_nests_and_each_guard_sees_only_its_own_sessions(
    make_guard: Callable[..., Guard],
) -> None:
    first, second = make_guard(), make_guard()
    outer, inner = first.session("outer"), first.session("inner")
    foreign = second.session("foreign")
    assert first.owns(outer) and not first.owns(foreign) and second.owns(foreign)
    with outer:
        assert current_session() is outer
        with foreign:
            assert current_session() is foreign
            # The other guard's session does not replace this guard's own binding.
            assert first.current_session_var.get() is outer
            with inner:
                assert first.current_session_var.get() is inner
            assert first.current_session_var.get() is outer
        assert current_session() is outer
    assert current_session() is None and first.current_session_var.get() is None


def test_concurrent_tasks_each_enter_one_session_and_leave_it(
    make_guard: Callable[..., Guard],
) -> None:
    guard = make_guard()
    shared = guard.session("shared")

    async def task(delay: float) -> bool:
        async with shared:
            await asyncio.sleep(delay)
            inside = current_session() is shared
        return inside and current_session() is None

    async def main() -> list[bool]:
        return await asyncio.gather(*(task(0.01 * (n % 3)) for n in range(6)))

    assert asyncio.run(main()) == [True] * 6
    assert current_session() is None


def test_state_survives_a_round_trip_through_json(make_guard: Callable[..., Guard]) -> None:
    session = make_guard().session("round-trip")
    session.state.iterations = 4
    session.state.tool_signatures["read:abc"] = 2
    session.add_spend(Decimal("0.125"), 300, 40)
    again = SessionState.model_validate_json(session.state.model_dump_json())
    assert again == session.state
    with pytest.raises(ValueError):
        SessionState.model_validate({"iterations": 1, "unknown_counter": 3})
