"""GuardConfig: TOML loading, environment overrides, and clear errors for bad input."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from agentguard import ConfigError, GuardConfig
from agentguard.config import find_config_file, parse_duration

GOOD = """
[store]
url = "sqlite:///~/x.db"

[limits]
max_iterations = 12
max_tool_calls = 40

[[budgets]]
key = "research"
limit_usd = 5.00
window = "5h"
on_exhausted = "park"

[routing]
tiers = { small = "gpt-4o-mini", medium = "gpt-4.1-mini", large = "gpt-4o" }
pressure = [[0.20, "medium"], [0.05, "small"]]

[trimming]
max_context_tokens = 32000

[parking]
max_attempts = 5

[pricing.overrides."my-local-model"]
input_per_mtok = 0.10
output_per_mtok = 0.20
"""


def write(tmp_path: Path, text: str, name: str = "agentguard.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_every_section(tmp_path: Path) -> None:
    config = GuardConfig.load(write(tmp_path, GOOD), env={})
    assert config.limits.max_iterations == 12
    budget = config.budget("research")
    assert budget is not None
    assert budget.limit_usd == Decimal("5.00")
    assert budget.window_length == timedelta(hours=5)
    assert budget.on_exhausted == "park"
    assert list(config.routing.tiers) == ["small", "medium", "large"]
    assert config.routing.pressure == [(0.20, "medium"), (0.05, "small")]
    assert config.pricing.overrides["my-local-model"].output_per_mtok == Decimal("0.20")
    assert config.store.resolved_url().startswith("sqlite:////")
    assert "~" not in config.store.resolved_url()


def test_defaults_need_no_file() -> None:
    config = GuardConfig()
    assert config.limits.max_iterations == 30
    assert config.budgets == []
    assert config.store.resolved_url().endswith("agentguard.db")


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ("[limits]\nmax_iterations = 'many'\n", "limits.max_iterations", "valid integer"),
        ("[limits]\nmax_iterations = 0\n", "limits.max_iterations", "greater than 0"),
        ("[limits]\nmax_retries = -1\n", "limits.max_retries", "greater than or equal to 0"),
        ("[limitz]\nmax_iterations = 3\n", "limitz", "no such field"),
        ("[limits]\nmax_iteration = 3\n", "limits.max_iteration", "no such field"),
        (
            "[[budgets]]\nkey = 'a'\nlimit_usd = 1\nwindow = '5 hours'\n",
            "budgets.0.window",
            "duration",
        ),
        ("[[budgets]]\nkey = 'a'\nlimit_usd = -1\n", "budgets.0.limit_usd", "greater than 0"),
        (
            "[[budgets]]\nkey = 'a'\nlimit_usd = 1\non_exhausted = 'pray'\n",
            "budgets.0.on_exhausted",
            "raise",
        ),
        ("[routing]\ntiers = {small = 'a'}\npressure = [[0.2, 'huge']]\n", "routing", "huge"),
    ],
)
def test_bad_fields_name_file_field_and_expectation(
    tmp_path: Path, text: str, field: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        GuardConfig.load(path, env={})
    message = str(caught.value)
    assert str(path) in message
    assert field in message
    assert fragment in message
    assert caught.value.source == str(path)
    assert caught.value.field is not None and caught.value.field.startswith(field.split(".")[0])


def test_duplicate_budget_keys_rejected(tmp_path: Path) -> None:
    text = "[[budgets]]\nkey='a'\nlimit_usd=1\n[[budgets]]\nkey='a'\nlimit_usd=2\n"
    with pytest.raises(ConfigError, match="configured twice"):
        GuardConfig.load(write(tmp_path, text), env={})


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits\nmax_iterations = 3")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        GuardConfig.load(path, env={})
    assert str(path) in str(caught.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "agentguard.toml"
    path.write_bytes(b"[limits]\nmax_iterations = 3 # \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        GuardConfig.load(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        GuardConfig.load(tmp_path / "nope.toml", env={})


def test_env_overrides_fields_and_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    config = GuardConfig.load(path, env={"AGENTGUARD_LIMITS__MAX_ITERATIONS": "7"})
    assert config.limits.max_iterations == 7
    config = GuardConfig.load(path, env={"AGENTGUARD_STORE__URL": "sqlite:////tmp/other.db"})
    assert config.store.url == "sqlite:////tmp/other.db"
    with pytest.raises(ConfigError, match="AGENTGUARD_LIMITS__MAX_ITERATIONS") as caught:
        GuardConfig.load(path, env={"AGENTGUARD_LIMITS__MAX_ITERATIONS": "lots"})
    assert caught.value.field == "limits.max_iterations"


def test_env_override_cannot_descend_into_a_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a section"):
        GuardConfig.from_mapping(
            {"limits": {"max_iterations": 3}},
            env={"AGENTGUARD_LIMITS__MAX_ITERATIONS__X": "1"},
        )


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config_file() is None
    local = write(tmp_path, "[limits]\nmax_iterations = 2\n")
    assert find_config_file() == Path("agentguard.toml")
    other = write(tmp_path, "[limits]\nmax_iterations = 3\n", "other.toml")
    monkeypatch.setenv("AGENTGUARD_CONFIG", str(other))
    assert find_config_file() == other
    assert find_config_file(local) == local
    with pytest.raises(ConfigError, match="does not exist"):
        find_config_file(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("5h", 18000), ("1d", 86400), ("250ms", 0.25)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5", "5 hours", "-1h", "0s", "h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_missing_or_directory_config_names_the_path_and_who_gave_it(tmp_path: Path) -> None:
    from agentguard import Guard

    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        Guard.from_config(missing)
    assert str(caught.value) == (
        f"{missing}: the config file given to Guard.from_config() does not exist"
    )
    with pytest.raises(ConfigError, match=r"given to Guard.from_config\(\) is a directory"):
        Guard.from_config(tmp_path)


def test_a_bad_value_is_said_once_without_library_prefixes(tmp_path: Path) -> None:
    path = write(tmp_path, "[[budgets]]\nkey = 'a'\nlimit_usd = 1\nwindow = '5 hours'\n")
    with pytest.raises(ConfigError) as caught:
        GuardConfig.load(path, env={})
    message = str(caught.value)
    assert message == (
        f"{path}: budgets.0.window: expected a duration like '30s', '15m', '5h' or '1d', "
        "got '5 hours'"
    )
    assert "Value error" not in message and message.count("5 hours") == 1


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [
        ("[limits]\nmax_iteration = 3\n", "did you mean 'max_iterations'?"),
        ("[limitz]\nmax_iterations = 3\n", "did you mean 'limits'?"),
        ("[[budgets]]\nkey = 'a'\nlimit_usd = 1\nwindw = '1h'\n", "did you mean 'window'?"),
        (
            "[pricing.overrides.m]\ninput_per_mtok = 1\noutput_per_mtok = 1\ncached_per_mtok = 1\n",
            "did you mean 'cached_input_per_mtok'?",
        ),
    ],
)
def test_a_misspelt_field_gets_a_suggestion_and_the_reference(
    tmp_path: Path, text: str, suggestion: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        GuardConfig.load(write(tmp_path, text), env={})
    assert suggestion in str(caught.value)
    assert "docs/configuration.md" in str(caught.value)
    assert "configuration reference" not in str(caught.value)


def test_an_unsupported_store_scheme_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "[store]\nurl = 'mysql://user:hunter2@db/agents'\n")
    with pytest.raises(ConfigError) as caught:
        GuardConfig.load(path, env={})
    message = str(caught.value)
    assert "store.url" in message and "'mysql' is not supported" in message
    assert "sqlite:///" in message and "postgresql+psycopg://" in message
    assert "MySQLdb" not in message and "hunter2" not in message


def test_an_unwritable_store_names_store_url_and_the_path(tmp_path: Path) -> None:
    from agentguard import Guard, StoreError

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    url = f"sqlite:///{blocker / 'store.db'}"
    with pytest.raises(StoreError) as caught:
        Guard(GuardConfig.from_mapping({"store": {"url": url}}, env={})).budget_status("a")
    message = str(caught.value)
    assert "store.url" in message and str(blocker) in message
