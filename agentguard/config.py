"""Configuration: a pydantic model per section, loaded from TOML, overridden by environment.

Every field is optional and has a sane default, so ``GuardConfig()`` is a working guard with
per-session limits and no dollar budget. ``GuardConfig.load(path)`` reads a TOML file;
environment variables ``AGENTGUARD_<SECTION>__<FIELD>`` override single fields
(``AGENTGUARD_LIMITS__MAX_ITERATIONS=10``), their values read as TOML literals when they parse
as one and as strings otherwise. A bad file or variable raises :class:`ConfigError` naming the
file (or variable), the field and what was expected.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agentguard.errors import ConfigError

__all__ = [
    "BudgetConfig",
    "GuardConfig",
    "LimitRule",
    "LimitsConfig",
    "ParkingConfig",
    "PriceOverride",
    "PricingConfig",
    "ProxyConfig",
    "ProxyKey",
    "RoutingConfig",
    "StoreConfig",
    "TrimmingConfig",
    "agentguard_home",
    "find_config_file",
    "parse_duration",
]

ENV_PREFIX = "AGENTGUARD_"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """Parse ``"30s"``, ``"15m"``, ``"5h"``, ``"1d"``, ``"1w"`` into a timedelta.

    Raises:
        ValueError: the text is not a positive number followed by one of ms, s, m, h, d, w.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected a duration like '30s', '15m', '5h' or '1d', got {text!r}")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"a duration must be longer than zero, got {text!r}")
    return timedelta(seconds=seconds)


def _valid_duration(text: str) -> str:
    parse_duration(text)
    return text


Duration = Annotated[str, AfterValidator(_valid_duration)]
"""A window length written like ``"30s"``, ``"15m"``, ``"5h"``, ``"1d"``."""


SUPPORTED_STORE_SCHEMES = ("sqlite", "postgresql+psycopg")
"""The store URL schemes agentguard works with."""


def check_store_scheme(url: str) -> None:
    """Refuse a store URL whose scheme agentguard does not support.

    Raises:
        ValueError: the URL has no scheme, or one other than ``sqlite`` and
            ``postgresql+psycopg`` (named, with the supported ones, in the message).
    """
    scheme, separator, _ = url.partition("://")
    scheme = scheme.lower()
    if scheme in ("sqlite+pysqlite",):
        return
    if not separator or scheme not in SUPPORTED_STORE_SCHEMES:
        shown = repr(scheme) if separator else "none"
        raise ValueError(
            f"the URL scheme {shown} is not supported; supported: sqlite:///path/to/file.db, "
            "postgresql+psycopg://user@host/database"
        )


