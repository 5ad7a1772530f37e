"""``AgentGuardMiddleware``: binds an agentguard session to each run of a LangChain agent.

The guarded HTTP client under the chat model (see :func:`~agentguard_langchain.guarded_chat_openai`
and :func:`~agentguard_langchain.guarded_chat_anthropic`) enforces the budget, limits, routing, trimming and parking on every model call. What it cannot
know is which agent run a call belongs to. The middleware supplies that: around every model call
it binds the run's session, named after the LangGraph thread (``lg-<thread_id>``), marked as a
``langchain`` session resumed by the ``langgraph`` resumer, with the thread id kept in its
metadata so that a parked run can be continued from its checkpoint. It adds what only the agent
level can do: with ``exit_behavior="end"`` a limit ends the run with a final message instead of
an exception, and each answer carries what the guard counted for it.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired, cast

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ExtendedModelResponse,
    ModelRequest,
    ModelResponse,
    PrivateStateAttr,
    ResponseT,
)
from langchain_core.messages import AIMessage

from agentguard import (
    BudgetExceeded,
    IterationLimitExceeded,
    LimitExceeded,
    LoopDetected,
    SessionParked,
)
from agentguard.log import logger
from agentguard.session import current_session

if TYPE_CHECKING:
    from langgraph.runtime import Runtime

    from agentguard import Guard, Session

__all__ = [
    "DEFAULT_END_ON",
    "AgentGuardMiddleware",
    "AgentGuardState",
    "session_id_for_thread",
]

FRAMEWORK = "langchain"
"""The ``framework`` a parked record of a LangChain agent names."""

DEFAULT_END_ON: tuple[type[LimitExceeded], ...] = (
    IterationLimitExceeded,
    BudgetExceeded,
    LoopDetected,
)
"""The limits that end a run cleanly under ``exit_behavior="end"``."""

_SESSION_KEY = "agentguard_session_id"
_MAX_LIVE_SESSIONS = 1024
_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-")

ModelCallResult = ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]


def session_id_for_thread(thread_id: str) -> str:
    """The agentguard session id of a LangGraph thread: ``lg-<thread_id>``.

    A thread id that would not make a valid session id (too long, or characters other than
    letters, digits and ``._:@-``) is replaced by a digest of it, so every thread has a
    stable id.
    """
    candidate = f"lg-{thread_id}"
    if _valid_session_id(candidate):
        return candidate
    return f"lg-{hashlib.sha256(thread_id.encode('utf-8', 'surrogatepass')).hexdigest()[:40]}"


def _valid_session_id(value: str) -> bool:
    return 0 < len(value) <= 200 and value not in (".", "..") and set(value) <= _ID_CHARACTERS


class AgentGuardState(AgentState[ResponseT]):
    """The agent state with the run's agentguard session id (private to the middleware)."""

    agentguard_session_id: NotRequired[Annotated[str, PrivateStateAttr]]


@dataclass(slots=True)
class _Step:
    """One model call: its session, and the session's spend when it started."""

    session: Session
    thread_id: str | None
    spent_before: Decimal


