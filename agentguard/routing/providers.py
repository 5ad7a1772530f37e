"""Where another provider's models are served: the upstreams a fallback chain may cross to
(``[routing.providers.*]``), and which provider a wire API belongs to."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentguard.errors import ConfigError

if TYPE_CHECKING:
    from agentguard.config import ProviderConfig

__all__ = ["PROVIDER_DIALECTS", "Upstream", "provider_of_dialect", "upstreams_from"]

PROVIDER_DIALECTS = {"openai": "openai_chat", "anthropic": "anthropic_messages"}
"""The API a provider's models are called through when a chain crosses to them."""

_DEFAULTS = {
    "openai": ("https://api.openai.com/v1", "/chat/completions", "OPENAI_API_KEY"),
    "anthropic": ("https://api.anthropic.com", "/v1/messages", "ANTHROPIC_API_KEY"),
}
_ANTHROPIC_VERSION = "2023-06-01"


def provider_of_dialect(dialect: str) -> str:
    """The provider whose API ``dialect`` is (``openai`` or ``anthropic``)."""
    return "anthropic" if dialect.startswith("anthropic") else "openai"


@dataclass(frozen=True, slots=True)
class Upstream:
    """One provider's API, as a crossing fallback sends to it. Holds the *name* of the
    variable with the key, never the key: it is read when a request is sent.

    Attributes:
        provider: ``openai`` or ``anthropic``.
        dialect: the wire API requests are translated into.
        url: the endpoint requests are sent to.
        api_key_env: the environment variable holding the key.
    """

    provider: str
    dialect: str
    url: str
    api_key_env: str

    def headers(self, environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
        """The request headers with the key read from the environment, or ``None`` when
        the variable is not set."""
        key = (environ if environ is not None else os.environ).get(self.api_key_env)
        if not key:
            return None
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if self.provider == "anthropic":
            headers["x-api-key"] = key
            headers["anthropic-version"] = _ANTHROPIC_VERSION
        else:
            headers["authorization"] = f"Bearer {key}"
        return headers


def upstreams_from(
    providers: Mapping[Any, ProviderConfig], environ: Mapping[str, str] | None = None
) -> dict[str, Upstream]:
    """The configured upstreams by provider.

    Raises:
        ConfigError: a provider's ``api_key_env`` names a variable that is not set.
    """
    environ = environ if environ is not None else os.environ
    upstreams = {}
    for provider, config in providers.items():
        base_url, path, key_env = _DEFAULTS[provider]
        base = (config.base_url or base_url).rstrip("/")
        upstream = Upstream(
            provider, PROVIDER_DIALECTS[provider], base + path, config.api_key_env or key_env
        )
        if not environ.get(upstream.api_key_env):
            field = f"routing.providers.{provider}.api_key_env"
            raise ConfigError(
                f"{field}: the environment variable {upstream.api_key_env} is not set, so "
                f"{provider}'s models cannot be called for a fallback; set it to the key",
                field=field,
                expected="the name of a set environment variable holding the key",
            )
        upstreams[provider] = upstream
    return upstreams
