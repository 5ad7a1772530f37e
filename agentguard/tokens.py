"""Offline token counting for chat requests.

Counting runs on `quicktok`, which bundles its BPE vocabularies (o200k_base, cl100k_base,
o200k_harmony, llama3, qwen3) and produces the same tokens as tiktoken, so counts are exact for
models whose tokenizer is known and nothing is downloaded, ever. A model whose tokenizer is not
known gets a conservative estimate: its text counted with o200k_base, times a per-model factor
that starts at 1.25 (1.6 for Claude) and is calibrated against the usage the provider reports
(:meth:`TokenCounter.observe`). A vocabulary that cannot be loaded never fails a call: the text
is then estimated from its UTF-8 length and the problem is logged once.

Messages are counted the way OpenAI documents its chat accounting: 3 tokens per message, plus
the tokens of each field's text, plus 1 for a ``name``; 3 more prime the reply. Per-message counts
are cached under a content hash, so re-counting a growing history only tokenizes the new
messages.

Image parts cannot be counted from the request alone (the cost depends on the image's pixel
size, which is not in the request), so each one is charged a fixed, conservative
:data:`IMAGE_TOKENS` (:data:`IMAGE_TOKENS_LOW_DETAIL` with ``detail="low"``). Some small models
(gpt-4o-mini, gpt-4.1-mini/nano, o4-mini) *bill* image tokens at a multiple of that; this module
counts what occupies the context window, and money is settled from reported usage anyway.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

__all__ = [
    "CLAUDE_ESTIMATE_FACTOR",
    "DEFAULT_ESTIMATE_FACTOR",
    "IMAGE_TOKENS",
    "IMAGE_TOKENS_LOW_DETAIL",
    "CacheInfo",
    "Calibration",
    "TokenCounter",
    "count_tokens",
    "default_counter",
    "message_digest",
]

_log = structlog.get_logger("agentguard")

TOKENS_PER_MESSAGE = 3
"""Framing tokens around every message (``<|start|>{role}<|message|>...<|end|>``)."""
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
"""Every reply is primed with ``<|start|>assistant<|message|>``."""
TOKENS_PER_TOOL_CALL = 8
"""Framing of one tool call in an assistant message (recipient, channel, call markers).
OpenAI does not document it; this errs high."""
TOOLS_FRAMING_TOKENS = 12
"""Added once when a request defines tools (the namespace the definitions are rendered into)."""
IMAGE_TOKENS = 1536
"""One image part at ``detail="high"``/``"auto"``: at least the largest tile layout (768×2048 px,
8 tiles × 170 + 85 = 1445 tokens) and the 1536-patch cap of patch-priced models."""
IMAGE_TOKENS_LOW_DETAIL = 85
DEFAULT_ESTIMATE_FACTOR = 1.25
"""Starting factor on o200k_base counts for a model whose tokenizer is not known."""

CLAUDE_ESTIMATE_FACTOR = 1.6
"""Starting factor for Claude models. Claude's tokenizer is not public; it emits more tokens
than o200k_base for the same text (about a fifth more for English prose, more for code), and
newer Claude tokenizers emit up to about a third more again. The first call errs high; reported
usage then calibrates the factor down (slowly) or up (quickly)."""
_STARTING_FACTORS: tuple[tuple[str, float], ...] = (("claude", CLAUDE_ESTIMATE_FACTOR),)
"""Model-name prefixes (normalised) whose estimate starts from their own factor."""

ESTIMATE_ENCODING = "o200k_base"
"""The encoding unknown models are estimated with."""
_BYTES_PER_TOKEN_FALLBACK = 3
"""Used only when a vocabulary cannot be loaded: English and code run at ~4 bytes a token,
CJK text at ~3, so a third of the UTF-8 length errs high."""
_FALLBACK_BASIS = "~utf8-bytes/3"

# Calibration bounds. Estimates may be raised quickly (an under-count can overflow a context
# window or a budget) and are lowered slowly, so one odd response cannot make them optimistic.
_FACTOR_MIN = 0.8
_FACTOR_MAX = 4.0
_FACTOR_RAISE_WEIGHT = 0.5
_FACTOR_LOWER_WEIGHT = 0.1
_SAFETY_MARGIN = 0.05
_OFFSET_MAX = 64
"""A known tokenizer is exact; only a small per-request framing difference may be learned."""
_OFFSET_WEIGHT = 0.3

# Model name (after normalisation) prefix -> encoding. First match wins, so longer, more
# specific prefixes come first (gpt-4o before gpt-4).
_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-oss", "o200k_harmony"),
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.", "o200k_base"),  # gpt-4.1, gpt-4.5
    ("gpt-5", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
    ("meta-llama-3", "llama3"),
    ("llama-3", "llama3"),
    ("llama3", "llama3"),
    ("qwen", "qwen3"),
    ("qwq", "qwen3"),
)
_SEPARATORS = frozenset("-._:@ ")
# Prefixes that end in a separator already, or name a family where anything may follow.
_OPEN_PREFIXES = frozenset({"gpt-4.", "qwen", "qwq"})


class _Tokenizer(Protocol):
    def count(self, text: str) -> int: ...
    def encode_ordinary(self, text: str) -> list[int]: ...
    def decode(self, tokens: list[int]) -> str: ...


@dataclass(frozen=True, slots=True)
class Calibration:
    """What a counter has learned about one model from provider-reported usage.

    Attributes:
        model: the model name as observed.
        exact: whether the model's tokenizer is known (counts are exact, not estimated).
        factor: multiplies o200k_base counts for a model whose tokenizer is not known
            (1.0 when ``exact``).
        offset: tokens added once per request for a known tokenizer (learned framing the chat
            accounting misses; 0 to :data:`_OFFSET_MAX`).
        samples: how many observations shaped it.
    """

    model: str
    exact: bool
    factor: float
    offset: int
    samples: int


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Statistics of a counter's per-message cache."""

    hits: int
    misses: int
    size: int
    maxsize: int


