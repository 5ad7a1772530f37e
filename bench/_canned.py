"""A canned chat completion: the answer of a provider that costs nothing to run, for measuring
what sits in front of it."""

from __future__ import annotations

import json


def chat_completion(answer_id: str, model: str, prompt_tokens: int) -> bytes:
    """A one-choice chat completion saying hello, with its usage, as JSON bytes."""
    return json.dumps(
        {
            "id": answer_id,
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello there!"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": 4,
                "total_tokens": prompt_tokens + 4,
            },
        }
    ).encode()
