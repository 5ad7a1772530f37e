"""Ready-made scripts: a tool-using coding agent, and fake tools to run its calls.

With these an agent loop runs end to end offline: the model (the sim, with
:func:`coding_agent_script`) asks for tools, :func:`run_tools` answers them with deterministic
outputs of realistic size, and the model finishes with a text answer.

Example:
    >>> with SimServer(script=coding_agent_script()) as sim:
    ...     client = OpenAI(base_url=sim.base_url, api_key="sk-sim")
    ...     messages = [{"role": "user", "content": "Fix the rounding bug in invoices."}]
    ...     while True:
    ...         message = client.chat.completions.create(
    ...             model="gpt-4o", messages=messages, tools=CODING_TOOLS).choices[0].message
    ...         messages.append(message.model_dump(exclude_none=True))
    ...         if not message.tool_calls:
    ...             break
    ...         for call in message.tool_calls:
    ...             messages.append({"role": "tool", "tool_call_id": call.id,
    ...                              "content": run_tools(call)})
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from typing import Any

from agentguard.sim.script import Reply, Script, ToolCall

__all__ = ["CODING_TOOLS", "coding_agent_script", "run_tools"]

CODING_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the repository and return its text.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "Repository path."}},
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the repository for a pattern; returns matching lines.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "Text or regular expression."},
                    "path": {"type": "string", "description": "Folder to search in."},
                },
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "Write a file of the repository, replacing its text.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Repository path."},
                    "content": {"type": "string", "description": "The new text of the file."},
                },
                "required": ["path", "content"],
            },
        },
    },
]
"""OpenAI tool definitions for the three tools the coding agent uses."""

_PATCH = '''"""Invoice totals."""

from decimal import ROUND_HALF_EVEN, Decimal


def compute_total(lines: list[tuple[Decimal, int]], tax_rate: Decimal) -> Decimal:
    """Sum the lines, add tax, round once at the end (not per line)."""
    subtotal = sum((price * quantity for price, quantity in lines), Decimal(0))
    return (subtotal * (1 + tax_rate)).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
'''

# The steps the agent takes, in order; longer scripts continue with _extra_step.
_STEPS: list[list[ToolCall]] = [
    [ToolCall("search", {"query": "def compute_total", "path": "src/"})],
    [
        ToolCall("read_file", {"path": "src/billing/invoice.py"}),
        ToolCall("read_file", {"path": "tests/test_invoice.py"}),
    ],
    [ToolCall("search", {"query": "quantize\\(", "path": "src/billing"})],
    [ToolCall("read_file", {"path": "src/billing/tax.py"})],
    [ToolCall("write_file", {"path": "src/billing/invoice.py", "content": _PATCH})],
]

_FINAL_ANSWER = (
    "I fixed the rounding bug in `src/billing/invoice.py`. `compute_total` rounded every line "
    "to cents before summing, so invoices with many small lines drifted by a cent or two from "
    "the tax authority's figure. It now sums the exact line amounts, applies the tax rate once "
    "and rounds the total with banker's rounding (`ROUND_HALF_EVEN`), which is what "
    "`src/billing/tax.py` already assumed. The existing tests in `tests/test_invoice.py` cover "
    "the single-line case; I would add one with 30 lines at $0.333 to pin the behaviour."
)


def coding_agent_script(steps: int = 6) -> Script:
    """A coding agent that reads, searches and writes files, then answers.

    Args:
        steps: how many model calls the task takes, the final answer included (at least 2).
            The first calls use the tools ``read_file``, ``search`` and ``write_file`` (one step
            calls two tools at once); the last answers in text.

    Returns:
        A :class:`Script`; pass ``CODING_TOOLS`` as the request's ``tools``.
    """
    if steps < 2:
        raise ValueError(f"a coding agent needs at least 2 steps, not {steps}")
    tool_steps = steps - 1
    replies: list[Reply] = []
    for step in range(tool_steps):
        if step == tool_steps - 1 and tool_steps >= 2:
            calls = _STEPS[-1]  # the edit always comes last
        elif step < len(_STEPS) - 1:
            calls = _STEPS[step]
        else:
            calls = [_extra_step(step)]
        replies.append(Reply(tool_calls=calls))
    return Script(replies, final=Reply(content=_FINAL_ANSWER))


def _extra_step(step: int) -> ToolCall:
    modules = ("ledger", "discounts", "currency", "exports", "customers", "payments")
    module = modules[step % len(modules)]
    if step % 2:
        return ToolCall("search", {"query": f"from .{module} import", "path": "src/billing"})
    return ToolCall("read_file", {"path": f"src/billing/{module}.py"})


def run_tools(tool_call: Any) -> str:
    """Run a tool call against a fake repository and return the tool's output.

    Outputs are deterministic (the same call gives the same text) and of realistic size: a file
    is a few hundred lines of plausible Python.

    Args:
        tool_call: an ``openai`` tool-call object, an OpenAI tool-call dict
            (``{"function": {"name", "arguments"}}``) or a :class:`ToolCall`.

    Returns:
        The tool's output, or an ``error: ...`` line the model can read.
    """
    name, arguments = _name_and_arguments(tool_call)
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments else {}
        except ValueError:
            return f"error: the arguments of {name} are not valid JSON"
    if not isinstance(arguments, Mapping):
        return f"error: the arguments of {name} must be a JSON object"
    if name == "read_file":
        return _fake_file(str(arguments.get("path", "README.md")))
    if name == "search":
        return _fake_search(str(arguments.get("query", "")), str(arguments.get("path", ".")))
    if name == "write_file":
        content = str(arguments.get("content", ""))
        return f"Wrote {len(content.encode())} bytes to {arguments.get('path', '?')}."
    return f"error: unknown tool {name!r}"


def _name_and_arguments(tool_call: Any) -> tuple[str, Any]:
    if isinstance(tool_call, ToolCall):
        return tool_call.name, tool_call.arguments
    if isinstance(tool_call, Mapping):
        function = tool_call.get("function", tool_call)
        return str(function.get("name", "")), function.get("arguments", "")
    function = getattr(tool_call, "function", tool_call)
    return str(getattr(function, "name", "")), getattr(function, "arguments", "")


def _rng(*parts: str) -> random.Random:
    seed = hashlib.sha256("\x00".join(parts).encode()).digest()
    return random.Random(int.from_bytes(seed[:8], "big"))


_NOUNS = (
    "invoice",
    "line",
    "customer",
    "payment",
    "discount",
    "ledger",
    "entry",
    "currency",
    "account",
    "period",
    "refund",
    "tax",
    "total",
    "report",
    "batch",
    "schedule",
)
_VERBS = (
    "compute",
    "load",
    "validate",
    "apply",
    "merge",
    "export",
    "render",
    "reconcile",
    "split",
    "normalise",
    "record",
    "fetch",
)


def _fake_file(path: str) -> str:
    rng = _rng("file", path)
    module = path.rsplit("/", 1)[-1].removesuffix(".py")
    lines = [
        f'"""{module.replace("_", " ").capitalize()}: helpers for the billing service."""',
        "",
        "from __future__ import annotations",
        "",
        "import logging",
        "from dataclasses import dataclass, field",
        "from decimal import ROUND_HALF_UP, Decimal",
        "",
        "log = logging.getLogger(__name__)",
        "",
    ]
    for _ in range(rng.randint(2, 3)):
        noun = rng.choice(_NOUNS)
        lines += [
            "",
            "@dataclass",
            f"class {noun.capitalize()}Record:",
            f'    """One {noun} as stored in the ledger."""',
            "",
            "    id: str",
            "    amount: Decimal",
            '    currency: str = "EUR"',
            "    tags: list[str] = field(default_factory=list)",
            "",
        ]
    for _ in range(rng.randint(9, 13)):
        verb, noun, other = rng.choice(_VERBS), rng.choice(_NOUNS), rng.choice(_NOUNS)
        lines += [
            "",
            f"def {verb}_{noun}({noun}s: list[{noun.capitalize()}Record], "
            f"{other}: Decimal | None = None) -> Decimal:",
            f'    """{verb.capitalize()} the {noun}s, weighting each by its {other}."""',
            "    total = Decimal(0)",
            f"    for item in {noun}s:",
            f"        weight = {other} if {other} is not None else Decimal(1)",
            '        amount = (item.amount * weight).quantize(Decimal("0.01"), '
            "rounding=ROUND_HALF_UP)",
            f'        log.debug("{verb} %s -> %s", item.id, amount)',
            "        total += amount",
            "    if total < 0:",
            f'        raise ValueError(f"negative {noun} total: {{total}}")',
            "    return total",
            "",
        ]
    return "\n".join(lines) + "\n"


def _fake_search(query: str, folder: str) -> str:
    rng = _rng("search", query, folder)
    folder = folder.rstrip("/") or "."
    hits = []
    for _ in range(rng.randint(6, 14)):
        module = rng.choice(_NOUNS)
        verb, noun = rng.choice(_VERBS), rng.choice(_NOUNS)
        line = rng.randint(12, 380)
        hits.append(
            f"{folder}/{module}.py:{line}:    {query.replace(chr(92), '')} # in {verb}_{noun}()"
        )
    hits.sort()
    return "\n".join(hits) + f"\n({len(hits)} matches)\n"
