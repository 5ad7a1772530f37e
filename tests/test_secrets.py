"""No secret at rest: credentials are removed from parked records at any depth, parking never
fails with an error quoting one, and every file agentguard creates is 0600 in a 0700
directory, whatever the store URL looks like."""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from agentguard import Guard, RetryLimitExceeded, SessionParked, configure_logging
from agentguard.config import GuardConfig
from agentguard.redact import scrub
from agentguard.sim import SimServer

OPENAI_KEY = "sk-proj-" + "A1b2C3d4" * 6
ANTHROPIC_KEY = "sk-ant-api03-" + "Zz9Yy8Xx" * 5
GOOGLE_KEY = "AIzaSy" + "Q" * 33
BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.payload.signature"
SECRETS = (OPENAI_KEY, ANTHROPIC_KEY, GOOGLE_KEY, "eyJhbGciOiJIUzI1NiJ9", "hunter2-pass")


def hostile_extra_body() -> dict[str, Any]:
    return {
        "api_key": OPENAI_KEY,
        "metadata": {
            "auth": {"token": ANTHROPIC_KEY},
            "nested": [{"x-api-key": GOOGLE_KEY, "note": f"use {OPENAI_KEY} here"}],
            "client_secret": "hunter2-pass",
            "headers": {"Authorization": BEARER},
            "user_password": "hunter2-pass",
            "refresh_token": "hunter2-pass",
        },
    }


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "login",
            "parameters": {
                "type": "object",
                "properties": {"password": {"type": "string"}, "token": {"type": "string"}},
                "required": ["password"],
            },
        },
    }
]


def assert_no_secret(data: bytes, where: str) -> None:
    for secret in SECRETS:
        assert secret.encode() not in data, f"{secret[:12]}... found in {where}"


@pytest.fixture
def umask() -> Iterator[None]:
    # A permissive umask: what agentguard creates must be private regardless.
    previous = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(previous)


def test_nested_credentials_never_reach_a_parked_record(
    make_guard: Callable[..., Guard], sim: SimServer, tmp_path: Path
) -> None:
    guard = make_guard(parking={"wait_inline_max_s": 0, "dir": str(tmp_path / "parked")})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key=OPENAI_KEY))
    sim.rate_limit_next(1, retry_after=3600)
    with guard.session("leaky"), pytest.raises(SessionParked):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"my key is {OPENAI_KEY}, keep it safe"}],
            max_tokens=12,
            tools=TOOLS,
            extra_body=hostile_extra_body(),
        )
    record = guard.parked.get("leaky")
    assert record is not None and record.state == "parked"
    request = record.request
    # What a replay needs is kept: the count fields, the tool's parameter names.
    assert request["max_tokens"] == 12 and request["model"] == "gpt-4o-mini"
    assert request["messages"][0]["content"] == "my key is [redacted], keep it safe"
    parameters = request["tools"][0]["function"]["parameters"]
    assert set(parameters["properties"]) == {"password", "token"}
    assert "api_key" not in request
    assert request["metadata"] == {"headers": {}, "nested": [{"note": "use [redacted] here"}]}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_bytes(), str(path))


def test_a_top_level_key_in_extra_body_parks_cleanly(
    make_guard: Callable[..., Guard], sim: SimServer, tmp_path: Path
) -> None:
    guard = make_guard(
        parking={"wait_inline_max_s": 0},
        budgets=[{"key": "tiny", "limit_usd": 0.0000001, "window": "1h", "on_exhausted": "park"}],
    )
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    with guard.session("top", budget_key="tiny"), pytest.raises(openai.OpenAIError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            extra_body={"api_key": OPENAI_KEY, "Authorization": BEARER},
        )
    # The call cannot fit even an empty window, so it is refused, not parked; either way the
    # error is agentguard's and quotes nothing secret.
    assert_no_secret(str(caught.value).encode(), "the error")
    sim.rate_limit_next(1, retry_after=3600)
    free = make_guard(parking={"wait_inline_max_s": 0})
    client = free.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    with free.session("top"), pytest.raises(SessionParked) as parked:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            extra_body={"api_key": OPENAI_KEY, "Authorization": BEARER},
        )
    assert_no_secret(str(parked.value).encode(), "the error")
    record = free.parked.get("top")
    assert record is not None and "api_key" not in record.request
    assert_no_secret((tmp_path / "store.db").read_bytes(), "the store")


def test_scrub_rules() -> None:
    data = {
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "stop_token_ids": [1, 2],
        "top_logprobs": 3,
        "logit_bias": {"50256": -100},
        "access_token": "abc",
        "tokenizer": {"name": "x"},
        "author": "Ada",
        "X-Api-Key": "k",
        "db_password": "p",
        "text": f"{BEARER} and {GOOGLE_KEY}",
    }
    assert scrub(data) == {
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "stop_token_ids": [1, 2],
        "top_logprobs": 3,
        "logit_bias": {"50256": -100},
        "author": "Ada",
        "text": "[redacted] and [redacted]",
    }


# -- file modes -----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def store_urls(tmp_path: Path) -> dict[str, tuple[str, Path]]:
    return {
        "query string": (f"sqlite:///{tmp_path}/q/deep/store.db?timeout=5", tmp_path / "q"),
        "file: URI": (f"sqlite:///file:{tmp_path}/u/store.db?uri=true", tmp_path / "u"),
        "relative path": ("sqlite:///rel/store.db", tmp_path / "rel"),
        "plain": (f"sqlite:///{tmp_path}/p/store.db", tmp_path / "p"),
    }


@pytest.mark.parametrize("form", ["query string", "file: URI", "relative path", "plain"])
def test_store_files_are_private_whatever_the_url(
    form: str, tmp_path: Path, sim: SimServer, umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / "home"))
    url, first_dir = store_urls(tmp_path)[form]
    guard = Guard(GuardConfig.from_mapping({"store": {"url": url}}, env={}))
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    with guard.session():
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    guard.close()
    databases = list(first_dir.rglob("store.db*"))
    assert any(path.name == "store.db" for path in databases)
    for path in databases:
        assert mode(path) == 0o600, f"{path} is {oct(mode(path))}"
    for directory in [first_dir, *(p for p in first_dir.rglob("*") if p.is_dir())]:
        assert mode(directory) == 0o700, f"{directory} is {oct(mode(directory))}"


def test_an_existing_loose_home_is_tightened(
    tmp_path: Path, umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    monkeypatch.setenv("AGENTGUARD_HOME", str(home))
    Guard(GuardConfig.from_mapping({}, env={}))
    assert mode(home) == 0o700
    assert mode(home / "agentguard.db") == 0o600


def test_a_key_echoed_by_a_gateway_stays_out_of_errors_and_logs(
    make_guard: Callable[..., Guard], sim: SimServer
) -> None:
    stream = io.StringIO()
    configure_logging("info", json_lines=True, stream=stream)
    try:
        guard = make_guard(limits={"max_retries": 1})
        client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key=OPENAI_KEY))
        echoed = {"error": {"message": f"upstream rejected key {OPENAI_KEY}", "type": "server"}}
        sim.fail_next(5, status=500, body=echoed)
        with guard.session("echo"), pytest.raises(RetryLimitExceeded) as caught:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
    finally:
        logger = logging.getLogger("agentguard")
        for handler in list(logger.handlers):
            if getattr(handler, "_agentguard", False):
                logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert "upstream rejected key [redacted]" in str(caught.value)
    assert_no_secret(str(caught.value).encode(), "the error")
    assert '"event": "retry"' in stream.getvalue()
    assert_no_secret(stream.getvalue().encode(), "the log")
