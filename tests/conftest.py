"""Shared fixtures: a private AGENTGUARD_HOME per test, the sim provider on loopback, guards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentguard.config import GuardConfig
from agentguard.guard import Guard
from agentguard.sim import SimServer


@pytest.fixture(autouse=True)
def agentguard_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "agentguard-home"
    monkeypatch.setenv("AGENTGUARD_HOME", str(home))
    monkeypatch.delenv("AGENTGUARD_CONFIG", raising=False)
    for name in list(__import__("os").environ):
        if name.startswith("AGENTGUARD_") and "__" in name:
            monkeypatch.delenv(name)
    return home


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer() as server:
        yield server


FAST_RETRIES = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}


@pytest.fixture
def make_guard(tmp_path: Path) -> Callable[..., Guard]:
    """Build a Guard whose store is a fresh SQLite file; keyword sections go into the config."""

    def build(**sections: Any) -> Guard:
        data: dict[str, Any] = {"store": {"url": f"sqlite:///{tmp_path / 'store.db'}"}}
        limits = {**FAST_RETRIES, **sections.pop("limits", {})}
        data["limits"] = limits
        data.update(sections)
        return Guard(GuardConfig.from_mapping(data))

    return build