@dataclass(slots=True)
class _CalibrationState:
    factor: float
    offset: float = 0.0
    samples: int = 0


class _LRU:
    """A bounded mapping that forgets the least recently used entry. Not thread-safe."""

    __slots__ = ("_data", "hits", "maxsize", "misses")

    def __init__(self, maxsize: int) -> None:
        self._data: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, Any]) -> int | None:
        value = self._data.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._data.move_to_end(key)
        return value

    def put(self, key: tuple[str, Any], value: int) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()
        self.hits = 0
        self.misses = 0


_PLAIN_FIELDS = frozenset({"role", "content", "name", "tool_call_id"})


def _plain_key(message: Any) -> tuple[Any, ...] | None:
    """A cache key for the common message made of strings only: the strings themselves.

    Python hashes strings in C and compares keys by equality, so this is exact and costs far
    less than streaming the message into a digest; other messages fall back to the digest.
    """
    if type(message) is not dict or not message.keys() <= _PLAIN_FIELDS:
        return None
    role = message.get("role")
    content = message.get("content")
    name = message.get("name")
    call_id = message.get("tool_call_id")
    for value in (role, content, name, call_id):
        if value is not None and type(value) is not str:
            return None
    return ("plain", role, content, name, call_id)


def message_digest(message: Mapping[str, Any]) -> bytes:
    """A 16-byte content hash of a message (or any JSON-like value).

    Two messages have the same digest exactly when their canonical JSON is the same (keys in any
    order). The value is streamed into BLAKE2b field by field instead of being rendered as JSON
    first, because escaping large tool outputs into a JSON string costs more than hashing them.
    Stable across processes, so it may be stored.
    """
    hasher = hashlib.blake2b(digest_size=16)
    _feed(hasher, message)
    return hasher.digest()


