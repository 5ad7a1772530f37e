"""Token counts for the simulated provider, with a real BPE tokenizer.

Prompt tokens follow OpenAI's chat accounting: 3 tokens per message, 1 more per ``name``, 3 to
prime the reply, and the tool definitions counted by their JSON. Each message's count is cached
under a digest of its JSON, so a long conversation re-sent every step costs only its new
messages. The same digests, chained, give the prefix-cache simulation its keys.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import quicktok

from agentguard.pricing.images import image_tokens, rule_for

__all__ = ["PrefixCache", "PromptCount", "TokenCounter", "encoding_name_for"]

_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING_TOKENS = 3


def encoding_name_for(model: str) -> str:
    """The tokenizer an OpenAI model uses: ``cl100k_base`` for GPT-4 and GPT-3.5, else
    ``o200k_base`` (GPT-4o, GPT-4.1, GPT-5, the o-series, and any unknown model)."""
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith("gpt-3.5") or name == "gpt-4" or name.startswith(("gpt-4-", "gpt-4-32k")):
        return "cl100k_base"
    return "o200k_base"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _digest(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.blake2b(raw, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class PromptCount:
    """The token count of a prompt, with what the prefix cache needs.

    Attributes:
        total: the prompt's tokens (``usage.prompt_tokens``).
        prefix_keys: one key per prefix: the tools, then the tools and the first message, ...
        prefix_tokens: the tokens of each of those prefixes.
    """

    total: int
    prefix_keys: tuple[bytes, ...]
    prefix_tokens: tuple[int, ...]


class TokenCounter:
    """Counts tokens with quicktok's exact BPE tokenizers, caching per message.

    Args:
        max_cached: how many message counts to keep before the cache starts over.
    """

    def __init__(self, *, max_cached: int = 100_000) -> None:
        self._max_cached = max_cached
        self._cache: dict[tuple[str, bytes], int] = {}
        self._encodings: dict[str, quicktok.Tokenizer] = {}

    def encoding(self, model: str) -> quicktok.Tokenizer:
        """The tokenizer for a model."""
        name = encoding_name_for(model)
        encoding = self._encodings.get(name)
        if encoding is None:
            encoding = self._encodings[name] = quicktok.get_encoding(name)
        return encoding

    def count(self, text: str, model: str) -> int:
        """Tokens in a text; special-token strings count as plain text, as in a prompt."""
        encoding = self.encoding(model)
        try:
            return int(encoding.count(text))
        except ValueError:  # the text spells a special token
            return len(encoding.encode_ordinary(text))

    def truncate(self, text: str, max_tokens: int, model: str) -> tuple[str, int]:
        """Cut a text to at most ``max_tokens`` tokens.

        Returns:
            The (possibly shortened) text and its token count.
        """
        encoding = self.encoding(model)
        ids = encoding.encode_ordinary(text)
        if len(ids) <= max_tokens:
            return text, len(ids)
        head = encoding.decode_bytes(ids[: max(0, max_tokens)])
        return head.decode("utf-8", errors="ignore"), max(0, max_tokens)

    def prompt(
        self, messages: Sequence[Any], tools: Sequence[Any] | None, model: str
    ) -> PromptCount:
        """Count a chat prompt the way OpenAI bills it.

        Args:
            messages: the request's ``messages``.
            tools: the request's ``tools``, if any.
            model: the requested model (chooses the tokenizer).
        """
        encoding_name = encoding_name_for(model)
        # Images are billed by model family, so counts are cached per family too.
        namespace = f"{encoding_name}/{rule_for(model).name}"
        running = 0
        key = _digest(encoding_name)
        if tools:
            tools_json = _dumps(list(tools))
            tools_digest = _digest(tools_json)
            running = self._cached(
                encoding_name, tools_digest, lambda: self.count(tools_json, model)
            )
            key = _digest(key + tools_digest)
        keys = [key]
        prefix_tokens = [running]
        for message in messages:
            message_digest = _digest(_dumps(message))
            running += self._cached(
                namespace, message_digest, partial(self._message_tokens, message, model)
            )
            key = _digest(key + message_digest)
            keys.append(key)
            prefix_tokens.append(running)
        return PromptCount(
            total=running + _REPLY_PRIMING_TOKENS,
            prefix_keys=tuple(keys),
            prefix_tokens=tuple(prefix_tokens),
        )

    def _cached(self, encoding_name: str, digest: bytes, compute: Callable[[], int]) -> int:
        cache_key = (encoding_name, digest)
        tokens = self._cache.get(cache_key)
        if tokens is None:
            tokens = int(compute())
            if len(self._cache) >= self._max_cached:
                self._cache.clear()
            self._cache[cache_key] = tokens
        return tokens

    def _message_tokens(self, message: Any, model: str) -> int:
        if not isinstance(message, dict):
            return _TOKENS_PER_MESSAGE + self.count(_dumps(message), model)
        tokens = _TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                tokens += self.count(value, model)
            elif key == "content" and isinstance(value, list):
                tokens += self._parts_tokens(value, model)
            elif value is not None:
                tokens += self.count(_dumps(value), model)
            if key == "name":
                tokens += _TOKENS_PER_NAME
        return tokens

    def _parts_tokens(self, parts: list[Any], model: str) -> int:
        tokens = 0
        for part in parts:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                tokens += self.count(part["text"], model)
            elif isinstance(part, dict) and part.get("type") == "image_url":
                # OpenAI's formula by detail and pixel size; an image the sim cannot size
                # (an http URL) is billed as the largest its family bills.
                tokens += image_tokens(model, part.get("image_url"))
            else:
                tokens += self.count(_dumps(part), model)
        return tokens


class PrefixCache:
    """Simulates OpenAI's prompt caching.

    A prompt's ``cached_tokens`` is the token length of the longest prefix of it (tools, then
    whole messages) that an earlier request in the same partition (API key, model and
    ``prompt_cache_key``) also sent, rounded down to a multiple of ``granularity``, and zero
    below ``min_tokens``.

    Args:
        min_tokens: the shortest prefix that is cached.
        granularity: cached lengths are multiples of this.
        max_entries: how many prefixes to remember before the cache starts over.
    """

    def __init__(
        self, *, min_tokens: int = 1024, granularity: int = 128, max_entries: int = 500_000
    ) -> None:
        self.min_tokens = min_tokens
        self.granularity = granularity
        self._max_entries = max_entries
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()

    def lookup_and_store(self, partition: bytes, prompt: PromptCount) -> int:
        """The cached tokens of a prompt; remembers its prefixes for later requests."""
        keys = [_digest(partition + key) for key in prompt.prefix_keys]
        with self._lock:
            longest = -1
            for index, key in enumerate(keys):
                if key not in self._seen:
                    break
                longest = index
            if len(self._seen) + len(keys) > self._max_entries:
                self._seen.clear()
            self._seen.update(keys)
        if longest < 0:
            return 0
        cached = prompt.prefix_tokens[longest] // self.granularity * self.granularity
        return cached if cached >= self.min_tokens else 0

    def clear(self) -> None:
        """Forget every prefix."""
        with self._lock:
            self._seen.clear()