def agentguard_home() -> Path:
    """The directory agentguard keeps its state in: ``$AGENTGUARD_HOME`` or ``~/.agentguard``."""
    return Path(os.environ.get("AGENTGUARD_HOME") or "~/.agentguard").expanduser()


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, use_attribute_docstrings=True
    )


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class StoreConfig(_Section):
    """Where the ledger and the parked sessions live."""

    url: str | None = None
    """SQLAlchemy URL. ``None`` means a SQLite file ``agentguard.db`` under AGENTGUARD_HOME;
    ``postgresql+psycopg://user@host/db`` when several machines share budgets."""
    reservation_ttl_s: PositiveFloat = 600.0
    """A hold (a call's reservation or a lease slice) not renewed within this many seconds is
    charged at its full amount: its process died or stalled, so what it spent is unknown. A
    process that wakes later and settles gets the difference back, once."""
    lease_fraction: Annotated[float, Field(ge=0, le=0.5)] = 0.05
    """Each process takes this share of a budget's limit from the store at a time and
    reserves its calls from it in memory: one store write per slice instead of per call.
    The store holds the slice, so it never lets spend past a limit; a process's unused slice is
    given back after ``lease_idle_s`` or at exit, and charged if the process dies holding it
    (so a killed process costs at most this share). 0: a store write before every call."""
    lease_idle_s: PositiveFloat = 1.0
    """A process gives its unused slice of a budget back to the store after this many seconds
    without a call on that budget."""
    busy_timeout_s: PositiveFloat = 30.0
    """How long SQLite waits for another process's write lock before giving up."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_store_scheme(value)
        return value

    def resolved_url(self) -> str:
        """The URL to connect to, with ``~`` expanded in SQLite paths."""
        if self.url is None:
            return f"sqlite:///{agentguard_home() / 'agentguard.db'}"
        if self.url.startswith("sqlite:///~"):
            return "sqlite:///" + str(Path(self.url.removeprefix("sqlite:///")).expanduser())
        return self.url


class LimitsConfig(_Section):
    """Per-session and per-call limits. ``None`` turns a limit off."""

    max_iterations: PositiveInt | None = 30
    """Model calls per session."""
    max_tool_calls: PositiveInt | None = 100
    """Tool calls the model may ask for in one session."""
    max_retries: Annotated[int, Field(ge=0)] = 3
    """Retries of one call after transient failures (timeouts, connection errors, 5xx)."""
    max_consecutive_failures: PositiveInt | None = 3
    """Calls in a row that end in failure before the session is stopped."""
    loop_threshold: Annotated[int, Field(ge=2)] | None = 4
    """The same tool call with the same arguments this many times is a loop."""
    max_session_usd: Annotated[Decimal, Field(gt=0)] | None = None
    """Dollars one session (with its children) may spend in all."""
    backoff_initial_s: Annotated[float, Field(ge=0)] = 0.5
    """First retry delay; each further retry doubles it, with full jitter."""
    backoff_max_s: Annotated[float, Field(ge=0)] = 30.0
    """Longest retry delay."""
    max_retry_after_s: PositiveFloat = 86400.0
    """A provider's ``retry-after`` longer than this is capped (and logged)."""
    default_max_output_tokens: PositiveInt = 4096
    """The output cap of a call that sets none (no ``max_tokens`` nor
    ``max_completion_tokens``). A budget reserves each call's worst case before it is sent,
    input tokens plus the output cap, so this decides how much a call without a cap reserves;
    with ``enforce_output_cap`` (the default) it is also set on the request (``max_tokens``;
    ``max_completion_tokens`` for reasoning models), so a longer answer is cut off at this
    many tokens (``finish_reason = "length"``). Raise it, or set ``max_tokens`` on the call,
    for long answers; lower it to reserve less per call."""
    enforce_output_cap: bool = True
    """Set ``default_max_output_tokens`` as the output cap of requests that set none, so the
    reservation is a true worst case. ``false`` leaves the request alone;
    the call still reserves ``default_max_output_tokens`` of output, and an answer longer
    than that is paid in full at settlement (the budget may then end a window above its
    limit by the difference)."""
    unmetered: list[str] = Field(default_factory=list)
    """Endpoints allowed through unmetered under a budget (``["/v1/images/generations"]``).
    Under a budget the guard meters ``/chat/completions``, ``/responses``, ``/completions`` and
    ``/embeddings``, lets through posts no provider bills (token counts, cancellations), and
    refuses every other ``POST`` unless its path ends with one of these; without a budget
    everything passes."""

    @field_validator("unmetered")
    @classmethod
    def _check_unmetered(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or path.rstrip("/") == "" or "?" in path:
                raise ValueError(
                    f"{path!r} is not an endpoint path: write it like '/v1/embeddings'"
                )
        return value


class BudgetConfig(_Section):
    """A dollar budget for one key, in windows that reset."""

    key: Annotated[str, Field(min_length=1, max_length=200)]
    """The budget key sessions name with ``budget_key=``."""
    limit_usd: Annotated[Decimal, Field(gt=0)] | None = None
    """Dollars per window. Omitted: the key's spend is recorded (``agentguard budget status`` shows
    it) without a limit."""
    window: Duration = "1d"
    """Window length: ``"30s"``, ``"15m"``, ``"5h"``, ``"1d"``."""
    window_mode: Literal["fixed", "rolling"] = "fixed"
    """``fixed``: windows start at multiples of the length since the Unix epoch (UTC);
    ``rolling``: spend counts for one window length after it happened."""
    on_exhausted: Literal["raise", "park", "downgrade"] = "raise"
    """What a call that does not fit does: raise ``BudgetExceeded``, park the session until the
    window resets, or try cheaper models first."""

    @property
    def window_length(self) -> timedelta:
        return parse_duration(self.window)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ProviderConfig(_Section):
    """Where another provider's models are served, for fallback chains that cross providers
    (``[routing.providers.openai]``, ``[routing.providers.anthropic]``)."""

    base_url: str | None = None
    """The API's base URL, as its SDK takes it (``https://api.openai.com/v1``,
    ``https://api.anthropic.com``; the default)."""
    api_key_env: str | None = None
    """The *name* of the environment variable that holds the key (default
    ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``); the key itself never goes in the config."""

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, not {value[:40]!r}")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            # Never echo it: a value that is not a variable name may be the key itself.
            raise ValueError(
                "api_key_env names the environment variable holding the key (letters, digits "
                "and _), never the key itself"
            )
        return value


class RoutingConfig(_Section):
    """Per-step model choice."""

    tiers: dict[str, str] = Field(default_factory=dict)
    """Tier name to model, cheapest first (``{small = "gpt-4o-mini", large = "gpt-4o"}``).
    Empty turns routing off."""
    classifier: Literal["learned", "heuristic", "llm", "cascade"] = "learned"
    """How a step's difficulty is judged: ``learned`` (the default: the shipped scorer, offline,
    a logistic regression trained on public routing data and labelled agent steps; its score is
    the probability that the step needs the larger model), ``heuristic`` (the older offline
    rules on the request: tool results being digested, code/maths/multi-step signals, input
    size, position, previous outcome), ``llm`` (the cheapest tier is asked, a model call of its
    own, through the guard), or ``cascade`` (the learned scorer, and the small tier asked only
    inside its uncertain band)."""
    threshold: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Score (the probability that a step needs the larger model) from which a step goes up a
    tier. ``None``: the learned model's default (``learned`` and ``cascade`` only). ``agentguard route calibrate
    --target-large-share 0.3 --events FILE`` computes one for a target share of large-tier
    calls from recorded ``route`` events."""
    uncertain_band: Annotated[float, Field(ge=0, lt=0.5)] = 0.1
    """Half-width of the score band around ``threshold`` in which ``cascade`` asks the small
    tier."""
    pressure: list[tuple[Annotated[float, Field(gt=0, le=1)], str]] = Field(default_factory=list)
    """``[remaining budget fraction, highest tier allowed]`` pairs."""
    allow_upgrade: bool = False
    """Let the router pick a tier above the caller's model."""
    escalate: bool = True
    """Re-send a failed cheap step one tier up."""
    force_model: str | None = None
    """Pin every call to this model."""
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    """Ordered alternatives per model or tier name (``{"gpt-4o" = ["gpt-4.1", "gpt-4o-mini"],
    large = ["gpt-4.1"]}``; a tier name stands for its model, in keys and in chains). A call
    whose model answers 529 (overloaded), 404 (model not found) or says the model is gone is
    sent to the next model of its chain at once; after a timeout or 5xx, once
    ``limits.max_retries`` retries have failed. Each model of a chain is priced when the
    config loads and reserved before it is sent. A chain may cross to another provider's
    models only when ``providers`` says where that provider is served."""
    cooldown_failures: PositiveInt = 3
    """A model whose calls fail (5xx, 529, 404, timeouts) this many times within
    ``cooldown_window`` is skipped for ``cooldown`` by calls that have another model to go
    to (a fallback chain, or a same-tier model in ``equivalents``): in this process at once,
    and in every process on the same store."""
    cooldown_window: Duration = "1m"
    """The window in which ``cooldown_failures`` failures put a model in cooldown."""
    cooldown: Duration = "30s"
    """How long a model in cooldown is skipped. After it, one call (in the whole fleet)
    probes the model: an answer ends the cooldown, a failure starts another."""
    equivalents: dict[str, list[str]] = Field(default_factory=dict)
    """Other models that may serve a tier in place of its model (``{small =
    ["gpt-4.1-mini"]}``); ``prefer`` chooses among them. Never used across tiers."""
    prefer: Literal["cost", "latency"] = "cost"
    """Among a tier's model and its ``equivalents``: ``cost`` sends a step to the cheapest
    (by list price per token), ``latency`` to the one answering fastest lately (the 95th
    percentile of its last ``latency_samples`` total times in this process; a model not yet
    measured is tried first). Latency never moves a step to another tier."""
    latency_samples: Annotated[int, Field(ge=5, le=10000)] = 100
    """How many of its latest calls each model's latency percentiles are kept over."""
    providers: dict[Literal["openai", "anthropic"], ProviderConfig] = Field(default_factory=dict)
    """By provider (``openai``, ``anthropic``): a fallback chain may name a model of a
    provider other than the caller's only when that provider is listed here (the request is
    translated into its API and sent with the key from ``api_key_env``)."""
    target_large_share: Annotated[float, Field(ge=0, le=1)] | None = None
    """The share of routed steps ``agentguard route calibrate`` aims to send to the larger
    tier (when no ``--target-*`` option is given). Nothing recalibrates at run time: the
    command prints a threshold to put in ``threshold``."""
    target_escalation_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    """The share of cheap steps ``agentguard route calibrate`` aims to see escalated, from
    recorded ``route_outcome`` events (when no ``--target-*`` option is given)."""

    @model_validator(mode="after")
    def _check_pressure_tiers(self) -> RoutingConfig:
        for fraction, tier in self.pressure:
            if self.tiers and tier not in self.tiers:
                raise ValueError(
                    f"pressure names tier {tier!r} (at {fraction}), which is not one of the "
                    f"tiers {list(self.tiers)}"
                )
        return self

    @model_validator(mode="after")
    def _check_chains(self) -> RoutingConfig:
        for source, chain in self.fallbacks.items():
            start = self.tiers.get(source, source)
            models = [self.tiers.get(model, model) for model in chain]
            if not chain or any(not model for model in models):
                raise ValueError(f"fallbacks.{source}: a chain names one or more models")
            if start in models or len(set(models)) != len(models):
                raise ValueError(
                    f"fallbacks.{source}: a chain names each model once, and not the model "
                    f"it starts from (got {chain})"
                )
        for tier, models in self.equivalents.items():
            if tier not in self.tiers:
                raise ValueError(
                    f"equivalents.{tier}: {tier!r} is not one of the tiers {list(self.tiers)}"
                )
            others = {m for m in self.tiers.values() if m != self.tiers[tier]}
            crossing = [model for model in models if model in others]
            if crossing:
                raise ValueError(
                    f"equivalents.{tier}: {crossing[0]!r} is the model of another tier; a "
                    f"tier's equivalents are models of the same tier only"
                )
        return self

    def chain_for(self, model: str) -> list[str]:
        """The fallback models of ``model`` (its own chain, else its tier's), tier names
        resolved to their models."""
        chain = self.fallbacks.get(model)
        if chain is None:
            for tier, tier_model in self.tiers.items():
                if tier_model == model and tier in self.fallbacks:
                    chain = self.fallbacks[tier]
                    break
        return [self.tiers.get(name, name) for name in chain or ()]


class TrimmingConfig(_Section):
    """Fitting the accumulating context into a token budget."""

    enabled: bool = True
    """Trim requests that do not fit. ``false`` sends every request whole."""
    max_context_tokens: PositiveInt | None = None
    """Input tokens allowed per call. ``None``: trim only to the model's context window."""
    keep_last_turns: Annotated[int, Field(ge=0)] = 6
    """The newest turns kept whole (a turn ends with an assistant message; a tool call stays
    with its results). The system prompt and the task (first user message) are always kept."""
    tool_output_max_tokens: PositiveInt = 2000
    """Older tool outputs longer than this are elided first (their first lines kept, with a
    note saying how many tokens of which tool's output were cut)."""
    strategy: Literal["elide", "window", "summarize"] = "elide"
    """``elide``: elide old tool outputs, then drop the oldest whole turns; ``window``: drop
    turns only; ``summarize``: like ``elide``, with a summary of the dropped turns in their
    place (written by ``summary_model``)."""
    summary_model: str | None = None
    """Model that writes the summary for ``strategy = "summarize"`` (default: the cheapest
    routing tier). Its calls go through the guard: counted against the same budget."""
    low_watermark: Annotated[float, Field(gt=0, lt=1)] = 0.7
    """When a trim is needed, trim down to this fraction of the room, so the next calls append
    to an unchanged prefix (provider prompt caches stay warm)."""
    cache_aware: bool = True
    """When a trim is needed, also cut deep enough that the call costs no more than the
    untrimmed request would with the provider's prompt cache (priced from the model's cached
    input rate): with a cheap cache, a shallow cut would cost more than it saves."""


class LimitRule(_Section):
    """A rule that says what kind of limit an error response is.

    A rule matches when every condition it sets matches; the first matching rule wins.
    """

    kind: Literal["rate_limit", "budget_window", "quota_exhausted"]
    """What the error means: ``rate_limit`` and ``budget_window`` park the session until the
    limit resets; ``quota_exhausted`` (waiting cannot help) records it as failed."""
    status: list[int] | None = None
    """HTTP status codes the rule applies to (any status when unset)."""
    error_type: str | None = None
    """Equal to the body's ``error.type``."""
    error_code: str | None = None
    """Equal to the body's ``error.code``."""
    message_pattern: str | None = None
    """A regular expression searched (case-insensitive) in the body's error message."""

    @field_validator("message_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value


class GatewayWindow(_Section):
    """A gateway whose limit errors do not say when they reset (a LiteLLM proxy's budget),
    described so that a session it refuses resumes when its window ends."""

    base_url: Annotated[str, Field(min_length=1)]
    """The gateway's base URL as the client uses it (``"http://litellm:4000"``); a request
    whose URL starts with it is the gateway's."""
    window: Duration
    """The gateway's budget window: ``"30s"``, ``"1h"``, ``"1d"``."""
    window_mode: Literal["fixed", "first_spend"] = "first_spend"
    """``fixed``: windows start at multiples of the length since the Unix epoch (UTC);
    ``first_spend``: a window starts at its first spend, so it ends at most one length after
    the refusal."""

    @property
    def window_length(self) -> timedelta:
        return parse_duration(self.window)


class ParkingConfig(_Section):
    """Parking sessions that hit a limit, and resuming them."""

    enabled: bool = True
    """Park sessions that hit a limit. ``false``: the provider's error reaches the caller."""
    dir: str | None = None
    """Directory with ``inbox/`` and ``quarantine/``. ``None``: ``parked/`` under AGENTGUARD_HOME."""
    max_attempts: PositiveInt = 3
    """Resumes tried before a session that keeps hitting its limit is marked ``failed``."""
    wait_inline_max_s: Annotated[float, Field(ge=0)] = 30.0
    """Waits up to this long are slept in-process and retried instead of parking."""
    window_hours: PositiveFloat = 5.0
    """When nothing says when a provider limit resets, resume this many hours later."""
    lease_s: PositiveFloat = 300.0
    """A resume claimed by a process that then dies is retried after this many seconds."""
    inbox_max_bytes: PositiveInt = 8 * 1024 * 1024
    """A record file dropped into ``inbox/`` larger than this is quarantined unread."""
    inbox_settle_s: Annotated[float, Field(ge=0)] = 1.0
    """An inbox file that does not parse is judged (quarantined) only once it has not changed
    for this long; before that it is taken to be still being written."""
    inbox_rescan_s: PositiveFloat = 5.0
    """The daemon looks at the whole inbox at least this often, events or not."""
    rules: list[LimitRule] = Field(default_factory=list)
    """Extra rules, tried before the built-in ones."""
    gateways: list[GatewayWindow] = Field(default_factory=list)
    """Windows of gateways whose limit errors carry no reset time (used before
    ``window_hours``)."""

    def resolved_dir(self) -> Path:
        if self.dir is None:
            return agentguard_home() / "parked"
        return Path(self.dir).expanduser()


class PriceOverride(_Section):
    """A price for a model the price data does not know (dollars per million tokens)."""

    input_per_mtok: Annotated[Decimal, Field(ge=0)]
    """Dollars per million input tokens."""
    output_per_mtok: Annotated[Decimal, Field(ge=0)]
    """Dollars per million output tokens."""
    cached_input_per_mtok: Annotated[Decimal, Field(ge=0)] | None = None
    """Dollars per million input tokens read from the provider's prompt cache (default: the
    input price)."""
    reasoning_per_mtok: Annotated[Decimal, Field(ge=0)] | None = None
    """Dollars per million reasoning tokens (default: the output price)."""
    context_window: PositiveInt | None = None
    """The most input tokens the model takes; trimming fits requests to it."""


class PricingConfig(_Section):
    """Where prices come from."""

    overrides: dict[str, PriceOverride] = Field(default_factory=dict)
    """Prices by model name, for models the price data does not know or prices it has
    wrong (``[pricing.overrides."my-local-model"]``)."""
    provider_id: str | None = None
    """Price data provider to look models up under (``openai``); ``None`` lets it guess."""


class ProxyKey(_Section):
    """A virtual key of the proxy: a client key, known by its hash, mapped to a budget."""

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """The SHA-256 of the key the client sends (``Authorization: Bearer ...`` or
    ``x-api-key``), as 64 lower-case hex digits: ``printf %s "$KEY" | sha256sum``. The key
    itself is never written in the config."""
    budget_key: Annotated[str, Field(min_length=1, max_length=200)]
    """The budget the key's calls draw on (a ``[[budgets]]`` key, or ``"default"``). A request
    with this key that names another budget in ``x-agentguard-budget-key`` is refused."""
    upstream_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    """The environment variable holding the provider key sent upstream in place of the
    client's; unset: the client's own key is forwarded. A variable that is not set when the
    proxy starts is an error."""


class ProxyConfig(_Section):
    """``agentguard proxy``: the guard as an HTTP front for agents that are not Python."""

    openai_base_url: str = "https://api.openai.com/v1"
    """Where OpenAI-dialect requests go (``/v1/chat/completions`` goes to
    ``<openai_base_url>/chat/completions``)."""
    anthropic_base_url: str = "https://api.anthropic.com"
    """Where Anthropic requests go (``/v1/messages`` goes to
    ``<anthropic_base_url>/v1/messages``)."""
    budget_key: Annotated[str, Field(min_length=1, max_length=200)] = "default"
    """The budget of requests that name none (no ``x-agentguard-budget-key`` header, no
    virtual key)."""
    connect_timeout_s: PositiveFloat = 10.0
    """Seconds to open a connection to the upstream before the attempt fails (unsent)."""
    read_timeout_s: PositiveFloat = 600.0
    """Seconds the upstream may stay silent (before its answer, or between two chunks of a
    stream) before the attempt fails; such an attempt may have been billed and is charged."""
    max_request_bytes: PositiveInt = 32 * 1024 * 1024
    """A request body larger than this is refused (413) before it is read whole: the proxy
    holds each body in memory to meter it."""
    max_sessions: PositiveInt = 10000
    """Sessions whose counters the proxy keeps in memory; past this the least recently used
    is forgotten (its spend stays in the store; its iteration and tool-call counts restart)."""
    keys: list[ProxyKey] = Field(default_factory=list)
    """Virtual keys (``[[proxy.keys]]``). With any configured, a request whose key is not one
    of them is refused."""

    @field_validator("openai_base_url", "anthropic_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or "?" in value:
            raise ValueError(f"{value!r} is not a base URL: write it like 'https://host/v1'")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _unique_key_hashes(self) -> ProxyConfig:
        seen: set[str] = set()
        for key in self.keys:
            if key.sha256 in seen:
                raise ValueError(f"proxy key sha256 {key.sha256[:12]}... is configured twice")
            seen.add(key.sha256)
        return self


class GuardConfig(_Section):
    """The whole configuration of a :class:`~agentguard.Guard`."""

    store: StoreConfig = Field(default_factory=StoreConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    budgets: list[BudgetConfig] = Field(default_factory=list)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    trimming: TrimmingConfig = Field(default_factory=TrimmingConfig)
    parking: ParkingConfig = Field(default_factory=ParkingConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    app: str | None = None
    """``module:attribute`` of the application's Guard, for ``agentguard daemon``."""

    @model_validator(mode="after")
    def _unique_budget_keys(self) -> GuardConfig:
        seen: set[str] = set()
        for budget in self.budgets:
            if budget.key in seen:
                raise ValueError(f"budget key {budget.key!r} is configured twice")
            seen.add(budget.key)
        return self

    def budget(self, key: str) -> BudgetConfig | None:
        """The budget configured for ``key``, if any."""
        for budget in self.budgets:
            if budget.key == key:
                return budget
        return None

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
    ) -> GuardConfig:
        """Read a TOML file, then apply ``AGENTGUARD_*`` overrides from ``env`` (default: os.environ).

        Raises:
            ConfigError: the file is missing, is not TOML, or a field is invalid.
        """
        source = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{source}: cannot read config file: {exc.strerror}", source=source
            ) from exc
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})", source=source
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}", source=source) from exc
        return cls.from_mapping(data, source=source, env=env)

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        source: str = "<mapping>",
        env: Mapping[str, str] | None = None,
    ) -> GuardConfig:
        """Validate a mapping (as read from TOML), applying ``AGENTGUARD_*`` overrides.

        Raises:
            ConfigError: a field is invalid; the message names ``source``, the field and what
                was expected.
        """
        merged = _deep_copy(data)
        env_sources = _apply_env_overrides(merged, os.environ if env is None else env)
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            raise _config_error(exc, source, env_sources) from None

    @classmethod
    def discover(
        cls, explicit: str | os.PathLike[str] | None = None, *, origin: str = "the path given"
    ) -> GuardConfig:
        """Find the config the way the CLI does: ``explicit``, ``$AGENTGUARD_CONFIG``,
        ``./agentguard.toml``, ``$AGENTGUARD_HOME/agentguard.toml``, else defaults.

        Args:
            explicit: a path given by the caller.
            origin: who gave ``explicit`` (``--config``, ``Guard.from_config()``), named in
                the error when it is not a file.
        """
        path = find_config_file(explicit, origin=origin)
        if path is None:
            return cls.from_mapping({}, source="defaults")
        return cls.load(path)


