"""Shared fixtures: a private AGENTGUARD_HOME per test, the sim provider on loopback, guards."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

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


@pytest.fixture(autouse=True)
def fresh_token_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own process-wide token counter: calibration learned from one test's
    provider must not change another test's counts."""
    import agentguard.tokens

    monkeypatch.setattr(agentguard.tokens, "_default", None)


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
        # The key the shared helpers run sessions under: configured, with no limit, so its
        # spend is recorded (an unconfigured key is a ConfigError).
        data["budgets"] = [{"key": "team"}]
        data.update(sections)
        return Guard(GuardConfig.from_mapping(data))

    return build


POSTGRES_URL = os.environ.get("AGENTGUARD_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail(
                "CI must run the PostgreSQL store tests: AGENTGUARD_TEST_POSTGRES_URL is not set"
            )
        pytest.skip("no PostgreSQL server (set AGENTGUARD_TEST_POSTGRES_URL to run these)")
    name = f"agtest_{secrets.token_hex(6)}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from agentguard.store import _stores

        for key in [k for k in _stores if name in k]:
            _stores.pop(key).dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
