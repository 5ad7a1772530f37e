"""A simulated model provider on loopback, for the demo, the tests and benchmarks.

It answers ``/v1/chat/completions`` and OpenAI's Responses API ``/v1/responses`` in OpenAI's
shapes, and Anthropic's Messages API ``/v1/messages`` (and ``/v1/messages/count_tokens``) in
Anthropic's, plain and streamed, with usage counted by a real BPE tokenizer, scripted
multi-step agents (tool calls included), injected failures (5xx, timeouts, garbage, cut streams,
429s with reset headers) and, as a budget gateway, dollar limits per API key and window.

Example:
    >>> from openai import OpenAI
    >>> from agentguard.sim import Reply, SimServer, ToolCall
    >>> script = [Reply(tool_calls=[ToolCall("search", {"query": "budget"})]), "Done."]
    >>> with SimServer(script=script) as sim:
    ...     client = OpenAI(base_url=sim.base_url, api_key="sk-test")
    ...     answer = client.chat.completions.create(
    ...         model="gpt-4o", messages=[{"role": "user", "content": "Find the budget."}])
"""

from agentguard.sim.faults import CutStream, Fault, Garbage, HTTPError, Timeout
from agentguard.sim.gateway import GatewayKey, GatewayStyle, SimGateway
from agentguard.sim.payloads import format_reset_duration
from agentguard.sim.script import ModelError, Reply, ReplyFn, Script, ToolCall
from agentguard.sim.server import RecordedRequest, SimServer, serve

__all__ = [
    "CutStream",
    "Fault",
    "Garbage",
    "GatewayKey",
    "GatewayStyle",
    "HTTPError",
    "ModelError",
    "RecordedRequest",
    "Reply",
    "ReplyFn",
    "Script",
    "SimGateway",
    "SimServer",
    "Timeout",
    "ToolCall",
    "format_reset_duration",
    "serve",
]
