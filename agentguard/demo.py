"""``agentguard demo``: a scripted coding agent on the simulated provider, guarded.

Runs offline with no API key: the sim serves a tool-using agent's replies on loopback, the
guard routes each step, trims the history, reserves and settles every call against a small
dollar budget with a short window, and when the budget runs out parks the session; the demo
then waits for the window to reset and resumes the agent through a registered resumer. The
same agent also runs on the sim without the guard (first, before the clock of the budget
window matters), and a closing summary compares the two runs by the sim's own bill.

Every line the demo prints fits 80 columns: one line per model call, prose wrapped at word
boundaries, the agent's answer printed whole.
"""

from __future__ import annotations

import os
import re
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from agentguard.engine import CallContext
    from agentguard.ledger import BudgetStatus

WIDTH = 80
"""Every line the demo prints fits this many columns."""

SYSTEM_PROMPT = (
    "You are a careful senior engineer working in a Python repository. Read before you edit, "
    "keep changes minimal, explain what you changed and why. "
) * 12
TASK = "Fix the rounding bug in the invoice totals (src/billing/invoice.py) and explain the fix."
TIERS = {"small": "gpt-4o-mini", "large": "gpt-4o"}
CLAUDE_TIERS = {"small": "claude-haiku-4-5", "large": "claude-sonnet-4-6"}
BUDGET_KEY = "demo"
SESSION_ID = "demo-task"
GUARDED_KEY = "sk-demo-guarded"
UNGUARDED_KEY = "sk-demo-unguarded"

# Column widths of a step line: step, model, why, in tok, out tok, cost, left, action.
_COLUMNS = (2, 11, 24, 6, 4, 7, 7, 12)
_RIGHT = {0, 3, 4, 5, 6}
_WEIGHT = re.compile(r"\(([+-]\d+(?:\.\d+)?)\)$")