def find_config_file(
    explicit: str | os.PathLike[str] | None = None, *, origin: str = "the path given"
) -> Path | None:
    """The config file the CLI would read, or ``None`` for defaults.

    Args:
        explicit: a path given by the caller.
        origin: who gave ``explicit``, named in the error.

    Raises:
        ConfigError: a path was given explicitly (or by ``$AGENTGUARD_CONFIG``) and is not a
            file (it does not exist, or it is a directory).
    """
    for given, named_by in (
        (explicit, origin),
        (os.environ.get("AGENTGUARD_CONFIG"), "$AGENTGUARD_CONFIG"),
    ):
        if given:
            path = Path(given).expanduser()
            if path.is_dir():
                problem = "is a directory, not a config file"
            elif not path.is_file():
                problem = "does not exist"
            else:
                return path
            raise ConfigError(
                f"{path}: the config file given to {named_by} {problem}", source=str(path)
            )
    for candidate in (Path("agentguard.toml"), agentguard_home() / "agentguard.toml"):
        if candidate.is_file():
            return candidate
    return None


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


_NOT_OVERRIDES = {"AGENTGUARD_HOME", "AGENTGUARD_CONFIG"}


def _apply_env_overrides(
    data: dict[str, Any], env: Mapping[str, str]
) -> dict[tuple[str, ...], str]:
    """Write ``AGENTGUARD_SECTION__FIELD`` values into ``data``; return field path -> variable."""
    sources: dict[tuple[str, ...], str] = {}
    for name, text in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in _NOT_OVERRIDES or "__" not in name:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if any(not part for part in path):
            raise ConfigError(f"{name}: expected AGENTGUARD_<SECTION>__<FIELD>", source=name)
        target = data
        for part in path[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"{name}: {'.'.join(path[:-1])} is not a section that can be overridden",
                    source=name,
                    field=".".join(path),
                )
            target = child
        target[path[-1]] = _parse_env_value(text)
        sources[path] = name
    return sources


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


