"""``AgentGuardCapability``: one agentguard session per Pydantic AI agent run.

The guarded model (:func:`~agentguard_pydantic_ai.guarded_model`) enforces the budget, limits,
routing, trimming and parking on every HTTP attempt. What it cannot know is which agent run a
request belongs to, or how to continue that run after a park. The capability supplies both:
around each run it binds the run's session, and before each model request it keeps the run's
message history (Pydantic AI's own serialisation) and usage in the session's metadata, so that
if the request parks, the parked record holds what the resumer needs to continue the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter
from pydantic_ai.capabilities import AbstractCapability, CapabilityOrdering
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai.usage import RunUsage, UsageLimits

from agentguard import SessionParked
from agentguard.log import logger

if TYPE_CHECKING:
    from pydantic_ai.capabilities import WrapModelRequestHandler, WrapRunHandler
    from pydantic_ai.messages import ModelResponse
    from pydantic_ai.models import ModelRequestContext
    from pydantic_ai.run import AgentRunResult
    from pydantic_ai.tools import RunContext

    from agentguard import Guard, Session

__all__ = [
    "DEFAULT_RESUMER",
    "FRAMEWORK",
    "MESSAGES_KEY",
    "USAGE_KEY",
    "AgentGuardCapability",
    "session_id_for_run",
]

FRAMEWORK = "pydantic-ai"
"""The ``framework`` a parked record of a Pydantic AI run names."""

DEFAULT_RESUMER = "pydantic-ai"
"""The resumer a parked run names unless the capability is told another."""

MESSAGES_KEY = "pydantic_ai_messages"
"""Session metadata key: the run's messages up to the pending request (JSON, as
``ModelMessagesTypeAdapter`` writes them)."""

USAGE_KEY = "pydantic_ai_usage"
"""Session metadata key: the run's ``RunUsage`` before the pending request (JSON)."""

RUN_ID_KEY = "pydantic_ai_run_id"
"""Session metadata key: the Pydantic AI run id of the run that parked."""

_USAGE = TypeAdapter(RunUsage)
_RESUMER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-")

# The run being guarded in this context, and the capability guarding it: a second
# AgentGuardCapability on the same run (one on the agent, one passed to run()) stands aside.
_guarding: ContextVar[tuple[str | None, int] | None] = ContextVar(
    "agentguard_pydantic_ai_run", default=None
)

SessionIdFor = Callable[["RunContext[Any]"], str]
"""A function choosing a run's session id from its ``RunContext`` (its deps, metadata...)."""


def session_id_for_run(run_id: str) -> str:
    """The agentguard session id of a Pydantic AI run: ``pai-<run_id>``.

    A run id that would not make a valid session id (too long, or characters other than
    letters, digits and ``._:@-``) is replaced by a digest of it.
    """
    candidate = f"pai-{run_id}"
    if _valid_session_id(candidate):
        return candidate
    return f"pai-{hashlib.sha256(run_id.encode('utf-8', 'surrogatepass')).hexdigest()[:40]}"


def _valid_session_id(value: str) -> bool:
    return 0 < len(value) <= 200 and value not in (".", "..") and set(value) <= _ID_CHARACTERS


def _check_session_id(value: str) -> str:
    if not isinstance(value, str) or not _valid_session_id(value):
        raise ValueError(
            f"session id {value!r} is not valid: use 1-200 characters of letters, digits and ._:@-"
        )
    return value