@dataclass(slots=True)
class Tally:
    """Model calls and tokens of one run, added up from the usage each answer reports."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, input_tokens: int, output_tokens: int) -> None:
        self.calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens


def agent_loop(
    client: Any,
    model: str,
    messages: list[dict[str, Any]],
    max_steps: int,
    on_answer: Callable[[Any], None] | None = None,
) -> str:
    """The agent under test: a plain tool loop over ``client.chat.completions.create``.

    It knows nothing of the guard; the demo runs it through a guarded client and through a
    plain one. ``on_answer`` sees each response (the unguarded run counts its usage there).
    """
    from agentguard.sim.scripts import CODING_TOOLS, run_tools

    for _ in range(max_steps):
        response = client.chat.completions.create(
            model=model, messages=messages, tools=CODING_TOOLS, max_tokens=300
        )
        if on_answer is not None:
            on_answer(response)
        message = response.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return message.content or ""
        for call in message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": run_tools(call)})
    return ""


def responses_agent_loop(
    client: Any,
    model: str,
    items: list[dict[str, Any]],
    max_steps: int,
    on_answer: Callable[[Any], None] | None = None,
) -> str:
    """The same agent over the Responses API: the whole input re-sent each step (``items``
    grows with the model's output items and the tools' outputs)."""
    from agentguard.sim import ToolCall
    from agentguard.sim.scripts import CODING_TOOLS, run_tools

    tools = [{"type": "function", **tool["function"]} for tool in CODING_TOOLS]
    for _ in range(max_steps):
        response = client.responses.create(
            model=model,
            instructions=SYSTEM_PROMPT,
            input=items,
            tools=tools,
            max_output_tokens=300,
        )
        if on_answer is not None:
            on_answer(response)
        calls = [item for item in response.output if item.type == "function_call"]
        items.extend(item.model_dump(exclude_none=True) for item in response.output)
        if not calls:
            return str(response.output_text)
        for call in calls:
            output = run_tools(ToolCall(call.name, call.arguments))
            items.append(
                {"type": "function_call_output", "call_id": call.call_id, "output": output}
            )
    return ""


def anthropic_agent_loop(
    client: Any,
    model: str,
    messages: list[dict[str, Any]],
    max_steps: int,
    on_answer: Callable[[Any], None] | None = None,
) -> str:
    """The same agent over Anthropic's Messages API (``tool_use`` answered by ``tool_result``
    blocks)."""
    from agentguard.sim import ToolCall
    from agentguard.sim.scripts import CODING_TOOLS, run_tools

    tools = [
        {
            "name": tool["function"]["name"],
            "description": tool["function"].get("description", ""),
            "input_schema": tool["function"]["parameters"],
        }
        for tool in CODING_TOOLS
    ]
    for _ in range(max_steps):
        response = client.messages.create(
            model=model, system=SYSTEM_PROMPT, messages=messages, tools=tools, max_tokens=300
        )
        if on_answer is not None:
            on_answer(response)
        blocks = [block.model_dump(exclude_none=True) for block in response.content]
        messages.append({"role": "assistant", "content": blocks})
        uses = [block for block in response.content if block.type == "tool_use"]
        if not uses:
            return "".join(block.text for block in response.content if block.type == "text")
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": use.id,
                        "content": run_tools(ToolCall(use.name, use.input)),
                    }
                    for use in uses
                ],
            }
        )
    return ""


@dataclass(frozen=True, slots=True)
class DemoApi:
    """One wire API the demo's agent can speak.

    Attributes:
        name: ``chat``, ``responses`` or ``anthropic`` (the ``--api`` value).
        title: how the demo names it.
        tiers: the routing tiers, cheapest first.
        loop: the agent loop over that API.
        start: the conversation before the first step.
        resume_from: the conversation a parked request continues with.
        budget_usd: the default budget per window: enough for a few large-tier steps (Claude's
            input is estimated high until its reported usage recalibrates the count).
    """

    name: str
    title: str
    tiers: dict[str, str]
    loop: Callable[..., str]
    start: Callable[[], list[dict[str, Any]]]
    resume_from: Callable[[dict[str, Any]], list[dict[str, Any]]]
    budget_usd: float = 0.02

    @property
    def default_model(self) -> str:
        return self.tiers["large"]

    def client(self, base_url: str, api_key: str) -> Any:
        """The provider SDK's client for the sim at ``base_url`` (the ``/v1`` URL)."""
        if self.name == "anthropic":
            import anthropic

            return anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key=api_key)
        import openai

        return openai.OpenAI(base_url=base_url, api_key=api_key)

    @staticmethod
    def usage(response: Any) -> tuple[int, int]:
        """(input, output) tokens of one response, as the provider reported them."""
        usage = response.usage
        if hasattr(usage, "prompt_tokens"):
            return int(usage.prompt_tokens), int(usage.completion_tokens)
        cached = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
        written = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
        return int(usage.input_tokens) + cached + written, int(usage.output_tokens)


def _chat_start() -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": TASK}]


def _task_only() -> list[dict[str, Any]]:
    return [{"role": "user", "content": TASK}]


APIS: dict[str, DemoApi] = {
    "chat": DemoApi(
        "chat",
        "chat completions",
        TIERS,
        agent_loop,
        _chat_start,
        lambda request: list(request["messages"]),
    ),
    "responses": DemoApi(
        "responses",
        "the Responses API",
        TIERS,
        responses_agent_loop,
        _task_only,
        lambda request: list(request["input"]),
    ),
    "anthropic": DemoApi(
        "anthropic",
        "Anthropic's Messages API",
        CLAUDE_TIERS,
        anthropic_agent_loop,
        _task_only,
        lambda request: list(request["messages"]),
        budget_usd=0.06,
    ),
}
"""The APIs ``agentguard demo --api`` runs the agent on."""


def run_demo(
    console: Console,
    *,
    steps: int = 12,
    budget_usd: float | None = None,
    model: str | None = None,
    window_s: float = 2.0,
    api: str = "chat",
) -> int:
    """Run the demo; returns the process exit code.

    Args:
        console: where the demo prints (every line fits 80 columns).
        steps: model calls the scripted agent makes, the final answer included.
        budget_usd: the budget's dollars per window (``None``: the API's default).
        model: the model the agent asks for (the router never goes above it); ``None``:
            the API's large tier.
        window_s: the budget window's length in seconds.
        api: ``chat``, ``responses`` or ``anthropic``: the wire API the agent speaks.

    Raises:
        ValueError: ``api`` is not one of :data:`APIS`.
    """
    spoken = APIS.get(api)
    if spoken is None:
        raise ValueError(f"api {api!r}: expected one of {', '.join(APIS)}")
    with tempfile.TemporaryDirectory(prefix="agentguard-demo-") as home:
        previous = os.environ.get("AGENTGUARD_HOME")
        os.environ["AGENTGUARD_HOME"] = home
        try:
            chosen = model or spoken.default_model
            budget = spoken.budget_usd if budget_usd is None else budget_usd
            return _Demo(console, Path(home), steps, budget, chosen, window_s, spoken).run()
        finally:
            if previous is None:
                os.environ.pop("AGENTGUARD_HOME", None)
            else:
                os.environ["AGENTGUARD_HOME"] = previous