_REFERENCE = "docs/configuration.md"
# Pydantic starts the messages of errors raised in validators with these; the user never wrote
# a validator, so they only get in the way.
_LIBRARY_PREFIXES = ("Value error, ", "Assertion failed, ")


def _config_error(
    exc: ValidationError, source: str, env_sources: Mapping[tuple[str, ...], str]
) -> ConfigError:
    problems = []
    first_field = None
    first_expected = None
    for error in exc.errors(include_url=False):
        location = tuple(str(part) for part in error["loc"])
        field = ".".join(location) or "(top level)"
        origin = env_sources.get(location, source)
        got = error.get("input")
        if error["type"] == "extra_forbidden":
            expected = "no such field" + _did_you_mean(location)
            expected += f" (check the spelling; every field is listed in {_REFERENCE})"
            got_text = ""
        else:
            expected = _without_prefix(error["msg"])
            # Our own validators already quote the bad value; say it once. A URL may hold a
            # password, a misused api_key_env the key itself: never echoed.
            secret = location[-1:] in (("url",), ("api_key_env",))
            quoted = isinstance(got, dict) or repr(got) in expected or secret
            got_text = "" if quoted else f" (got {got!r})"
        problems.append(f"{origin}: {field}: {expected}{got_text}")
        if first_field is None:
            first_field, first_expected = field, expected
    if len(problems) == 1:
        message = problems[0]
    else:
        message = "invalid configuration:\n  " + "\n  ".join(problems)
    return ConfigError(message, source=source, field=first_field, expected=first_expected)


def _without_prefix(message: str) -> str:
    for prefix in _LIBRARY_PREFIXES:
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _did_you_mean(location: tuple[str, ...]) -> str:
    """``; did you mean 'max_iterations'?`` for a misspelt field, or nothing."""
    import difflib

    fields = _fields_at(location[:-1])
    matches = difflib.get_close_matches(location[-1], fields, n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _fields_at(location: tuple[str, ...]) -> list[str]:
    """The field names of the config section at ``location``; list indexes and dict keys
    (``budgets.0``, ``pricing.overrides.my-model``) step into the items."""
    model: Any = GuardConfig
    in_container = False
    for part in location:
        field = model.model_fields.get(part)
        if field is None:
            if not in_container:
                return []
            in_container = False  # an index or key: the items are of the same model
            continue
        model = _section_type(field.annotation)
        if model is None:
            return []
        in_container = model is not field.annotation
    return list(model.model_fields)


def _section_type(annotation: Any) -> Any:
    """The config model inside an annotation (``LimitRule`` in ``list[LimitRule]``)."""
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _section_type(argument)
        if found is not None:
            return found
    return None
