"""The agentguard command, run through its real entry point on a real store."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import CliRunner

import agentguard as ag
from agentguard import ConfigError, GuardConfig, SessionParked
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
    result = runner.invoke(app, list(args), prog_name="agentguard")
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
        assert code == 2
        assert "agentguard: error: no parked session with id 'nope'" in output


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
    assert code == 2 and "already has a record (dropped)" in output and "--replace" in output
    code, output = invoke(
        "parked", "import", str(file), "--replace", "--json", "--config", str(config_file)
    )
    assert code == 0 and json.loads(output)["state"] == "parked"
    code, output = invoke("parked", "resume", "cli-1", "--config", str(config_file))
    assert code == 0 and "due now" in output
    code, output = invoke("parked", "list", "--json", "--config", str(config_file))
    assert json.loads(output)[0]["state"] == "parked"
    bad = tmp_path / "bad.json"
    bad.write_text('{"session_id": "../x"}')
    code, output = invoke("parked", "import", str(bad), "--config", str(config_file))
    assert code == 2 and "not a parked session record" in output


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
    assert code == 2
    assert "limits.max_iterations" in output and str(path) in output
    assert "Traceback" not in output


def test_schema_and_store_upgrade(config_file: Path) -> None:
    code, output = invoke("parked", "schema")
    assert code == 0 and json.loads(output)["title"] == "ParkedSession"
    code, output = invoke("store", "upgrade", "--config", str(config_file))
    assert code == 0 and "schema version" in output


def test_the_console_script_and_import_cost(config_file: Path) -> None:
    """`import agentguard` loads no framework and no heavy stage; `python -m agentguard` is the
    command, and a mistake through it is one line on stderr."""
    # The command's own import stays light too: --version and --help load no openai,
    # pydantic or SQL.
    code = (
        "import sys, agentguard.cli;"
        "bad = [m for m in ('langchain', 'crewai', 'langgraph', 'sqlalchemy', 'apscheduler', "
        "'watchdog', 'openai', 'anthropic', 'pydantic', 'uvicorn', 'aiohttp') if m in sys.modules];"
        "print(bad)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"
    version = subprocess.run(
        [sys.executable, "-m", "agentguard", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.strip() == f"agentguard {ag.__version__}"
    help_text = subprocess.run(
        [sys.executable, "-m", "agentguard", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "parked" in help_text and "daemon" in help_text and "--version" in help_text
    mistake = subprocess.run(
        [sys.executable, "-m", "agentguard", "budget", "status", "tema", "-c", str(config_file)],
        capture_output=True,
        text=True,
    )
    assert mistake.returncode == 2 and mistake.stdout == ""
    assert mistake.stderr.startswith("agentguard: error: unknown budget key 'tema'")
    assert "did you mean 'team'?" in mistake.stderr and len(mistake.stderr.splitlines()) == 1


def test_flags_are_plain_flags_and_every_command_has_json() -> None:
    for command in (
        ["budget", "status"],
        ["budget", "history"],
        ["parked", "list"],
        ["parked", "show"],
        ["parked", "resume"],
        ["parked", "drop"],
        ["parked", "import"],
        ["parked", "export"],
        ["parked", "schema"],
        ["store", "upgrade"],
    ):
        code, output = invoke(*command, "--help")
        assert code == 0 and "--json " in output, command
        assert "<bool>" not in output, command
    code, output = invoke("--version")
    assert code == 0 and output.strip() == f"agentguard {ag.__version__}"


def test_a_flag_given_a_value_and_unknown_keys_are_errors(
    config_file: Path, parked_session: str
) -> None:
    code, output = invoke("budget", "status", "--json", "true", "--config", str(config_file))
    assert code == 2 and "flags take no value" in output and "[" not in output
    code, output = invoke("budget", "status", "nope", "--config", str(config_file))
    assert code == 2 and "unknown budget key 'nope'" in output and "'team'" in output
    code, output = invoke("budget", "history", "nope", "--config", str(config_file))
    assert code == 2 and "unknown budget key 'nope'" in output
    guard = Guard.from_config(config_file)
    with pytest.raises(ConfigError, match="did you mean 'team'"):
        guard.budget_history("tema")


def _spend(guard: Guard, sim: SimServer, key: str, session_id: str) -> None:
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    with guard.session(session_id, budget_key=key):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Summarise the plan."}]
        )
    guard.ledger.flush()


def test_budget_status_shows_keys_in_the_store_that_the_config_lacks(
    config_file: Path, tmp_path: Path, sim: SimServer
) -> None:
    other = tmp_path / "other.toml"
    other.write_text(
        config_file.read_text() + '\n[[budgets]]\nkey = "nightly"\nlimit_usd = 2\nwindow = "1d"\n'
    )
    guard = Guard.from_config(other)
    _spend(guard, sim, "nightly", "night-1")
    spent = guard.budget_status("nightly").spent_usd
    assert spent > 0
    code, output = invoke("budget", "status", "--json", "--config", str(config_file))
    rows = {row["key"]: row for row in json.loads(output)}
    assert rows["team"]["configured"] is True
    assert rows["nightly"]["configured"] is False
    assert Decimal(rows["nightly"]["spent_usd"]) == spent and rows["nightly"]["calls"] == 1
    code, output = invoke("budget", "status", "--config", str(config_file))
    assert code == 0 and "nightly *" in output and "not in this config" in output
    assert Guard.from_config(config_file).budget_keys() == ["nightly", "team"]


def test_budget_history_chart_and_json(config_file: Path, sim: SimServer) -> None:
    guard = Guard.from_config(config_file)
    _spend(guard, sim, "team", "hist-1")
    _spend(guard, sim, "team", "hist-2")
    status = guard.budget_status("team")
    history = guard.budget_history("team", windows=3)
    assert len(history) == 3
    assert history[-1].spent_usd == status.spent_usd and history[-1].calls == 2
    assert history[-1].start == status.window_start and history[-1].end == status.resets_at
    assert [w.spent_usd for w in history[:-1]] == [0, 0]
    assert history[1].end == history[2].start
    code, output = invoke("budget", "history", "team", "-n", "4", "--json", "-c", str(config_file))
    assert code == 0
    (entry,) = json.loads(output)
    assert entry["key"] == "team" and entry["limit_usd"] == "1.5" and entry["window"] == "5h"
    assert len(entry["windows"]) == 4
    assert Decimal(entry["windows"][-1]["spent_usd"]) == status.spent_usd
    code, output = invoke("budget", "history", "--config", str(config_file))
    assert code == 0 and "team" in output and "of $1.50" in output and "2 calls" in output
    assert "█" in output and "< now" in output
    assert max(len(line) for line in output.splitlines()) <= 80
    code, output = invoke("budget", "history", "team", "--windows", "0", "-c", str(config_file))
    assert code == 2 and "--windows" in output


def test_budget_history_of_a_rolling_window(make_guard: Any, sim: SimServer) -> None:
    guard = make_guard(
        budgets=[{"key": "r", "limit_usd": 1, "window": "1h", "window_mode": "rolling"}]
    )
    _spend(guard, sim, "r", "roll-1")
    history = guard.budget_history("r", windows=2)
    assert history[-1].spent_usd == guard.budget_status("r").spent_usd > 0
    assert history[-1].calls == 1 and history[0].spent_usd == 0


def test_import_refuses_an_existing_id_without_replace(
    config_file: Path, parked_session: str, tmp_path: Path
) -> None:
    guard = Guard.from_config(config_file)
    record = guard.parked.get("cli-1")
    with pytest.raises(ValueError, match="already has a record"):
        guard.parked.import_record(record, replace=False)
    file = tmp_path / "cli-1.json"
    file.write_text(record.model_dump_json())
    code, output = invoke("parked", "import", str(file), "--config", str(config_file))
    assert code == 2 and "already has a record (parked); pass --replace" in output
    assert guard.parked.get("cli-1").history == record.history


def test_drop_refuses_a_finished_record(config_file: Path, parked_session: str) -> None:
    code, output = invoke("parked", "drop", "cli-1", "--json", "--config", str(config_file))
    assert code == 0 and json.loads(output)["state"] == "dropped"
    code, output = invoke("parked", "drop", "cli-1", "--config", str(config_file))
    assert code == 2 and "'cli-1' is dropped: a finished record cannot be dropped" in output
    guard = Guard.from_config(config_file)
    with pytest.raises(ValueError, match="finished record"):
        guard.parked.drop("cli-1")
    assert [step.state for step in guard.parked.get("cli-1").history] == ["parked", "dropped"]


def test_resume_now_without_a_client_spends_no_attempt(
    config_file: Path, parked_session: str
) -> None:
    before = Guard.from_config(config_file).parked.get("cli-1")
    code, output = invoke("parked", "resume", "cli-1", "--now", "--config", str(config_file))
    assert code == 2 and "'replay', which needs the application's wrapped openai" in output
    assert "pass --app module:attribute" in output
    guard = Guard(GuardConfig.load(config_file))  # no client wrapped: replay cannot run
    with pytest.raises(ValueError, match="needs the application's wrapped openai client"):
        guard.parked.resume("cli-1")
    after = guard.parked.get("cli-1")
    assert (after.state, after.attempts, after.history) == ("parked", 0, before.history)
    assert after.resume_at == before.resume_at


def test_mistakes_in_flags_are_one_line_errors(config_file: Path) -> None:
    directory = str(config_file.parent)
    for args, expected in (
        (["daemon", "--app", "json:dumps"], "--app 'json:dumps' is a function, not an agentguard"),
        (["daemon", "--app", "json:JSONDecoder"], "returned a JSONDecoder, not an agentguard"),
        (["daemon", "--app", "no_such_module:guard"], "cannot import 'no_such_module'"),
        (["daemon", "--log-level", "loud"], "--log-level 'loud': expected one of"),
        (["budget", "status", "--config", directory], "is a directory, not a config file"),
        (["demo", "--budget", "-1"], "--budget -1.0: expected a dollar amount above 0"),
        (["demo", "--steps", "0"], "'--steps'"),
        (["sim", "--style", "grpc"], "--style 'grpc': expected one of openai, litellm"),
        (["budget", "status", "--jsn"], "No such option: --jsn (Possible options: --json)"),
        (["budget", "statu"], "Did you mean 'status'? (see `agentguard budget --help`)"),
        (["parked", "show"], "Missing argument"),
        (["--bogus"], "No such option: --bogus (see `agentguard --help`)"),
    ):
        if args[0] == "daemon":
            args = [*args, "--config", str(config_file)]
        code, output = invoke(*args)
        assert code == 2 and expected in output, (args, output)
        assert output.startswith("agentguard: error: ") and len(output.splitlines()) == 1
        assert "Traceback" not in output and "<mapping>" not in output
    # --debug shows what is behind an error.
    result = runner.invoke(app, ["--debug", "budget", "status", "-c", directory])
    assert isinstance(result.exception, ConfigError)


def test_show_says_when_in_words_and_labels_roles(config_file: Path, parked_session: str) -> None:
    code, output = invoke("parked", "show", "cli-1", "--messages", "--config", str(config_file))
    assert code == 0
    assert "resumes: " in output and "(in 1h" in output and "(in -)" not in output
    assert "    user: Plan the migration." in output
    code, output = invoke("parked", "list", "--config", str(config_file))
    assert "in 1h" in output
    invoke("parked", "drop", "cli-1", "--config", str(config_file))
    code, output = invoke("parked", "show", "cli-1", "--config", str(config_file))
    assert "resumes: not scheduled (dropped)" in output
    code, output = invoke("parked", "resume", "cli-1", "--json", "--config", str(config_file))
    assert code == 0 and json.loads(output)["state"] == "parked"
    code, output = invoke("parked", "show", "cli-1", "--config", str(config_file))
    assert "resumes: due now" in output and "(in due)" not in output


def test_a_reused_session_id_starts_a_fresh_record(
    config_file: Path, parked_session: str, sim: SimServer
) -> None:
    guard = Guard.from_config(config_file)
    guard.parked.drop("cli-1")
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    sim.rate_limit_next(1, retry_after=7200)
    with guard.session("cli-1", budget_key="team"), pytest.raises(SessionParked):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "A new task."}]
        )
    record = guard.parked.get("cli-1")
    assert [step.state for step in record.history] == ["parked"]
    assert record.request["messages"][0]["content"] == "A new task."
    # While the session is still parked, parking it again continues its history.
    sim.rate_limit_next(1, retry_after=7200)
    with guard.session("cli-1", budget_key="team"), pytest.raises(SessionParked):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "A new task."}]
        )
    assert [step.state for step in guard.parked.get("cli-1").history] == ["parked", "parked"]


def test_store_upgrade_json(config_file: Path) -> None:
    code, output = invoke("store", "upgrade", "--json", "--config", str(config_file))
    assert code == 0 and json.loads(output)["schema_version"] >= 1


SIM_COMMAND = [sys.executable, "-m", "agentguard", "sim", "--port", "0", "--verbose", "--script"]


def test_sim_serves_tool_calls_and_prints_its_banner_once(tmp_path: Path) -> None:
    script = tmp_path / "replies.json"
    script.write_text(
        json.dumps([{"tool_calls": [{"name": "search", "arguments": {"query": "x"}}]}, "All done."])
    )
    for option in ("coding", str(script)):
        process = subprocess.Popen(
            [*SIM_COMMAND, option],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            assert banner.startswith("agentguard sim on http://127.0.0.1:")
            base_url = banner.split()[3]
            client = openai.OpenAI(base_url=base_url, api_key="sk-test")
            reply = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Go."}]
            )
            assert reply.choices[0].message.tool_calls
        finally:
            process.terminate()
            out, err = process.communicate(timeout=30)
        assert (banner + out + err).count("agentguard sim") == 1
    code, output = invoke("sim", "--script", str(tmp_path / "missing.json"))
    assert code == 2 and "expected 'coding' or a JSON file" in output


def test_route_report_and_calibrate_fail_clearly(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["route", "report", "--events", str(tmp_path / "none.jsonl")])
    assert (
        missing.exit_code == 2 and "--events" in missing.output and "cannot read" in missing.output
    )
    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps(
            {
                "event": "route_outcome",
                "tier": "large",
                "kind": "first_step",
                "score": 0.9,
                "cheap": False,
                "escalations": 0,
                "fallbacks": 0,
                "result": "ok",
            }
        )
        + "\n"
    )
    empty = runner.invoke(app, ["route", "report", "--events", str(tmp_path / "x")])
    assert empty.exit_code == 2
    both = runner.invoke(
        app,
        [
            "route",
            "calibrate",
            "--events",
            str(events),
            "--target-large-share",
            "0.3",
            "--target-escalation-rate",
            "0.1",
        ],
    )
    assert both.exit_code == 2 and "not both" in both.output
    no_target = runner.invoke(
        app, ["route", "calibrate", "--events", str(events), "--config", str(tmp_path / "none")]
    )
    assert no_target.exit_code == 2 and "--config" in no_target.output
    config = tmp_path / "agentguard.toml"
    config.write_text("[routing]\n")
    untargeted = runner.invoke(
        app, ["route", "calibrate", "--events", str(events), "--config", str(config)]
    )
    assert untargeted.exit_code == 2 and "routing.target_escalation_rate" in untargeted.output
    no_cheap = runner.invoke(
        app, ["route", "calibrate", "--events", str(events), "--target-escalation-rate", "0.1"]
    )
    assert no_cheap.exit_code == 2 and "no scored cheap steps" in no_cheap.output
    report = runner.invoke(app, ["route", "report", "--events", str(events)])
    assert report.exit_code == 0 and "large" in report.stdout and "first_step" in report.stdout


@pytest.mark.parametrize(
    ("command", "event"),
    [
        (["route", "report"], {"event": "route_outcome", "tier": "small", "score": 1.7}),
        (["route", "calibrate", "--target-large-share", "0.3"], {"event": "route", "score": "x"}),
    ],
)
def test_a_bad_score_in_the_log_names_its_line(
    tmp_path: Path, command: list[str], event: dict[str, object]
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("not json\n" + json.dumps({"event": "other"}) + "\n" + json.dumps(event))
    result = runner.invoke(app, [*command, "--events", str(events)])
    assert result.exit_code == 2
    assert "line 3" in result.output and "is not in 0..1" in result.output