def left_usd(status: BudgetStatus) -> Decimal | None:
    """Dollars of the budget's window still free to spend, as the demo shows them.

    The demo reads the status between calls, when no call is in flight, so what the ledger
    holds beyond the spend is this process's unused lease slice: free money, not spent.
    """
    if status.limit_usd is None:
        return None
    return max(Decimal(0), status.limit_usd - status.spent_usd)


class _Demo:
    """One run of the demo: the guarded agent, its park and resume, the unguarded run, the
    summary."""

    def __init__(
        self,
        console: Console,
        home: Path,
        steps: int,
        budget_usd: float,
        model: str,
        window_s: float,
        api: DemoApi,
    ) -> None:
        self.console = console
        self.api = api
        self.home = home
        self.steps = steps
        self.budget_usd = budget_usd
        self.model = model
        self.window_s = window_s
        self.guarded = Tally()
        self.unguarded = Tally()
        self.parks = 0
        self.resumes = 0

    # -- printing -----------------------------------------------------------------------------

    def line(self, text: str = "", style: str | None = None) -> None:
        """Print one line as it is (never re-wrapped by the console)."""
        self.console.print(escape(text), style=style, highlight=False, soft_wrap=True)

    def prose(self, text: str, style: str | None = None, indent: str = "") -> None:
        """Print a paragraph wrapped at word boundaries to 80 columns."""
        for wrapped in textwrap.wrap(
            text, WIDTH, initial_indent=indent, subsequent_indent=indent, break_long_words=False
        ):
            self.line(wrapped, style)

    def row(self, cells: tuple[str, ...], style: str | None = None) -> None:
        """Print one step line, each cell cut to its column."""
        parts = []
        for index, (cell, width) in enumerate(zip(cells, _COLUMNS, strict=True)):
            text = cell if len(cell) <= width else cell[: width - 1] + "…"
            parts.append(text.rjust(width) if index in _RIGHT else text.ljust(width))
        self.line(" ".join(parts).rstrip(), style)

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> int:
        guard = self._guard()
        try:
            return self._run(guard)
        finally:
            guard.close()

    def _run(self, guard: Any) -> int:
        from agentguard.errors import LimitExceeded, SessionParked
        from agentguard.sim import GatewayKey, SimGateway, SimServer
        from agentguard.sim.scripts import coding_agent_script

        # The sim bills both runs per API key: the comparison is the provider's own bill.
        gateway = SimGateway({GUARDED_KEY: GatewayKey(), UNGUARDED_KEY: GatewayKey()})
        with SimServer(script=coding_agent_script(self.steps), gateway=gateway) as sim:
            api = self.api
            client = guard.wrap(api.client(sim.base_url, GUARDED_KEY))
            guard.observers.append(lambda call: self._on_call(guard, call))

            @guard.resumer("demo-agent")
            def resume_agent(parked: Any) -> str:
                self.resumes += 1
                self.line()
                self.line(
                    f"resumed: {parked.session_id} continues from its saved messages "
                    f"(attempt {parked.attempts + 1})",
                    "bold green",
                )
                conversation = api.resume_from(parked.request)
                return api.loop(client, parked.request["model"], conversation, self.steps * 2)

            # The same agent without the guard, for the summary. Run first: it also loads the
            # SDK's lazy modules, so the guarded run's calls land in one budget window.
            api.loop(
                api.client(sim.base_url, UNGUARDED_KEY),
                self.model,
                api.start(),
                self.steps * 2,
                on_answer=self._count_unguarded,
            )
            unguarded_bill = gateway.spent(UNGUARDED_KEY)
            guard.counter.count_text(TASK, self.model)  # loads the tokenizer before the clock runs

            self._introduce()
            messages = api.start()
            self._start_in_fresh_window()
            try:
                answer = self._run_guarded(guard, client, messages)
            except SessionParked as failed:  # parked for good: it will not resume
                self.prose(f"the session will not resume: {failed}", "bold red")
                return 1
            except LimitExceeded as stopped:
                self.line()
                self.prose(f"stopped by a limit: {stopped}", "bold red")
                return 0
            guarded_bill = gateway.spent(GUARDED_KEY)
            record = guard.parked.store.find(SESSION_ID)

        self.line()
        self.line("Answer:", "bold")
        self.prose(answer, indent="  ")
        if record is not None:
            self.line()
            self.prose(
                f"Parked record {record.session_id}: " + " -> ".join(_states(record.history)) + "."
            )
        self._summary(guarded_bill, unguarded_bill)
        return 0

    def _run_guarded(self, guard: Any, client: Any, messages: list[dict[str, Any]]) -> str:
        """The agent under the guard; when it parks, wait for the reset and resume it."""
        from agentguard.errors import SessionParked

        try:
            with guard.session(SESSION_ID, budget_key=BUDGET_KEY, resumer="demo-agent"):
                return self.api.loop(client, self.model, messages, self.steps * 2)
        except SessionParked as parked:
            pending = parked
        while True:
            self._on_park(guard, pending)
            if pending.resume_at is None:
                raise pending
            time.sleep(max(0.0, (pending.resume_at - datetime.now(UTC)).total_seconds()))
            try:
                return str(guard.parked.resume(SESSION_ID))
            except SessionParked as again:
                pending = again

    def _guard(self) -> Any:
        from agentguard.config import GuardConfig
        from agentguard.guard import Guard

        config = GuardConfig.from_mapping(
            {
                "store": {"url": f"sqlite:///{self.home / 'agentguard.db'}"},
                "limits": {"max_iterations": 40, "max_tool_calls": 60},
                "parking": {"max_attempts": 10, "dir": str(self.home / "parked")},
                "budgets": [
                    {
                        "key": BUDGET_KEY,
                        "limit_usd": self.budget_usd,
                        "window": f"{self.window_s:g}s",
                        "on_exhausted": "park",
                    }
                ],
                "routing": {"tiers": self.api.tiers},
                "trimming": {
                    "max_context_tokens": 12000,
                    "keep_last_turns": 3,
                    "tool_output_max_tokens": 800,
                },
            },
            source="agentguard demo",
            env={},
        )
        return Guard(config)

    def _introduce(self) -> None:
        self.line("agentguard demo: a scripted coding agent on the simulated provider", "bold")
        if self.api.name != "chat":
            self.prose(f"The agent speaks {self.api.title}.")
        self.prose(f"Task: {TASK}")
        self.prose(
            f"Budget '{BUDGET_KEY}': ${self.budget_usd:g} per {self.window_s:g}s window; when "
            "it runs out the session parks and resumes when the window resets."
        )
        tiers_of = self.api.tiers
        tiers = (
            f"Tiers: small = {tiers_of['small']}, large = {tiers_of['large']}; easy steps go "
            "small, the rest large."
        )
        if self.model != tiers_of["large"]:
            tiers += f" No step goes above {self.model}, the model the agent asks for."
        self.prose(tiers)
        self.line()
        self.row(("#", "model", "why", "in tok", "out", "cost", "left", "action"), "bold")

    def _start_in_fresh_window(self) -> None:
        """Wait for a new budget window if little of the current one is left.

        Windows are aligned to the clock; the agent's first calls must land in one window for
        the budget to run out (and the session to park) as the demo tells it.
        """
        now = time.time()
        left = self.window_s - now % self.window_s
        if left < self.window_s * 0.6:
            time.sleep(left)

    # -- what happens ---------------------------------------------------------------------------

    def _on_call(self, guard: Any, call: CallContext) -> None:
        usage = call.notes.get("usage")
        cost: Decimal = call.notes.get("cost_usd", Decimal(0))
        input_tokens = usage.input_tokens if usage else 0
        output_tokens = usage.output_tokens if usage else 0
        self.guarded.add(input_tokens, output_tokens)
        left = left_usd(guard.budget_status(BUDGET_KEY))
        self.row(
            (
                str(call.session.iterations),
                call.model.removeprefix("claude-"),
                _why(call),
                str(input_tokens),
                str(output_tokens),
                f"${cost:.4f}",
                "-" if left is None else f"${left:.4f}",
                _action(call.notes.get("tool_calls") or []),
            )
        )

    def _on_park(self, guard: Any, parked: Any) -> None:
        self.line()
        if parked.resume_at is None:
            return
        self.parks += 1
        status = guard.budget_status(BUDGET_KEY)
        wait = max(0.0, (parked.resume_at - datetime.now(UTC)).total_seconds())
        self.prose(
            f"parked: budget '{BUDGET_KEY}' cannot cover the next call (spent "
            f"${status.spent_usd:.4f} of ${status.limit_usd}). The session and its pending "
            f"request are saved in the store; the window resets in {wait:.1f}s. (A daemon, "
            "`agentguard daemon`, resumes parked sessions; the demo waits and resumes here.)",
            "bold yellow",
        )

    def _count_unguarded(self, response: Any) -> None:
        self.unguarded.add(*self.api.usage(response))

    def _summary(self, guarded_bill: Decimal, unguarded_bill: Decimal) -> None:
        self.line()
        self.prose(
            "The same agent and task, run on the same sim without the guard (every call to "
            f"{self.model}, the whole history re-sent). Measured, not estimated: tokens as the "
            "sim reported them, cost as the sim billed it.",
        )
        self.line()
        saved = ""
        if unguarded_bill > 0:
            saved = f"  ({(guarded_bill - unguarded_bill) / unguarded_bill:+.0%})"
        rows = (
            ("", "guarded", "unguarded"),
            ("model calls", f"{self.guarded.calls}", f"{self.unguarded.calls}"),
            ("input tokens", f"{self.guarded.input_tokens:,}", f"{self.unguarded.input_tokens:,}"),
            (
                "output tokens",
                f"{self.guarded.output_tokens:,}",
                f"{self.unguarded.output_tokens:,}",
            ),
            ("cost", f"${guarded_bill:.4f}", f"${unguarded_bill:.4f}"),
            ("parks / resumes", f"{self.parks} / {self.resumes}", "-"),
        )
        for index, (name, guarded, unguarded) in enumerate(rows):
            tail = saved if name == "cost" else ""
            self.line(
                f"  {name:<16}{guarded:>12}{unguarded:>12}{tail}", "bold" if index == 0 else None
            )