@dataclass
class AgentGuardCapability(AbstractCapability[Any]):
    """Runs each Pydantic AI agent run inside an agentguard session.

    The session used for a run is, in order: the session of ``guard`` bound in the caller's
    context (``with guard.session("task-42"): agent.run_sync(...)``, or the one a resumer
    restored); else the run's own, whose id is ``session_id`` (a string, or a function of the
    run's ``RunContext``), else :func:`session_id_for_run` of the Pydantic AI run id. The
    session lives for the run and is marked ``framework="pydantic-ai"`` with ``resumer``
    naming the resumer that continues it (see
    :func:`~agentguard_pydantic_ai.register_pydantic_ai_resumer`).

    Before each model request it keeps the run's messages (``MESSAGES_KEY``) and usage
    (``USAGE_KEY``) in the session's metadata, so a request that parks leaves a record the
    run can be continued from. The metadata is scrubbed of credentials like every parked
    record; dependencies (``deps``) are never stored.

    Pydantic AI's default ``UsageLimits`` stop a run at 50 requests. When the guard limits
    model calls (``limits.max_iterations``), a run left with those defaults has its
    ``request_limit`` lifted, so the guard's limit is the one that applies (it is kept through
    a park and resume; Pydantic AI's count starts again with each run). Explicit
    ``usage_limits`` are left alone: both apply and the stricter stops the run.

    Give the agent a model whose HTTP goes through the same guard
    (:func:`~agentguard_pydantic_ai.guarded_model`).

    Args:
        guard: the guard.
        budget_key: the budget key of the sessions the capability creates.
        session_id: one session id for every run, or a function of the run's ``RunContext``
            returning it (default: from the run id).
        resumer: the registered resumer that continues a parked run.
        lift_default_request_limit: lift Pydantic AI's default ``request_limit`` when the
            guard limits iterations (see above).

    Raises:
        ValueError: an invalid ``session_id`` or ``resumer`` name.
        ConfigError: ``budget_key`` names no ``[[budgets]]`` entry of the guard's config.

    Example::

        agent = Agent(
            guarded_model(guard, "openai:gpt-4o-mini"),
            capabilities=[AgentGuardCapability(guard, budget_key="research")],
        )
    """

    guard: Guard
    _: KW_ONLY
    budget_key: str | None = None
    session_id: str | SessionIdFor | None = None
    resumer: str = DEFAULT_RESUMER
    lift_default_request_limit: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.session_id, str):
            _check_session_id(self.session_id)
        if not _RESUMER_NAME.match(self.resumer):
            raise ValueError(
                f"resumer name {self.resumer!r} must be plain lower-case letters, digits, - and _"
            )
        if self.budget_key is not None:
            self.guard.check_budget_key(self.budget_key)

    @classmethod
    def get_serialization_name(cls) -> str | None:
        """Not built from specs: it holds a :class:`~agentguard.Guard`."""
        return None

    def get_ordering(self) -> CapabilityOrdering | None:
        """Outermost: every other capability's model requests run inside the session."""
        return CapabilityOrdering(position="outermost")

    # -- the run -------------------------------------------------------------------------------

    async def wrap_run(
        self, ctx: RunContext[Any], *, handler: WrapRunHandler
    ) -> AgentRunResult[Any]:
        """Run the agent run inside its session."""
        guarding = _guarding.get()
        if guarding is not None and guarding[0] == ctx.run_id:
            return await handler()  # another AgentGuardCapability guards this run
        if self.session_id is None or self.guard.store.is_sqlite:
            session = self._session_for(ctx)
        else:
            # The parked-record lookup is a query over the network: off the event loop.
            session = await asyncio.to_thread(self._session_for, ctx)
        self._reconcile_usage_limits(ctx)
        marker = _guarding.set((ctx.run_id, id(self)))
        try:
            with session:
                result = await handler()
        except SessionParked as parked:
            logger.info(
                "agent_parked",
                session_id=session.id,
                run_id=ctx.run_id,
                resume_at=parked.resume_at,
                resumer=session.resumer,
            )
            raise
        finally:
            _guarding.reset(marker)
        if logger.enabled("info"):
            logger.info(
                "agent_run",
                session_id=session.id,
                run_id=ctx.run_id,
                iterations=session.state.iterations,
                tool_calls=session.state.tool_calls,
                spent_usd=str(session.state.spent_usd),
            )
        return result

    async def wrap_model_request(
        self,
        ctx: RunContext[Any],
        *,
        request_context: ModelRequestContext,
        handler: WrapModelRequestHandler,
    ) -> ModelResponse:
        """Keep what a resume needs in the session, then make the request."""
        guarding = _guarding.get()
        session = self.guard.current_session_var.get()
        if guarding is not None and guarding[1] == id(self) and session is not None:
            # Written before the request: a park writes the record inside the request, from
            # the session as it is then. ctx.messages ends with the pending request.
            session.metadata[MESSAGES_KEY] = ModelMessagesTypeAdapter.dump_python(
                ctx.messages, mode="json"
            )
            session.metadata[USAGE_KEY] = _USAGE.dump_python(ctx.usage, mode="json")
            session.metadata[RUN_ID_KEY] = ctx.run_id
        settings: dict[str, Any] = dict(request_context.model_settings or {})
        if settings.get("max_retries") not in (None, 0):
            # Pydantic AI (2.68) hands ModelSettings['max_retries'] to the OpenAI SDK client.
            # The guard already answers the SDK "x-should-retry: false" on whatever it hands
            # back; the setting is zeroed as well, so no SDK retry rests on that header alone.
            logger.warning(
                "sdk_retries_off",
                run_id=ctx.run_id,
                asked=settings["max_retries"],
                hint="the guard retries (limits.max_retries); model_settings max_retries is set to 0",
            )
            settings["max_retries"] = 0
            request_context.model_settings = settings  # type: ignore[assignment]
        return await handler(request_context)

    # -- the logic (no I/O but the one record lookup) ------------------------------------------

    def _session_for(self, ctx: RunContext[Any]) -> Session:
        bound = self.guard.current_session_var.get()
        if bound is not None:
            # A session someone else opened keeps its own resumer, unless it is the default
            # one, which would only re-send the pending request instead of continuing the run.
            if bound.framework == "openai":
                bound.framework = FRAMEWORK
            if bound.resumer == "replay":
                bound.resumer = self.resumer
            return bound
        if self.session_id is None:
            # A fresh run id: no record can hold it yet.
            run_id = ctx.run_id or f"run-{secrets.token_hex(8)}"
            return self._new_session(session_id_for_run(run_id))
        chosen = self.session_id if isinstance(self.session_id, str) else self.session_id(ctx)
        session_id = _check_session_id(chosen)
        self._refuse_if_parked(session_id)
        return self._new_session(session_id)

    def _new_session(self, session_id: str) -> Session:
        return self.guard.session(
            session_id,
            budget_key=self.budget_key,
            resumer=self.resumer,
            framework=FRAMEWORK,
        )

    def _refuse_if_parked(self, session_id: str) -> None:
        """A new run must not start under the id of a run that is parked or being resumed:
        the resume would continue the old run too, and the two would share one record."""
        record = self.guard.parked.store.find(session_id)
        if record is None or record.state not in ("parked", "resuming"):
            return
        raise SessionParked(
            f"session {session_id!r} is {record.state} ({record.reason.kind}); a new run "
            "under its id would be a second run of one record: continue it with "
            f"guard.parked.resume({session_id!r}), or drop it with guard.parked.drop(...)",
            session_id=session_id,
            resume_at=record.resume_at,
            reason=record.reason.kind,
        )

    def _reconcile_usage_limits(self, ctx: RunContext[Any]) -> None:
        limits = ctx.usage_limits
        if (
            self.lift_default_request_limit
            and limits is not None
            and self.guard.config.limits.max_iterations is not None
            and limits == UsageLimits()
        ):
            # The run's own UsageLimits object (Pydantic AI made it from the defaults): the
            # guard's max_iterations bounds the run instead.
            limits.request_limit = None