def _feed(hasher: Any, value: Any) -> None:
    # Each value is tagged and length-prefixed, so different structures cannot collide by
    # concatenation ("ab" + "c" vs "a" + "bc").
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        hasher.update(b"s%d:" % len(data))
        hasher.update(data)
    elif isinstance(value, Mapping):
        update = hasher.update
        update(b"d%d:" % len(value))
        for key in sorted(value, key=str):
            name = str(key).encode("utf-8", "surrogatepass")
            update(b"s%d:" % len(name))
            update(name)
            item = value[key]
            if type(item) is str:
                # Inlined: most message fields are strings, and this runs on every call.
                data = item.encode("utf-8", "surrogatepass")
                update(b"s%d:" % len(data))
                update(data)
            else:
                _feed(hasher, item)
    elif isinstance(value, list | tuple):
        hasher.update(b"l%d:" % len(value))
        for item in value:
            _feed(hasher, item)
    elif value is None or isinstance(value, bool | int | float):
        hasher.update(b"v" + json.dumps(value).encode() + b";")
    elif hasattr(value, "model_dump"):
        _feed(hasher, value.model_dump(exclude_none=True))
    else:
        _feed(hasher, str(value))


def _normalise_model(model: str) -> str:
    name = model.strip().lower()
    if name.startswith("ft:"):
        # Fine-tuned models: "ft:gpt-4o-mini-2024-07-18:org:name:id" counts as its base model.
        name = name[3:].split(":", 1)[0]
    # Provider / organisation prefixes: "openai/gpt-4o", "meta-llama/llama-3.1-8b".
    return name.rsplit("/", 1)[-1]


def _encoding_for_name(name: str) -> str | None:
    for prefix, encoding in _MODEL_PREFIXES:
        if name.startswith(prefix) and (
            len(name) == len(prefix) or prefix in _OPEN_PREFIXES or name[len(prefix)] in _SEPARATORS
        ):
            return encoding
    return None


