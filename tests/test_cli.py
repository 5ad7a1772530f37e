"""The agentguard command, run through its real entry point on a real store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from agentguard import SessionParked
from agentguard.cli import app
from agentguard.guard import Guard
from agentguard.sim import SimServer

runner = CliRunner()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agentguard.toml"
    path.write_text(
        f"""
[store]
url = "sqlite:///{tmp_path / "store.db"}"

[[budgets]]
key = "team"
limit_usd = 1.5
window = "5h"

[parking]
wait_inline_max_s = 0
dir = "{tmp_path / "parked"}"
"""
    )
    return path


@pytest.fixture
def parked_session(config_file: Path, sim: SimServer) -> str:
    guard = Guard.from_config(config_file)
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-cli-secret"))
    sim.rate_limit_next(1, retry_after=7200, reset_requests="2h0m0s")
    with guard.session("cli-1", budget_key="team"), pytest.raises(SessionParked):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Plan the migration."}]
        )
    return "cli-1"


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_parked_list_show_and_json(config_file: Path, parked_session: str) -> None:
    code, output = invoke("parked", "list", "--config", str(config_file))
    assert code == 0 and "cli-1" in output and "parked" in output
    code, output = invoke("parked", "list", "--json", "--config", str(config_file))
    rows = json.loads(output)
    assert rows[0]["session_id"] == "cli-1" and rows[0]["attempts"] == 0
    assert rows[0]["reason"]["reset_source"] == "retry-after"
    assert rows[0]["request"]["messages"].startswith("<1 messages")
    code, output = invoke("parked", "show", "cli-1", "--messages", "--config", str(config_file))
    assert code == 0 and "Plan the migration." in output and "retry-after" in output
    code, output = invoke(
        "parked", "show", "cli-1", "--json", "--messages", "--config", str(config_file)
    )
    assert json.loads(output)["request"]["messages"][0]["content"] == "Plan the migration."
    assert "sk-cli-secret" not in output


def test_unknown_ids_get_a_clear_error(config_file: Path) -> None:
    for command in (["show", "nope"], ["drop", "nope"], ["resume", "nope"], ["export", "nope"]):
        code, output = invoke("parked", *command, "--config", str(config_file))
        assert code == 1
        assert "no parked session with id 'nope'" in output


def test_export_import_drop_and_resume_scheduling(
    config_file: Path, parked_session: str, tmp_path: Path
) -> None:
    code, exported = invoke("parked", "export", "cli-1", "--config", str(config_file))
    assert code == 0
    file = tmp_path / "cli-1.json"
    file.write_text(exported)
    code, output = invoke("parked", "drop", "cli-1", "--config", str(config_file))
    assert code == 0 and "dropped" in output
    code, output = invoke(
        "parked", "list", "--state", "dropped", "--json", "--config", str(config_file)
    )
    assert [row["session_id"] for row in json.loads(output)] == ["cli-1"]
    code, output = invoke("parked", "import", str(file), "--config", str(config_file))
    assert code == 0 and "imported" in output
    code, output = invoke("parked", "resume", "cli-1", "--config", str(config_file))
    assert code == 0 and "due now" in output
    code, output = invoke("parked", "list", "--json", "--config", str(config_file))
    assert json.loads(output)[0]["state"] == "parked"
    bad = tmp_path / "bad.json"
    bad.write_text('{"session_id": "../x"}')
    code, output = invoke("parked", "import", str(bad), "--config", str(config_file))
    assert code == 1 and "not a parked session record" in output


def test_resume_now_with_the_app(
    config_file: Path, parked_session: str, tmp_path: Path, sim: SimServer
) -> None:
    app_module = tmp_path / "cli_test_app.py"
    app_module.write_text(
        "import openai\nfrom agentguard.guard import Guard\n"
        f"guard = Guard.from_config({str(config_file)!r})\n"
        f"client = guard.wrap(openai.OpenAI(base_url={sim.base_url!r}, api_key='sk-x'))\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        code, output = invoke(
            "parked",
            "resume",
            "cli-1",
            "--now",
            "--app",
            "cli_test_app:guard",
            "--config",
            str(config_file),
        )
    finally:
        sys.path.remove(str(tmp_path))
    assert code == 0, output
    assert "resumed" in output


def test_budget_status(config_file: Path, parked_session: str) -> None:
    code, output = invoke("budget", "status", "--json", "--config", str(config_file))
    rows = {row["key"]: row for row in json.loads(output)}
    assert rows["team"]["limit_usd"] == "1.5" and rows["team"]["resets_at"]
    code, output = invoke("budget", "status", "team", "--config", str(config_file))
    assert code == 0 and "team" in output


def test_bad_config_is_reported_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[limits]\nmax_iterations = -3\n")
    code, output = invoke("budget", "status", "--config", str(path))
    assert code == 1
    assert "limits.max_iterations" in output and str(path) in output
    assert "Traceback" not in output


def test_schema_and_store_upgrade(config_file: Path) -> None:
    code, output = invoke("parked", "schema")
    assert code == 0 and json.loads(output)["title"] == "ParkedSession"
    code, output = invoke("store", "upgrade", "--config", str(config_file))
    assert code == 0 and "schema version" in output


def test_the_console_script_and_import_cost() -> None:
    """`import agentguard` loads no framework and no heavy stage."""
    code = (
        "import sys, agentguard;"
        "bad = [m for m in ('langchain', 'crewai', 'langgraph', 'sqlalchemy', 'apscheduler', 'watchdog') if m in sys.modules];"
        "print(bad)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"
    help_text = subprocess.run(
        [sys.executable, "-m", "agentguard.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "parked" in help_text and "daemon" in help_text
