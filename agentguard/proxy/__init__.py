"""``agentguard proxy``: the same guard, as an HTTP front for agents that cannot be wrapped in
Python (Claude Code, Codex, any language). Needs the extra: ``pip install agentguard[proxy]``.

Clients keep their SDKs and change only the base URL; see :mod:`agentguard.proxy.app` for what
is served and how, :mod:`agentguard.proxy.replies` for the answers the proxy gives itself.
"""

from __future__ import annotations

from agentguard.proxy.app import ProxyApp
from agentguard.proxy.server import ProxyServer, serve

__all__ = ["ProxyApp", "ProxyServer", "serve"]
