"""The pipeline every model call passes through, written once as an I/O-free engine.

::

    call ─► limits ─► route ─► trim ─► price & reserve ─► send (retry) ─► settle ─► return

:meth:`Pipeline.run` is a generator. It yields the actions of :mod:`agentguard.engine.actions`
(``Send`` an attempt, ``Sleep``, ``Reserve``/``Settle``/``Release`` on the ledger, ``Park``...)
and receives their results through ``send()`` (or their exceptions through ``throw()``). It
returns an :class:`~agentguard.engine.actions.Outcome`. The drivers in
:mod:`agentguard.engine.drivers` only perform the actions; every decision is made here, once,
and no wire format is known here: the call's dialect (:mod:`agentguard.dialects`) reads it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from agentguard.dialects.openai_chat import OPENAI_CHAT
from agentguard.engine.actions import (
    Action,
    Confirm,
    KeepContext,
    Outcome,
    Park,
    Prepare,
    ReadBudget,
    RecallContext,
    Release,
    Reply,
    ReportHealth,
    Reserve,
    Send,
    Settle,
    Sleep,
    TransportFailure,
)
from agentguard.engine.call import CallContext, CallStage, Escalator, Fallbacks, LimitHandler
from agentguard.engine.drivers import Effects
from agentguard.engine.wire import json_object
from agentguard.errors import (
    AgentGuardError,
    BudgetExceeded,
    LimitExceeded,
    RetryLimitExceeded,
    UnmeteredRequest,
)
from agentguard.limits import Limits, tool_call_signature
from agentguard.log import logger
from agentguard.pricing import Usage
from agentguard.pricing.worst_case import settle_price
from agentguard.redact import redact_text
from agentguard.retrying import Failure, RetryPolicy, parse_retry_after

if TYPE_CHECKING:
    from agentguard.dialects.base import Answer, Dialect, StreamTap
    from agentguard.ledger import Ledger, Reservation
    from agentguard.ledger.response_contexts import ResponseContexts
    from agentguard.parking.classify import Decision, LimitVerdict
    from agentguard.pricing import Pricer
    from agentguard.session import Session
    from agentguard.tokens import TokenCounter

__all__ = ["CallContext", "CallStage", "Escalator", "LimitHandler", "Pipeline"]
# CallContext and the stage interfaces live in engine/call.py (what the stages import); they
# are named here too, the pipeline's own vocabulary.


# -- the pipeline -------------------------------------------------------------------------------


def _error_message(reply: Reply, dialect: Dialect = OPENAI_CHAT) -> str:
    # Redacted: a gateway's error may echo the key it was sent (it ends up in logs and errors).
    try:
        message = dialect.error_message(json.loads(reply.body or b""))
        if message:
            return redact_text(message[:300])
    except ValueError:
        pass
    return redact_text((reply.body or b"")[:200].decode("utf-8", "replace"))


class Pipeline:
    """The stages of the guard, composed. Built by :class:`~agentguard.Guard`.

    Args:
        limits: per-session limits.
        retry: the retry policy for transient failures.
        counter: token counter.
        pricer: prices per model.
        ledger: the budget ledger.
        stages: request rewriting stages, in order (routing, then trimming).
        limit_handler: what provider limit errors and exhausted budgets do (parking).
        default_max_output_tokens: output reserved for calls that set no ``max_tokens``.
        enforce_output_cap: set that cap on the request too, so the reservation is a real bound.
        wait_inline_max_s: a ``retry-after`` up to this long is slept and retried in-process.
        fallbacks: where a call whose model fails goes next (``None``: nowhere).
    """

    def __init__(
        self,
        *,
        limits: Limits,
        retry: RetryPolicy,
        counter: TokenCounter,
        pricer: Pricer,
        ledger: Ledger,
        stages: list[CallStage] | None = None,
        limit_handler: LimitHandler | None = None,
        default_max_output_tokens: int = 4096,
        enforce_output_cap: bool = True,
        wait_inline_max_s: float = 30.0,
        budget_policy: Callable[[str], str] | None = None,
        escalator: Escalator | None = None,
        contexts: ResponseContexts | None = None,
        observers: list[Callable[[CallContext], None]] | None = None,
        fallbacks: Fallbacks | None = None,
    ) -> None:
        self.limits = limits
        self.retry = retry
        self.counter = counter
        self.pricer = pricer
        self.ledger = ledger
        self.stages = tuple(stages or ())
        # Fixed with the stages: read on every call.
        self._reads_budget = any(getattr(stage, "reads_budget", False) for stage in self.stages)
        self._stage_plan = tuple(
            (stage, bool(getattr(stage, "nested_calls", False))) for stage in self.stages
        )
        self.limit_handler = limit_handler
        self.default_max_output_tokens = default_max_output_tokens
        self.enforce_output_cap = enforce_output_cap
        self.wait_inline_max_s = wait_inline_max_s
        self.budget_policy = budget_policy or (lambda key: "raise")
        self.escalator = escalator
        self.observers = observers if observers is not None else []
        self.fallbacks = fallbacks
        self.effects = Effects(ledger, limit_handler, contexts, fallbacks)
        """What the drivers perform the store's actions with."""

    # The engine ------------------------------------------------------------------------------

    def run(
        self, session: Session, body: dict[str, Any], dialect: Dialect = OPENAI_CHAT
    ) -> Generator[Action, Any, Outcome]:
        """Guard one model call in ``dialect``. See the module docstring for the protocol."""
        call = CallContext(
            session=session,
            body=body,
            requested_model=str(body.get("model", "")),
            dialect=dialect,
            original_body=dict(body),
            budgeted=session.budgeted(),
            debug=logger.enabled("debug"),
        )
        try:
            outcome = yield from self._run(call)
        except BaseException:
            _record_outcome(call, "parked" if call.notes.get("parked") else "failed")
            raise
        notes = call.notes
        if "route" in notes or "first_route" in notes:  # only routed calls are recorded
            _record_outcome(call, "failed" if outcome.reply.status >= 400 else "ok")
        return outcome

    def _run(self, call: CallContext) -> Generator[Action, Any, Outcome]:
        session, body, dialect = call.session, call.body, call.dialect
        if session.parked_record is not None and self.limit_handler is not None:
            raise self.limit_handler.parked_error(session.parked_record)
        # The caller's model must have a price even when routing replaces it: a misspelt model
        # would otherwise be swapped for a tier silently.
        self.pricer.price(call.requested_model)
        if call.budgeted:
            # Refused before it counts as a call or any stage (a summary) spends for it.
            dialect.refuse_unbounded(
                body,
                output_capped=self.enforce_output_cap or dialect.output_cap(body) is not None,
            )
        previous = dialect.previous_response(body)
        if previous is not None:
            yield from self._carry(call, previous)
        with session.lock:
            self.limits.before_call(session)
            session.state.iterations += 1
        if self._reads_budget:
            call.notes["remaining_fraction"] = yield ReadBudget(session.budget_lines())
        for stage, nested in self._stage_plan:
            if nested:
                yield Prepare(stage, call)
            else:
                stage.prepare(call)
        escalations = 0
        while True:
            self._measure(call)
            yield from self._reserve(call)
            sent = yield from self._send(call)
            if isinstance(sent, Outcome):
                return _homeward(call, sent) if "home" in call.notes else sent
            reply, payload = sent
            answer = call.dialect.answer(payload)
            notes = call.notes
            if (
                self.escalator is not None
                and "route" in notes  # only a routed step escalates
                and "upstream" not in notes  # on another provider's model: not escalated
                and escalations < self.retry.max_retries
            ):
                decided = call.notes.get("route")
                target = self.escalator.escalate(call, payload, answer)
                if target is not None:
                    call.notes.setdefault("first_route", decided)
                    # The cheap answer failed in a checkable way: pay for it, send it one tier up.
                    yield from self._settle(call, answer, count_step=False)
                    escalations += 1
                    call.notes["escalations"] = escalations
                    with session.lock:
                        session.state.retries += 1
                        session.state.last_outcome = "escalated"
                    call.body["model"] = target
                    continue
            yield from self._settle(call, answer)
            outcome = Outcome(reply, payload=payload)
            return _homeward(call, outcome) if "home" in call.notes else outcome

    def _carry(self, call: CallContext, previous: str) -> Generator[Action, Any, None]:
        """Add the earlier conversation a call continues to its input: the provider bills
        it again. Under a budget, a response this guard never settled is refused."""
        carried = yield RecallContext(previous)
        if carried is None and call.budgeted:
            field = "previous_response_id"
            raise UnmeteredRequest(
                f"refused before sending: {field}={previous[:60]!r} names a response this guard "
                f"did not settle, so the size of the conversation the provider bills again is "
                f"unknown and the session runs under a budget; continue only responses made "
                f"through a guard on this store, or send the conversation as input",
                endpoint=call.dialect.endpoint,
                reason=f"unknown {field}",
                field=field,
            )
        call.carried_tokens = carried or 0

    def _send(
        self, call: CallContext
    ) -> Generator[Action, Any, Outcome | tuple[Reply, dict[str, Any]]]:
        """Send with retries; an :class:`Outcome` for streams and errors handed back, else the
        reply and its parsed body."""
        retries = 0
        while True:
            # Every attempt goes out under a live hold: a retry after a charged attempt reserves
            # again, and a hold old enough that a sweep may have charged it is confirmed first.
            reservation = call.reservation
            if reservation is None:
                yield from self._reserve(call, retry=True)
            elif self.ledger.needs_confirm(reservation):
                yield from self._confirm_hold(call, reservation)
            answered: Reply | None = None
            sent_at = time.perf_counter()
            # Top-level keys are replaced, never mutated, so this compares little. Once a
            # rewritten body went out, the caller's request object carries it: every later
            # attempt is sent as written (a step escalated back to the caller's own model
            # would otherwise go out with the earlier model).
            rewritten = call.notes.get("rewritten", False) or call.body != call.original_body
            call.notes["rewritten"] = rewritten
            try:
                reply = yield Send(call.body, rewritten, call.notes.get("upstream"))
            except TransportFailure as exc:
                failure = Failure(exc.kind, message=str(exc.error))
                error: BaseException = exc.error
                if exc.sent:
                    # The request left: the provider may have billed it. The next attempt
                    # reserves its own worst case.
                    yield from self._charge_unknown(call, exc.kind)
            else:
                answered = reply
                if reply.status < 400:
                    if self.fallbacks is not None:
                        yield from self._answered(call, sent_at, reply.streaming)
                    if reply.streaming:
                        tap = _stream_tap(call)
                        return Outcome(
                            reply, tap=tap, finish=lambda tap: self._finish_stream(call, tap)
                        )
                    payload = json_object(reply.body)
                    if payload is not None:
                        return reply, payload
                    # A 200 that is not a JSON object: the provider (or a proxy) sent garbage.
                    failure = Failure(
                        "garbage", status=reply.status, message=_error_message(reply, call.dialect)
                    )
                    error = _HTTPFailure(reply, call.dialect)
                else:
                    failure = self._failure_of(reply, call.dialect)
                    error = _HTTPFailure(reply, call.dialect)
                verdict = self._classify(reply)
                if verdict is not None:
                    decision = self._decide(verdict, retries)
                    if decision.action == "wait":
                        retries += 1
                        self._count_retry(call, retries, decision.wait_s, failure)
                        yield Sleep(decision.wait_s)
                        continue
                    yield from self._release(call)
                    if decision.action in ("park", "fail"):
                        call.notes["parked"] = decision.action == "park"
                        record = yield Park(call, limit=verdict, failed=decision.action == "fail")
                        if decision.action == "park":
                            call.session.parked_record = record
                            raise self._handler().parked_error(record)
                    self._count_failure(call, error)
                    return Outcome(reply, {"x-should-retry": "false"})
            if self.fallbacks is not None:
                switched = yield from self._fall_back(call, failure, answered, retries)
                if switched:
                    retries = 0
                    continue
            if self.retry.should_retry(failure, retries):
                retries += 1
                delay = self.retry.delay(retries, failure.retry_after_s)
                self._count_retry(call, retries, delay, failure)
                yield Sleep(delay)
                continue
            yield from self._fail(call, error)
            if failure.transient:
                raise self._retries_exhausted(call, failure, error, retries)
            assert isinstance(error, _HTTPFailure)
            return Outcome(error.reply, {"x-should-retry": "false"})

    def _fall_back(
        self, call: CallContext, failure: Failure, reply: Reply | None, retries: int
    ) -> Generator[Action, Any, bool]:
        """Send a failed call to the next model of its chain, priced and reserved first:
        at once when the model is overloaded or gone, after the last retry when the failure
        was transient. ``False`` when the call stays where it is."""
        fallbacks = self.fallbacks
        assert fallbacks is not None
        at_once = fallbacks.switch_reason(reply) if reply is not None else None
        if not failure.transient and at_once is None:
            return False
        yield ReportHealth(call.model, failed=True)
        if at_once is None and self.retry.should_retry(failure, retries):
            return False
        target = fallbacks.next_model(call)
        if target is None:
            return False
        if at_once is not None:
            reason = at_once
        elif failure.kind == "status":
            reason = f"HTTP {failure.status} after {retries} retries"
        else:
            reason = f"{failure.kind} after {retries} retries"
        # An error answer was not billed: its hold goes back. A timed-out attempt was charged
        # at its worst case already and holds nothing.
        yield from self._release(call)
        fallbacks.switched(call, target, reason)
        self._measure(call)
        yield from self._reserve(call, retry=True)
        return True

    def _answered(
        self, call: CallContext, sent_at: float, streaming: bool
    ) -> Generator[Action, Any, None]:
        """Tell the fallbacks a model answered, and how fast (a stream's end is timed when it
        ends)."""
        fallbacks = self.fallbacks
        assert fallbacks is not None
        first_byte = time.perf_counter() - sent_at
        if streaming:
            call.notes["stream_timing"] = (sent_at, first_byte)
        else:
            fallbacks.observe(call.model, first_byte_s=first_byte, total_s=first_byte)
        if fallbacks.on_probation(call.model):
            yield ReportHealth(call.model, failed=False)

    # Stages ------------------------------------------------------------------------------------

    def _measure(self, call: CallContext) -> None:
        """Count the input, fix the output cap, ask for stream usage, find the price."""
        model = call.model
        dialect = call.dialect
        counted = call.notes.get("input_tokens")
        if (
            dialect is OPENAI_CHAT
            and counted is not None
            and counted[0] == model
            and counted[1] is call.body.get("messages")
        ):
            # The trimmer counted this request already (messages, framing and tools, as the
            # chat dialect counts its input).
            call.input_tokens = counted[2]
        else:
            call.input_tokens = dialect.count_input(call.body, model, self.counter)
        call.input_tokens += call.carried_tokens
        requested = dialect.output_cap(call.body)
        if requested is not None:
            call.max_output_tokens = requested
        else:
            call.max_output_tokens = self.default_max_output_tokens
            if self.enforce_output_cap:
                dialect.set_output_cap(call.body, call.max_output_tokens, model)
        if dialect.streaming(call.body) and dialect.ask_stream_usage(call.body):
            call.strip_usage_chunk = True
        bound = dialect.bound(
            call.body,
            model,
            counted_input=call.input_tokens,
            max_output_tokens=call.max_output_tokens,
            output_capped=requested is not None or self.enforce_output_cap,
            pricer=self.pricer,
            counter=self.counter,
            budgeted=call.budgeted,
        )
        call.bound = bound
        call.price = bound.price
        call.worst_case_usd = bound.usd

    def _confirm_hold(
        self, call: CallContext, reservation: Reservation
    ) -> Generator[Action, Any, None]:
        """Check in the store a hold old enough that a sweep may have charged it (the process
        stalled); reserve again if one did."""
        alive = yield Confirm(reservation)
        if not alive:
            call.reservation = None
            yield from self._reserve(call, retry=True)

    def _charge_unknown(self, call: CallContext, why: str) -> Generator[Action, Any, None]:
        """Settle a call whose outcome is unknown at its worst case (never release it)."""
        reservation = call.reservation
        call.reservation = None
        if reservation is None:
            return
        cost = reservation.amount_usd
        yield Settle(reservation, cost)
        call.session.add_spend(cost, 0, 0)
        logger.warning(
            "charged_worst_case",
            session_id=call.session.id,
            model=call.model,
            why=why,
            cost_usd=cost,
        )

    def _reserve(self, call: CallContext, *, retry: bool = False) -> Generator[Action, Any, None]:
        session = call.session
        lines = session.budget_lines()
        try:
            call.reservation = yield Reserve(lines, call.worst_case_usd, session.id)
        except BudgetExceeded as exc:
            policy = self.budget_policy(exc.key)
            crossed = "upstream" in call.notes  # the cheaper models are the caller's API's
            if policy == "downgrade" and self.escalator is not None and not crossed:
                for model in self.escalator.cheaper_models(call):
                    call.body["model"] = model
                    self._measure(call)
                    try:
                        call.reservation = yield Reserve(lines, call.worst_case_usd, session.id)
                    except BudgetExceeded:
                        continue
                    logger.info(
                        "downgrade",
                        session_id=session.id,
                        model=model,
                        requested_model=call.requested_model,
                        key=exc.key,
                        needed_usd=call.worst_case_usd,
                    )
                    return
            logger.warning(
                "limit",
                limit="budget",
                session_id=session.id,
                key=exc.key,
                spent_usd=exc.spent_usd,
                limit_usd=exc.limit_usd,
                needed_usd=exc.needed_usd,
                resets_at=exc.resets_at,
            )
            if not retry:
                with session.lock:
                    session.state.iterations -= 1  # the call was never made
            if not exc.fits_empty_window:
                raise self._cannot_fit(call, exc) from None
            if (
                policy == "park"
                and self.limit_handler is not None
                and exc.fits_empty_window
                and exc.resets_at is not None
            ):
                call.notes["parked"] = True
                record = yield Park(call, budget=exc)
                session.parked_record = record
                raise self.limit_handler.parked_error(record) from exc
            raise
        if call.debug:
            logger.debug(
                "reserve",
                session_id=session.id,
                model=call.model,
                input_tokens=call.input_tokens,
                max_output_tokens=call.max_output_tokens,
                amount_usd=call.worst_case_usd,
                keys=[line.key for line in lines],
            )

    def _cannot_fit(self, call: CallContext, exc: BudgetExceeded) -> BudgetExceeded:
        """The refusal of a call whose worst case is above the whole limit, saying what makes
        up the worst case and what to change."""
        original = call.original_body
        dialect = call.dialect
        requested = dialect.output_cap(original)
        field = dialect.cap_field
        if dialect is OPENAI_CHAT and isinstance(original.get("max_completion_tokens"), int):
            field = "max_completion_tokens"
        if requested is not None:
            cap = f"{field}={requested} set by the caller"
        else:
            cap = (
                f"limits.default_max_output_tokens = {self.default_max_output_tokens}, because"
                f" the caller set no {field}"
            )
        setting = (
            "limits.max_session_usd"
            if exc.key.startswith("session:")
            else f"the limit_usd of budget {exc.key!r}"
        )
        message = (
            f"budget {exc.key!r} exceeded for session {call.session.id!r}: the call to"
            f" {call.model!r} can cost up to ${exc.needed_usd}, more than the whole limit"
            f" (${exc.limit_usd}), so it can never fit and is not parked. The worst case is"
            f" {call.input_tokens} input tokens plus up to {call.max_output_tokens} output tokens"
            f" ({cap}). Set a lower {field} on the call (or"
            f" limits.default_max_output_tokens), send less input, use a cheaper model, or raise"
            f" {setting}."
        )
        return BudgetExceeded(
            message,
            key=exc.key,
            spent_usd=exc.spent_usd,
            limit_usd=exc.limit_usd,
            needed_usd=exc.needed_usd,
            resets_at=None,
            session_id=call.session.id,
            fits_empty_window=False,
        )

    def _handler(self) -> LimitHandler:
        assert self.limit_handler is not None
        return self.limit_handler

    def _classify(self, reply: Reply) -> LimitVerdict | None:
        if self.limit_handler is not None:
            return self.limit_handler.classify(reply)
        if reply.status != 429:
            return None
        from agentguard.parking.classify import classify_limit_error

        return classify_limit_error(reply.status, reply.headers, reply.body)

    def _decide(self, verdict: LimitVerdict, retries: int) -> Decision:
        if self.limit_handler is not None:
            return self.limit_handler.decide(verdict, retries, self.retry.max_retries)
        from agentguard.parking.classify import decide_limit

        return decide_limit(
            verdict,
            retries_done=retries,
            max_retries=self.retry.max_retries,
            wait_inline_max_s=self.wait_inline_max_s,
            parking=False,
            records=False,
        )

    def _failure_of(self, reply: Reply, dialect: Dialect) -> Failure:
        waited = parse_retry_after(reply.headers)
        kind = "rate_limit" if reply.status == 429 else "status"
        return Failure(
            kind,
            status=reply.status,
            retry_after_s=waited[0] if waited else None,
            message=_error_message(reply, dialect),
        )

    def _count_retry(self, call: CallContext, retries: int, delay: float, failure: Failure) -> None:
        with call.session.lock:
            call.session.state.retries += 1
        logger.info(
            "retry",
            session_id=call.session.id,
            model=call.model,
            retry=retries,
            max_retries=self.retry.max_retries,
            delay_s=round(delay, 3),
            failure=failure.kind,
            status=failure.status,
            message=failure.message[:200],
        )

    def _retries_exhausted(
        self, call: CallContext, failure: Failure, error: BaseException, retries: int
    ) -> RetryLimitExceeded:
        what = f"HTTP {failure.status}" if failure.status else failure.kind
        logger.warning(
            "limit", limit="max_retries", session_id=call.session.id, value=self.retry.max_retries
        )
        return RetryLimitExceeded(
            f"session {call.session.id!r}: call to {call.model!r} failed {retries + 1} times "
            f"(max_retries={self.retry.max_retries}); last failure: {what}: {failure.message}",
            last_error=error,
            session_id=call.session.id,
            limit="max_retries",
            value=self.retry.max_retries,
            observed=retries,
        )

    def _release(self, call: CallContext) -> Generator[Action, Any, None]:
        if call.reservation is not None:
            reservation = call.reservation
            call.reservation = None
            yield Release(reservation)

    def _count_failure(self, call: CallContext, error: BaseException) -> None:
        session = call.session
        with session.lock:
            session.state.consecutive_failures += 1
            session.state.last_outcome = "failed"
        self.limits.after_failure(session, error)

    def _fail(self, call: CallContext, error: BaseException) -> Generator[Action, Any, None]:
        """A call that ends in failure: give its reservation back, count it."""
        yield from self._release(call)
        self._count_failure(call, error)

    def _finish_stream(self, call: CallContext, tap: StreamTap) -> Generator[Action, Any, None]:
        timing = call.notes.get("stream_timing")
        if self.fallbacks is not None and timing is not None:
            self.fallbacks.observe(
                call.model, first_byte_s=timing[1], total_s=time.perf_counter() - timing[0]
            )
        answer = tap.answer()
        if answer.usage is None and not tap.done:
            # Cut before the end without usage: what the provider generated is unknown.
            yield from self._charge_unknown(call, "stream_cut")
            return
        yield from self._settle(call, answer)

    def _settle(
        self, call: CallContext, answer: Answer, *, count_step: bool = True
    ) -> Generator[Action, Any, None]:
        session = call.session
        usage, tool_calls, service_tier = answer.usage, answer.tool_calls, answer.service_tier
        text = answer.text
        if usage is None:
            # No usage reported: charge what we can count, never nothing.
            arguments = "".join(tool.name + tool.arguments for tool in tool_calls)
            output = self.counter.count_text(text + arguments, call.model)
            usage = Usage(
                input_tokens=call.input_tokens,
                cached_input_tokens=0,
                output_tokens=output,
                reasoning_tokens=0,
            )
            logger.warning("usage_missing", session_id=session.id, model=call.model)
        else:
            self.counter.observe(call.model, call.input_tokens, usage.input_tokens)
        price = call.price
        assert price is not None
        bound = call.bound
        if service_tier is not None or (bound is not None and bound.service_tier is not None):
            # Billed at the tier the response says it was served at.
            price = settle_price(self.pricer, call.model, service_tier, bound) or price
        cost = price.cost(usage)
        reservation = call.reservation
        call.reservation = None
        if reservation is not None:
            yield Settle(reservation, cost)
        session.add_spend(cost, usage.input_tokens, usage.output_tokens)
        if answer.response_id and call.dialect.stored_by_provider(call.body):
            # A later call continuing this response is billed all of it again as input.
            yield KeepContext(answer.response_id, usage.input_tokens + usage.output_tokens)
        if not count_step:
            return
        state = session.state
        with session.lock:
            # Written only when they change: a state field's assignment is not cheap, and this
            # runs on every call.
            if state.consecutive_failures:
                state.consecutive_failures = 0
            if state.last_outcome != "ok":
                state.last_outcome = "ok"
            if tool_calls:
                state.tool_calls += len(tool_calls)
                signatures = state.tool_signatures
                for tool in tool_calls:
                    signature = tool_call_signature(tool)
                    signatures[signature] = signatures.get(signature, 0) + 1
        call.notes["usage"] = usage
        call.notes["cost_usd"] = cost
        call.notes["tool_calls"] = [tool.name for tool in tool_calls] if tool_calls else []
        if call.debug:
            logger.debug(
                "settle",
                session_id=session.id,
                model=call.model,
                input_tokens=usage.input_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                output_tokens=usage.output_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                cost_usd=cost,
                reserved_usd=call.worst_case_usd,
                ms=round((time.perf_counter() - call.started) * 1000, 2),
            )
        if self.observers:
            for observer in list(self.observers):
                observer(call)
        try:
            self.limits.after_response(session, tool_calls)
        except LimitExceeded as exc:
            logger.warning(
                "limit",
                limit=exc.limit,
                session_id=session.id,
                value=exc.value,
                observed=exc.observed,
            )
            raise