class AgentGuardMiddleware(AgentMiddleware[AgentGuardState[Any], Any, Any]):
    """Runs each agent run inside an agentguard session.

    The session used for a model call is, in order: the session bound in the caller's context
    (``with guard.session(...)`` around ``agent.invoke``, or the one a resumer restored); else
    the run's own session, whose id is ``session_id`` if given, else
    :func:`session_id_for_thread` of the LangGraph ``thread_id``, else a fresh id per run.
    A run's own session lives from its first model call to the end of the run (through a
    pause for parking or an interrupt), so its counters cover the whole run.

    Give the agent a chat model whose HTTP goes through the same guard
    (:func:`~agentguard_langchain.guarded_chat_openai`,
    :func:`~agentguard_langchain.guarded_chat_anthropic`); the guard enforces the limits, this
    middleware tells it which run a call belongs to.

    Args:
        guard: the guard.
        budget_key: the budget key of the sessions the middleware creates.
        session_id: one fixed session id for every run (default: from the thread id).
        exit_behavior: ``"error"`` raises the guard's limit errors out of ``invoke``;
            ``"end"`` ends the run with an ``AIMessage`` that says which limit stopped it
            (its ``response_metadata["agentguard"]`` says so too). ``SessionParked`` always
            propagates: a parked run is paused, not ended.
        end_on: the limit errors ``"end"`` applies to (default: iteration and tool-call
            limits, budgets that raise, loops).
        resumer: the registered resumer that continues a parked run
            (see :func:`~agentguard_langchain.register_langgraph_resumer`).

    Raises:
        ValueError: an unknown ``exit_behavior``, or an invalid ``session_id``.

    Example::

        agent = create_agent(
            guarded_chat_openai(guard, model="gpt-4o-mini"),
            tools,
            middleware=[AgentGuardMiddleware(guard, budget_key="research")],
            checkpointer=checkpointer,
        )
        agent.invoke({"messages": [...]}, {"configurable": {"thread_id": "ticket-42"}})
    """

    state_schema = AgentGuardState

    def __init__(
        self,
        guard: Guard,
        *,
        budget_key: str | None = None,
        session_id: str | None = None,
        exit_behavior: Literal["error", "end"] = "error",
        end_on: tuple[type[LimitExceeded], ...] = DEFAULT_END_ON,
        resumer: str = "langgraph",
    ) -> None:
        super().__init__()
        if exit_behavior not in ("error", "end"):
            raise ValueError(f"exit_behavior must be 'error' or 'end', not {exit_behavior!r}")
        if session_id is not None and not _valid_session_id(session_id):
            raise ValueError(
                f"session id {session_id!r} is not valid: use 1-200 characters of letters, "
                "digits and ._:@-"
            )
        self.guard = guard
        self.budget_key = budget_key
        self.session_id = session_id
        self.exit_behavior = exit_behavior
        self.end_on = end_on
        self.resumer = resumer
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    # -- the run's session ------------------------------------------------------------------

    def before_agent(
        self, state: AgentGuardState[Any], runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Name the run's session and keep the name in the agent state."""
        bound = current_session()
        session_id = bound.id if bound is not None else self._own_session_id(_thread_id(runtime))
        if state.get("agentguard_session_id") == session_id:
            return None
        return {_SESSION_KEY: session_id}

    async def abefore_agent(
        self, state: AgentGuardState[Any], runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async twin of :meth:`before_agent` (no I/O; runs on the event loop)."""
        return self.before_agent(state, runtime)

    def after_agent(
        self, state: AgentGuardState[Any], runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """The run is over: forget its session (its spend is in the ledger already)."""
        session_id = state.get("agentguard_session_id")
        if session_id is not None:
            with self._lock:
                self._sessions.pop(session_id, None)
        return None

    async def aafter_agent(
        self, state: AgentGuardState[Any], runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async twin of :meth:`after_agent` (no I/O; runs on the event loop)."""
        return self.after_agent(state, runtime)

    # -- every model call ---------------------------------------------------------------------

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelCallResult:
        """Make the model call inside the run's session."""
        step = self._begin(request, invoked="invoke")
        try:
            with step.session:
                result = handler(request)
        except (LimitExceeded, SessionParked) as error:
            final = self._final_message(step, error)
            if final is None:
                raise
            return final
        return self._finish(step, result)

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelCallResult:
        """Make the model call inside the run's session (async)."""
        step = self._begin(request, invoked="ainvoke")
        try:
            async with step.session:
                result = await handler(request)
        except (LimitExceeded, SessionParked) as error:
            final = self._final_message(step, error)
            if final is None:
                raise
            return final
        return self._finish(step, result)

    # -- the logic both drivers share (no I/O) -------------------------------------------------

    def _begin(self, request: ModelRequest[Any], *, invoked: str) -> _Step:
        thread_id = _thread_id(request.runtime)
        session = current_session()
        if session is None:
            named = cast("str | None", request.state.get(_SESSION_KEY))
            session = self._session(named or self._own_session_id(thread_id))
        # A session someone else opened keeps its own resumer, unless it is the default one,
        # which would only re-send the pending request instead of continuing the graph.
        if session.framework == "openai":
            session.framework = FRAMEWORK
        if session.resumer == "replay":
            session.resumer = self.resumer
        if thread_id is not None:
            session.metadata["thread_id"] = thread_id
        session.metadata["langgraph_invoke"] = invoked
        return _Step(session, thread_id, session.state.spent_usd)

    def _own_session_id(self, thread_id: str | None) -> str:
        if self.session_id is not None:
            return self.session_id
        if thread_id is not None:
            return session_id_for_thread(thread_id)
        # No checkpointer, no thread: each run is a session of its own.
        return f"lg-run-{secrets.token_hex(8)}"

    def _session(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                self._sessions.move_to_end(session_id)
                return session
            parked = self.guard.parked.store.find(session_id)
            if parked is not None and parked.state == "parked":
                # Continuing a parked thread by hand: keep its counters and spend.
                session = self.guard.restore_session(parked)
            else:
                session = self.guard.session(
                    session_id,
                    budget_key=self.budget_key,
                    resumer=self.resumer,
                    framework=FRAMEWORK,
                )
            self._sessions[session_id] = session
            # Runs that died without reaching their end leave sessions behind; keep the newest.
            while len(self._sessions) > _MAX_LIVE_SESSIONS:
                self._sessions.popitem(last=False)
            return session

    def _final_message(self, step: _Step, error: LimitExceeded | SessionParked) -> AIMessage | None:
        """The message that ends the run on ``error``, or ``None`` if the error propagates."""
        if isinstance(error, SessionParked):
            # The parked session object refuses further calls; a later invoke on the thread
            # (the application continuing it by hand) starts from a session restored from the
            # record, and the daemon's resume from one of its own.
            with self._lock:
                self._sessions.pop(step.session.id, None)
            if step.thread_id is None:
                logger.warning(
                    "agent_parked_without_thread",
                    session_id=step.session.id,
                    hint="compile the agent with a checkpointer and pass a thread_id, "
                    "or the parked run cannot be continued",
                )
            return None
        if self.exit_behavior != "end" or not isinstance(error, self.end_on):
            return None
        info = {
            **self._totals(step),
            "stopped_by": type(error).__name__,
            "limit": error.limit,
            "value": str(error.value),
            "observed": None if error.observed is None else str(error.observed),
        }
        logger.info("agent_stopped", thread_id=step.thread_id, **info)
        return AIMessage(
            content=f"Stopped by agentguard: {error}",
            response_metadata={"agentguard": info},
        )

    def _finish(self, step: _Step, result: ModelCallResult) -> ModelCallResult:
        message = _answer_of(result)
        info = self._totals(step)
        if message is not None:
            message.response_metadata["agentguard"] = info
        if logger.enabled("info"):
            logger.info(
                "agent_step",
                thread_id=step.thread_id,
                model=None if message is None else message.response_metadata.get("model_name"),
                tool_calls=[] if message is None else [call["name"] for call in message.tool_calls],
                **info,
            )
        return result

    @staticmethod
    def _totals(step: _Step) -> dict[str, Any]:
        state = step.session.state
        return {
            "session_id": step.session.id,
            "iterations": state.iterations,
            "cost_usd": str(state.spent_usd - step.spent_before),
            "spent_usd": str(state.spent_usd),
        }


def _thread_id(runtime: Any) -> str | None:
    """The LangGraph thread of the running graph (``None`` without a checkpointer)."""
    info = getattr(runtime, "execution_info", None)
    if info is not None:
        thread_id = info.thread_id
    else:
        from langgraph.config import get_config

        try:
            thread_id = get_config().get("configurable", {}).get("thread_id")
        except RuntimeError:  # not inside a running graph
            return None
    return None if thread_id is None else str(thread_id)


def _answer_of(result: ModelCallResult) -> AIMessage | None:
    """The model's answer in what a model-call handler returned."""
    if isinstance(result, AIMessage):
        return result
    response = result.model_response if isinstance(result, ExtendedModelResponse) else result
    for message in reversed(response.result):
        if isinstance(message, AIMessage):
            return message
    return None