def _fallback_estimate(text: str) -> int:
    return -(-len(text.encode("utf-8", "surrogatepass")) // _BYTES_PER_TOKEN_FALLBACK)


def _as_mapping(message: Any) -> Mapping[str, Any]:
    if isinstance(message, Mapping):
        return message
    if hasattr(message, "model_dump"):
        # openai SDK response objects appended to a history as they are.
        dumped: Mapping[str, Any] = message.model_dump(exclude_none=True)
        return dumped
    raise TypeError(f"a chat message must be a mapping, got {type(message).__name__}")


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class TokenCounter:
    """Counts the tokens of chat requests, offline, with a per-message cache.

    Safe to share between threads: the cache and the calibrations are guarded by a lock, and
    tokenizing happens outside it.

    Args:
        cache_size: how many per-message counts to remember.
        default_factor: the starting factor for models whose tokenizer is not known.
    """

    def __init__(
        self, *, cache_size: int = 16384, default_factor: float = DEFAULT_ESTIMATE_FACTOR
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        if not _FACTOR_MIN <= default_factor <= _FACTOR_MAX:
            raise ValueError(
                f"default_factor must be between {_FACTOR_MIN} and {_FACTOR_MAX}, "
                f"got {default_factor}"
            )
        self._lock = threading.Lock()
        self._cache = _LRU(cache_size)
        self._default_factor = default_factor
        self._calibrations: dict[str, _CalibrationState] = {}
        self._tokenizers: dict[str, _Tokenizer | None] = {}
        self._encodings: dict[str, str | None] = {}
        # model -> (encoding counted with, exact?): asked several times on every call.
        self._bases: dict[str, tuple[str, bool]] = {}

    # -- model and encoding resolution ------------------------------------------------------

    def encoding_for(self, model: str) -> str | None:
        """The name of the model's encoding, or ``None`` when its tokenizer is not known.

        Provider prefixes (``openai/gpt-4o``), fine-tune names (``ft:gpt-4o-mini:org::id``)
        and version suffixes (``gpt-4o-2024-08-06``) are understood.
        """
        encoding = self._encodings.get(model, "")
        if encoding == "":
            encoding = _encoding_for_name(_normalise_model(model))
            self._encodings[model] = encoding
        return encoding

    def _tokenizer(self, encoding: str) -> _Tokenizer | None:
        if encoding in self._tokenizers:
            return self._tokenizers[encoding]
        with self._lock:
            if encoding in self._tokenizers:
                return self._tokenizers[encoding]
            tokenizer: _Tokenizer | None
            try:
                import quicktok

                tokenizer = quicktok.get_encoding(encoding)
            except Exception as exc:
                # Logged once per encoding: the entry below stops further attempts.
                _log.warning(
                    "token_encoding_unavailable",
                    encoding=encoding,
                    error=f"{type(exc).__name__}: {exc}",
                    fallback="estimate from UTF-8 length / 3",
                )
                tokenizer = None
            self._tokenizers[encoding] = tokenizer
            return tokenizer

    def _basis(self, model: str) -> tuple[str, bool]:
        """The encoding to count ``model`` with, and whether that count is exact for it.
        (Callers on every call read ``self._bases`` first: a lookup costs less than a call.)"""
        basis = self._bases.get(model)
        if basis is None:
            basis = self._bases[model] = self._find_basis(model)
        return basis

    def _find_basis(self, model: str) -> tuple[str, bool]:
        encoding = self.encoding_for(model)
        exact = encoding is not None
        basis = encoding if encoding is not None else ESTIMATE_ENCODING
        if self._tokenizer(basis) is None:
            return _FALLBACK_BASIS, False
        return basis, exact

    def _count_basis(self, text: str, basis: str) -> int:
        if not text:
            return 0
        tokenizer = None if basis == _FALLBACK_BASIS else self._tokenizer(basis)
        if tokenizer is None:
            return _fallback_estimate(text)
        try:
            return tokenizer.count(text)
        except Exception:
            # Lone surrogates (a JSON "\ud800" escape) are not valid UTF-8 and the tokenizer
            # refuses them; count them as a replacement character.
            try:
                return tokenizer.count(text.encode("utf-8", "replace").decode("utf-8"))
            except Exception:
                return _fallback_estimate(text)

    # -- calibration ------------------------------------------------------------------------

    def _factor(self, model: str, exact: bool) -> float:
        if exact:
            return 1.0
        state = self._calibrations.get(model)
        return self._starting_factor(model) if state is None else state.factor

    def _starting_factor(self, model: str) -> float:
        """The factor an estimated model starts from, before any usage was observed."""
        name = _normalise_model(model)
        for prefix, factor in _STARTING_FACTORS:
            if name.startswith(prefix):
                return max(factor, self._default_factor)
        return self._default_factor

    def _scale(self, raw: int, factor: float) -> int:
        return raw if factor == 1.0 else math.ceil(raw * factor)

    def calibration(self, model: str) -> Calibration:
        """What the counter currently applies to ``model``."""
        _basis, exact = self._basis(model)
        with self._lock:
            state = self._calibrations.get(model)
        if state is None:
            return Calibration(
                model=model, exact=exact, factor=self._factor(model, exact), offset=0, samples=0
            )
        return Calibration(
            model=model,
            exact=exact,
            factor=1.0 if exact else state.factor,
            offset=math.ceil(state.offset) if exact else 0,
            samples=state.samples,
        )

    def observe(self, model: str, counted: int, reported: int) -> None:
        """Learn from the usage a provider reported for a request this counter counted.

        For a model whose tokenizer is not known, the estimate factor moves toward
        ``reported / counted`` plus a safety margin of 5%: quickly when the count was too low,
        slowly when it was too high, within 0.8–4.0, so estimates stay at or above the reported
        usage on average. For a known tokenizer, only a small per-request offset (0–64 tokens)
        is learned, for framing the documented accounting misses; its counts stay exact.

        Args:
            model: the model the request went to.
            counted: what this counter returned for the request (messages, plus tools if any).
            reported: the provider's ``usage.prompt_tokens`` for it.
        """
        if counted <= 0 or reported <= 0:
            return
        _basis, exact = self._bases.get(model) or self._basis(model)
        with self._lock:
            state = self._calibrations.get(model)
            if state is None:
                state = _CalibrationState(factor=self._starting_factor(model))
                self._calibrations[model] = state
            state.samples += 1
            if exact:
                target = min(max(state.offset + (reported - counted), 0.0), float(_OFFSET_MAX))
                state.offset += _OFFSET_WEIGHT * (target - state.offset)
                return
            # `counted` was made with the current factor; the factor that would have produced
            # `reported` is factor * reported / counted.
            target = state.factor * (reported / counted) * (1.0 + _SAFETY_MARGIN)
            weight = _FACTOR_RAISE_WEIGHT if target > state.factor else _FACTOR_LOWER_WEIGHT
            state.factor += weight * (target - state.factor)
            state.factor = min(max(state.factor, _FACTOR_MIN), _FACTOR_MAX)

    # -- counting -----------------------------------------------------------------------------

    def count_text(self, text: str, model: str) -> int:
        """Tokens of a plain text for ``model`` (exact, or the calibrated estimate)."""
        basis, exact = self._basis(model)
        return self._scale(self._count_basis(text, basis), self._factor(model, exact))

    def count_message(self, message: Mapping[str, Any], model: str) -> int:
        """Tokens one chat message adds to a request, framing included.

        Counts 3 per message, the role, the content, 1 plus the name for ``name``, the
        ``tool_call_id`` of a tool message, and for each tool call its function name and
        arguments plus :data:`TOKENS_PER_TOOL_CALL`. Content may be a string, ``None`` or a list
        of parts: text and refusal parts are counted, image parts cost :data:`IMAGE_TOKENS`
        (:data:`IMAGE_TOKENS_LOW_DETAIL` at ``detail="low"``), other parts (audio, files) are
        counted as their JSON, which errs high.
        """
        return self.message_counts([message], model)[0]

    def message_counts(
        self,
        messages: Sequence[Mapping[str, Any]],
        model: str,
        *,
        digests: Sequence[bytes] | None = None,
    ) -> list[int]:
        """:meth:`count_message` for each message, sharing one cache pass.

        Args:
            messages: the messages.
            model: the model they are for.
            digests: their :func:`message_digest` values, if the caller has them already.
        """
        basis, exact = self._bases.get(model) or self._basis(model)
        # One loop per pass, no comprehensions: this runs on every call, and each
        # comprehension is a function call of its own.
        keys: list[tuple[str, Any]] = []
        if digests is not None:
            for digest in digests:
                keys.append((basis, digest))
        else:
            for message in messages:
                keys.append((basis, _plain_key(message) or message_digest(message)))
        raws: list[int | None] = []
        missing: list[int] = []
        with self._lock:
            cached = self._cache.get
            for index, key in enumerate(keys):
                raw = cached(key)
                if raw is None:
                    missing.append(index)
                raws.append(raw)
        if missing:
            computed = {
                i: self._raw_message_tokens(_as_mapping(messages[i]), basis) for i in missing
            }
            with self._lock:
                for i, raw in computed.items():
                    self._cache.put(keys[i], raw)
                    raws[i] = raw
        if exact:
            return raws  # type: ignore[return-value]  # every entry was filled above
        factor = self._factor(model, exact)
        counts: list[int] = []
        for raw in raws:
            counts.append(self._scale(raw or 0, factor))
        return counts

    def request_overhead(self, model: str) -> int:
        """Tokens a request adds beyond its messages: reply priming plus any learned offset."""
        _basis, exact = self._bases.get(model) or self._basis(model)
        if not exact:
            return self._scale(REPLY_PRIMING_TOKENS, self._factor(model, exact))
        with self._lock:
            state = self._calibrations.get(model)
        return REPLY_PRIMING_TOKENS + (math.ceil(state.offset) if state is not None else 0)

    def count_messages(self, messages: Iterable[Mapping[str, Any]], model: str) -> int:
        """Tokens of a request's messages: each message's count plus the reply priming."""
        materialised = list(messages)
        return sum(self.message_counts(materialised, model)) + self.request_overhead(model)

    def count_tools(self, tools: Sequence[Mapping[str, Any]] | None, model: str) -> int:
        """Tokens of a request's tool definitions (0 for none).

        Counts the compact JSON of the definitions plus a fixed framing. The model sees them
        rendered more tersely than JSON, so this errs high.
        """
        if not tools:
            return 0
        basis, exact = self._basis(model)
        key = (basis + "#tools", message_digest({"tools": list(tools)}))
        with self._lock:
            raw = self._cache.get(key)
        if raw is None:
            raw = self._count_basis(_text_of(list(tools)), basis) + TOOLS_FRAMING_TOKENS
            with self._lock:
                self._cache.put(key, raw)
        return self._scale(raw, self._factor(model, exact))

    def truncate_text(self, text: str, max_tokens: int, model: str) -> str:
        """The longest start of ``text`` that is at most ``max_tokens`` tokens.

        (Only the first ``32 * max_tokens`` characters are considered: no real token is longer.)

        Counted with the model's encoding (o200k_base for unknown models, without the
        estimate factor), so the result for a given text is always the same.
        """
        if max_tokens <= 0 or not text:
            return ""
        basis, _exact = self._basis(model)
        tokenizer = None if basis == _FALLBACK_BASIS else self._tokenizer(basis)
        if tokenizer is None:
            return text[: max_tokens * _BYTES_PER_TOKEN_FALLBACK]
        # Don't tokenize all of a long text: a token averages ~4 characters, so try a window of
        # 8 per token first, and 32 (more than any real token) when that was not enough.
        for chars_per_token in (8, 32):
            window = text[: max_tokens * chars_per_token]
            try:
                tokens = tokenizer.encode_ordinary(window)
            except Exception:
                window = window.encode("utf-8", "replace").decode("utf-8")
                tokens = tokenizer.encode_ordinary(window)
            if len(tokens) > max_tokens:
                head = tokenizer.decode(tokens[:max_tokens])
                # A cut inside a multi-byte character decodes to U+FFFD; drop it.
                return head.rstrip("\ufffd")
            if len(window) == len(text):
                return window
        return window

    def truncate_text_end(self, text: str, max_tokens: int, model: str) -> str:
        """The longest end of ``text`` that is at most ``max_tokens`` tokens.

        The mirror of :meth:`truncate_text` (same encoding, same determinism): only the last
        ``32 * max_tokens`` characters are considered.
        """
        if max_tokens <= 0 or not text:
            return ""
        basis, _exact = self._basis(model)
        tokenizer = None if basis == _FALLBACK_BASIS else self._tokenizer(basis)
        if tokenizer is None:
            return text[-max_tokens * _BYTES_PER_TOKEN_FALLBACK :]
        for chars_per_token in (8, 32):
            window = text[-max_tokens * chars_per_token :]
            try:
                tokens = tokenizer.encode_ordinary(window)
            except Exception:
                window = window.encode("utf-8", "replace").decode("utf-8")
                tokens = tokenizer.encode_ordinary(window)
            if len(tokens) > max_tokens:
                # The window may start inside a character or a word; the tokens kept are whole.
                return tokenizer.decode(tokens[-max_tokens:]).lstrip("\ufffd")
            if len(window) == len(text):
                return window
        return window

    def cache_info(self) -> CacheInfo:
        """Hits, misses and size of the per-message cache."""
        with self._lock:
            return CacheInfo(
                hits=self._cache.hits,
                misses=self._cache.misses,
                size=len(self._cache),
                maxsize=self._cache.maxsize,
            )

    def clear_cache(self) -> None:
        """Forget every cached count (calibrations are kept)."""
        with self._lock:
            self._cache.clear()

    # -- the chat accounting ------------------------------------------------------------------

    def _raw_message_tokens(self, message: Mapping[str, Any], basis: str) -> int:
        tokens = TOKENS_PER_MESSAGE
        for key, value in message.items():
            if value is None:
                continue
            if key == "content":
                tokens += self._content_tokens(value, basis)
            elif key == "name":
                tokens += self._count_basis(_text_of(value), basis) + TOKENS_PER_NAME
            elif key == "tool_calls":
                for call in value or ():
                    tokens += self._tool_call_tokens(call, basis)
            elif key == "function_call":
                tokens += self._tool_call_tokens({"function": value}, basis)
            elif isinstance(value, str):
                # role, tool_call_id, refusal, and any field a provider may render.
                tokens += self._count_basis(value, basis)
            elif key != "audio":
                # Unknown structured fields: their JSON, which errs high. `audio` only refers
                # to an earlier response by id.
                tokens += self._count_basis(_text_of(value), basis)
        return tokens

    def _tool_call_tokens(self, call: Any, basis: str) -> int:
        call = _as_mapping(call)
        spec = call.get("function") or call.get("custom") or {}
        if not isinstance(spec, Mapping):
            return TOKENS_PER_TOOL_CALL + self._count_basis(_text_of(spec), basis)
        arguments = spec.get("arguments", spec.get("input", ""))
        return (
            TOKENS_PER_TOOL_CALL
            + self._count_basis(_text_of(spec.get("name", "")), basis)
            + self._count_basis(_text_of(arguments), basis)
        )

    def _content_tokens(self, content: Any, basis: str) -> int:
        if isinstance(content, str):
            return self._count_basis(content, basis)
        if not isinstance(content, list | tuple):
            return self._count_basis(_text_of(content), basis)
        tokens = 0
        for part in content:
            if isinstance(part, str):
                tokens += self._count_basis(part, basis)
                continue
            if not isinstance(part, Mapping):
                tokens += self._count_basis(_text_of(part), basis)
                continue
            kind = part.get("type")
            if kind == "text":
                tokens += self._count_basis(_text_of(part.get("text")), basis)
            elif kind == "refusal":
                tokens += self._count_basis(_text_of(part.get("refusal")), basis)
            elif kind == "image_url":
                image = part.get("image_url")
                detail = image.get("detail") if isinstance(image, Mapping) else None
                tokens += IMAGE_TOKENS_LOW_DETAIL if detail == "low" else IMAGE_TOKENS
            else:
                tokens += self._count_basis(_text_of(part), basis)
        return tokens


_default: TokenCounter | None = None
_default_lock = threading.Lock()


def default_counter() -> TokenCounter:
    """The process-wide counter the module-level helpers use (created on first use)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = TokenCounter()
    return _default


def count_tokens(
    messages: Iterable[Mapping[str, Any]],
    model: str,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Tokens a chat request's messages (and tools, if given) take, counted offline.

    Exact for models whose tokenizer is known (OpenAI's gpt-3.5/4/4o/4.1/5 and o-series,
    gpt-oss, Llama 3, Qwen), a conservative calibrated estimate otherwise. Uses the process-wide
    :func:`default_counter`, so repeated calls over a growing history only tokenize new messages.

    Args:
        messages: OpenAI chat message dicts.
        model: the model name, with or without a provider prefix.
        tools: the request's tool definitions.

    Returns:
        The prompt tokens the request is expected to use.
    """
    counter = default_counter()
    return counter.count_messages(messages, model) + counter.count_tools(tools, model)