def _record_outcome(call: CallContext, result: str) -> None:
    """Log how a routed call ended (``route_outcome``): what ``agentguard route report`` and
    ``route calibrate`` read."""
    decision = call.notes.get("first_route") or call.notes.get("route")
    if decision is None:
        return
    from agentguard.routing.outcomes import outcome_fields

    logger.info(
        "route_outcome",
        session_id=call.session.id,
        **outcome_fields(
            decision,
            final_model=call.model,
            result=result,
            escalations=call.notes.get("escalations", 0),
            fallbacks=call.notes.get("fallbacks", 0),
        ),
    )


def _stream_tap(call: CallContext) -> StreamTap:
    """The reader of a successful stream: the call's dialect's, or, for a stream of another
    provider's model, one that hands on the caller's own API's events."""
    home = call.notes.get("home")
    if home is None or "upstream" not in call.notes:
        return call.dialect.tap(strip_usage=call.strip_usage_chunk)
    from agentguard.dialects.translate_stream import translated_tap

    return translated_tap(call.dialect.name, home[0].name, call.original_body)


def _homeward(call: CallContext, outcome: Outcome) -> Outcome:
    """The outcome of a call answered by another provider's model, translated back into the
    caller's own API (an answer, or the error handed back); any other outcome as it is."""
    home = call.notes.get("home")
    if home is None or "upstream" not in call.notes or outcome.reply.body is None:
        return outcome
    from agentguard.dialects.translate import Untranslatable, translate_reply

    reply = outcome.reply
    try:
        body = translate_reply(reply.status, reply.body, call.dialect.name, home[0].name)
        status = reply.status
    except Untranslatable as exc:
        logger.warning("fallback_untranslatable", session_id=call.session.id, reason=str(exc))
        status = 502
        body = translate_reply(status, None, call.dialect.name, home[0].name)
    headers = {"content-type": "application/json", **outcome.extra_headers}
    return Outcome(Reply(status, headers, body), outcome.extra_headers, translated=True)


class _HTTPFailure(AgentGuardError):
    """An HTTP error response, kept as the last error of a call."""

    def __init__(self, reply: Reply, dialect: Dialect = OPENAI_CHAT) -> None:
        super().__init__(f"HTTP {reply.status}: {_error_message(reply, dialect)}")
        self.reply = reply
        self.status_code = reply.status