def _why(call: CallContext) -> str:
    """The router's class for the step and its strongest reason, or what trimming did."""
    route = call.notes.get("route")
    label, reason = "", ""
    if route is not None and route.classification is not None:
        classification = route.classification
        label = classification.label
        # Reasons end in their weight, "(+0.6)": show the one that pulled hardest toward the
        # class chosen (down for an easy step, up for the others).
        weighted = [
            (float(match.group(1)), text.split(" (")[0].split(": ")[0])
            for text in classification.reasons
            if (match := _WEIGHT.search(text)) is not None
        ]
        if weighted:
            pick = min if label == "easy" else max
            reason = pick(weighted)[1]
    elif route is not None and route.reasons:
        reason = route.reasons[0]
    trim = call.notes.get("trim")
    if trim is not None and (trim.elided_tool_outputs or trim.dropped_messages):
        reason = f"trimmed {trim.tokens_before / 1000:.0f}k->{trim.tokens_after / 1000:.0f}k"
    return f"{label}: {reason}" if label else reason


def _states(history: list[Any]) -> list[str]:
    """The states a parked record went through, each run of one state shown once."""
    states: list[str] = []
    for entry in history:
        if not states or states[-1] != entry.state:
            states.append(entry.state)
    return states


def _action(tools: list[str]) -> str:
    """What the model asked for: the tools it called (``read_file x2``), or ``answer``."""
    if not tools:
        return "answer"
    counted: dict[str, int] = {}
    for name in tools:
        counted[name] = counted.get(name, 0) + 1
    return ",".join(name if n == 1 else f"{name} x{n}" for name, n in counted.items())
