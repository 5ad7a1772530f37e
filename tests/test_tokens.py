"""Token counting: exact offline counts, the chat accounting, the cache, calibration, fallbacks."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
import quicktok
from helpers import captured

from agentguard import tokens
from agentguard.tokens import (
    IMAGE_TOKENS,
    IMAGE_TOKENS_LOW_DETAIL,
    TokenCounter,
    count_tokens,
    default_counter,
    message_digest,
)

# OpenAI's cookbook example ("How to count tokens with tiktoken"): the API reported 129 prompt
# tokens for gpt-3.5-turbo / gpt-4 and 124 for gpt-4o / gpt-4o-mini.
COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


@pytest.fixture
def counter() -> TokenCounter:
    return TokenCounter()


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini-2025-04-16", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("gpt-oss-120b", "o200k_harmony"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama3"),
        ("llama-3.3-70b-versatile", "llama3"),
        ("llama3.1:8b", "llama3"),
        ("Qwen/Qwen2.5-Coder-32B-Instruct", "qwen3"),
        ("qwen3-235b-a22b", "qwen3"),
        ("openai/gpt-4o", "o200k_base"),
        ("openrouter/openai/gpt-4.1", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("GPT-4O", "o200k_base"),
        ("claude-sonnet-4", None),
        ("mistral-large-latest", None),
        ("o10-preview", None),
        ("gpt-4ox", None),
    ],
)
def test_encoding_for(counter: TokenCounter, model: str, encoding: str | None) -> None:
    assert counter.encoding_for(model) == encoding


def test_text_counts_match_tiktoken_ids(counter: TokenCounter) -> None:
    # Token ids tiktoken produces (OpenAI cookbook): the counts must be exactly these lengths.
    assert quicktok.get_encoding("cl100k_base").encode("tiktoken is great!") == [
        83,
        1609,
        5963,
        374,
        2294,
        0,
    ]
    assert quicktok.get_encoding("o200k_base").encode("tiktoken is great!") == [
        83,
        8251,
        2488,
        382,
        2212,
        0,
    ]
    assert counter.count_text("tiktoken is great!", "gpt-4") == 6
    assert counter.count_text("tiktoken is great!", "gpt-4o") == 6
    assert counter.count_text("hello world", "gpt-4o") == 2
    assert counter.count_text("", "gpt-4o") == 0


def test_special_token_text_is_counted_as_ordinary_text(counter: TokenCounter) -> None:
    # A user pasting "<|endoftext|>" is text, not a control token; counting must not fail.
    assert counter.count_text("<|endoftext|> hi", "gpt-4o") > 2


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_messages_match_openai_reported_usage(
    counter: TokenCounter, model: str, expected: int
) -> None:
    assert counter.count_messages(COOKBOOK_MESSAGES, model) == expected


def test_message_accounting(counter: TokenCounter) -> None:
    text = counter.count_text
    plain = {"role": "user", "content": "Summarise the report."}
    assert counter.count_message(plain, "gpt-4o") == 3 + text("user", "gpt-4o") + text(
        "Summarise the report.", "gpt-4o"
    )
    named = {**plain, "name": "alice"}
    assert (
        counter.count_message(named, "gpt-4o")
        == counter.count_message(plain, "gpt-4o") + text("alice", "gpt-4o") + 1
    )
    empty = {"role": "assistant", "content": None}
    assert counter.count_message(empty, "gpt-4o") == 3 + text("assistant", "gpt-4o")


def test_content_parts(counter: TokenCounter) -> None:
    as_string = {"role": "user", "content": "What is in this picture?"}
    as_parts = {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}]}
    assert counter.count_message(as_parts, "gpt-4o") == counter.count_message(as_string, "gpt-4o")

    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    low = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
    with_image = {"role": "user", "content": [*as_parts["content"], image]}
    with_low = {"role": "user", "content": [*as_parts["content"], low]}
    base = counter.count_message(as_parts, "gpt-4o")
    assert counter.count_message(with_image, "gpt-4o") == base + IMAGE_TOKENS
    assert counter.count_message(with_low, "gpt-4o") == base + IMAGE_TOKENS_LOW_DETAIL


def test_tool_calls_and_results_are_counted(counter: TokenCounter) -> None:
    def call(arguments: str) -> dict[str, Any]:
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": arguments},
                }
            ],
        }

    short = counter.count_message(call('{"path": "a.py"}'), "gpt-4o")
    long = counter.count_message(call('{"path": "a/much/longer/path/to/some/module.py"}'), "gpt-4o")
    bare = counter.count_message({"role": "assistant", "content": None}, "gpt-4o")
    assert bare + counter.count_text("read_file", "gpt-4o") < short < long

    result = {"role": "tool", "tool_call_id": "call_1", "content": "print('hi')"}
    without_id = counter.count_message({"role": "tool", "content": "print('hi')"}, "gpt-4o")
    assert counter.count_message(result, "gpt-4o") == without_id + counter.count_text(
        "call_1", "gpt-4o"
    )


def test_tools_are_counted_conservatively(counter: TokenCounter) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string", "description": "City"}},
                "required": ["location"],
            },
        },
    }
    assert counter.count_tools(None, "gpt-4o") == 0
    assert counter.count_tools([], "gpt-4o") == 0
    one = counter.count_tools([tool], "gpt-4o")
    # OpenAI reports ~60-80 tokens for a definition like this one; the JSON count errs high.
    assert one >= 60
    assert counter.count_tools([tool, tool], "gpt-4o") > one
    assert count_tokens([{"role": "user", "content": "hi"}], "gpt-4o", tools=[tool]) == (
        counter.count_messages([{"role": "user", "content": "hi"}], "gpt-4o") + one
    )


def test_message_digest_is_canonical() -> None:
    a = {"role": "user", "content": "hi", "name": "x"}
    b = {"name": "x", "content": "hi", "role": "user"}
    assert message_digest(a) == message_digest(b)
    assert message_digest(a) != message_digest({**a, "content": "hi "})
    # Structure is part of the hash: a split string is not the same message.
    assert message_digest({"content": ["ab", "c"]}) != message_digest({"content": ["a", "bc"]})
    assert message_digest({"content": None}) != message_digest({"content": "null"})
    assert len(message_digest(a)) == 16


def test_cache_makes_a_growing_history_cost_only_the_new_message() -> None:
    counter = TokenCounter()
    history = [{"role": "user", "content": f"message number {i} " * 20} for i in range(200)]
    first = counter.count_messages(history, "gpt-4o")
    info = counter.cache_info()
    assert (info.hits, info.misses) == (0, 200)

    history.append({"role": "assistant", "content": "one more"})
    second = counter.count_messages(history, "gpt-4o")
    info = counter.cache_info()
    assert (info.hits, info.misses) == (200, 201)
    assert second == first + counter.count_message(history[-1], "gpt-4o")

    # The cache is per encoding: gpt-4o-mini shares gpt-4o's counts, gpt-4 does not.
    counter.count_messages(history, "gpt-4o-mini")
    assert counter.cache_info().misses == 201
    counter.count_messages(history, "gpt-4")
    assert counter.cache_info().misses == 402


def test_cache_is_bounded() -> None:
    counter = TokenCounter(cache_size=8)
    for i in range(50):
        counter.count_message({"role": "user", "content": str(i)}, "gpt-4o")
    assert counter.cache_info().size == 8
    counter.clear_cache()
    assert counter.cache_info().size == 0


def test_unknown_model_is_estimated_high(counter: TokenCounter) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 40
    exact = counter.count_text(text, "gpt-4o")
    assert counter.count_text(text, "some-private-model") == math.ceil(exact * 1.25)
    calibration = counter.calibration("some-private-model")
    assert (calibration.exact, calibration.factor, calibration.samples) == (False, 1.25, 0)
    message = {"role": "user", "content": text}
    assert counter.count_message(message, "some-private-model") == math.ceil(
        counter.count_message(message, "gpt-4o") * 1.25
    )


def test_calibration_tracks_reported_usage_and_stays_high() -> None:
    counter = TokenCounter()
    model = "acme-large"
    messages = [{"role": "user", "content": "word " * 400}]
    true_ratio = 1.6  # the provider's tokenizer needs 1.6x what o200k_base does
    base = counter.count_messages(messages, "gpt-4o")
    under = 0
    for _ in range(30):
        counted = counter.count_messages(messages, model)
        reported = round(base * true_ratio)
        under += counted < reported
        counter.observe(model, counted, reported)
    final = counter.count_messages(messages, model)
    assert final >= base * true_ratio  # settled at or above the truth ...
    assert final <= base * true_ratio * 1.12  # ... by about the safety margin
    assert under <= 3  # under-counts are corrected fast

    # A cheaper tokenizer lowers the factor, slowly and not below the floor.
    for _ in range(200):
        counter.observe(model, counter.count_messages(messages, model), round(base * 0.5))
    assert counter.calibration(model).factor == pytest.approx(0.8)


def test_calibration_ignores_nonsense() -> None:
    counter = TokenCounter()
    counter.observe("acme", 0, 100)
    counter.observe("acme", 100, 0)
    assert counter.calibration("acme").samples == 0
    for _ in range(50):
        counter.observe("acme", 10, 10_000)
    assert counter.calibration("acme").factor == 4.0


def test_known_tokenizer_learns_only_a_small_offset() -> None:
    counter = TokenCounter()
    messages = [{"role": "user", "content": "hello there"}]
    counted = counter.count_messages(messages, "gpt-4o")
    for _ in range(20):
        counter.observe("gpt-4o", counter.count_messages(messages, "gpt-4o"), counted + 7)
    calibration = counter.calibration("gpt-4o")
    assert calibration.exact and calibration.factor == 1.0
    assert calibration.offset == 7
    assert counter.count_messages(messages, "gpt-4o") == counted + 7
    assert counter.count_text("hello there", "gpt-4o") == 2  # text counts stay exact

    for _ in range(50):
        counter.observe("gpt-4o", counter.count_messages(messages, "gpt-4o"), counted + 10_000)
    assert counter.calibration("gpt-4o").offset == 64


def test_broken_encoding_falls_back_and_logs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    real = quicktok.get_encoding

    def broken(name: str, data_dir: str = "") -> Any:
        if name == "qwen3":
            raise RuntimeError("vocabulary file is corrupt")
        return real(name, data_dir)

    monkeypatch.setattr(quicktok, "get_encoding", broken)
    counter = TokenCounter()
    text = "x" * 300
    with captured() as logs:
        assert counter.count_text(text, "qwen3-32b") >= 100
        assert counter.count_messages([{"role": "user", "content": text}], "qwen3-32b") > 100
        assert counter.truncate_text(text, 10, "qwen3-32b") == "x" * 30
    events = [log for log in logs if log["event"] == "token_encoding_unavailable"]
    assert len(events) == 1
    assert events[0]["encoding"] == "qwen3"
    assert counter.count_text("hello world", "gpt-4o") == 2  # other encodings unaffected


def test_lone_surrogates_do_not_fail(counter: TokenCounter) -> None:
    message = {"role": "tool", "tool_call_id": "c", "content": "broken \ud800 text"}
    assert counter.count_message(message, "gpt-4o") > 3
    assert counter.truncate_text("ab\ud800cd" * 10, 3, "gpt-4o")


def test_truncate_text(counter: TokenCounter) -> None:
    text = "line of source code\n" * 500
    head = counter.truncate_text(text, 50, "gpt-4o")
    assert text.startswith(head)
    assert 40 <= counter.count_text(head, "gpt-4o") <= 50
    assert counter.truncate_text("short", 50, "gpt-4o") == "short"
    assert counter.truncate_text(text, 0, "gpt-4o") == ""
    assert counter.truncate_text("日本語のテキスト" * 20, 5, "gpt-4o").isprintable()


def test_truncate_text_end(counter: TokenCounter) -> None:
    text = "".join(f"line {n} of source code\n" for n in range(500))
    tail = counter.truncate_text_end(text, 50, "gpt-4o")
    assert text.endswith(tail)
    assert 40 <= counter.count_text(tail, "gpt-4o") <= 50
    assert counter.truncate_text_end("short", 50, "gpt-4o") == "short"
    assert counter.truncate_text_end(text, 0, "gpt-4o") == ""
    assert counter.truncate_text_end("日本語のテキスト" * 20, 5, "gpt-4o").isprintable()
    # Unknown models: the same basis, the same text every time.
    assert counter.truncate_text_end(text, 50, "acme-1") == tail


def test_sdk_message_objects_are_counted_like_dicts(counter: TokenCounter) -> None:
    from openai.types.chat import ChatCompletionMessage

    message = ChatCompletionMessage(role="assistant", content="Done.")
    as_dict = {"role": "assistant", "content": "Done."}
    as_object: Any = message
    assert counter.count_message(as_object, "gpt-4o") == counter.count_message(as_dict, "gpt-4o")


def test_thread_safety() -> None:
    counter = TokenCounter(cache_size=64)
    histories = [
        [{"role": "user", "content": f"thread {t} message {i} " * 10} for i in range(100)]
        for t in range(8)
    ]
    expected = [TokenCounter().count_messages(history, "gpt-4o") for history in histories]
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def work(number: int) -> None:
        try:
            results[number] = [
                counter.count_messages(histories[number], "gpt-4o") for _ in range(20)
            ]
            counter.observe("acme", 100, 120)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for number, counts in results.items():
        assert set(counts) == {expected[number]}
    assert counter.calibration("acme").samples == 8
    assert counter.cache_info().size <= 64


def test_module_helpers() -> None:
    assert default_counter() is default_counter()
    assert isinstance(default_counter(), TokenCounter)
    assert count_tokens(COOKBOOK_MESSAGES, "gpt-4o") == 124
    assert count_tokens(iter(COOKBOOK_MESSAGES), "gpt-4") == 129
    assert set(tokens.__all__) >= {"TokenCounter", "count_tokens", "default_counter"}


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        TokenCounter(cache_size=0)
    with pytest.raises(ValueError, match="default_factor"):
        TokenCounter(default_factor=10)
    with pytest.raises(TypeError, match="mapping"):
        TokenCounter().count_message("not a message", "gpt-4o")  # type: ignore[arg-type]
