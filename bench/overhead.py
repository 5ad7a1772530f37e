"""Per-call overhead of the guard: the raw openai SDK vs the wrapped client, interleaved, against
the simulated provider on loopback (budget on, the default durable SQLite ledger), plus the time
of ``import agentguard``.

Run: .venv/bin/python bench/overhead.py [--calls 3000]
Writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _canned import chat_completion
from _machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_up(base_url: str, timeout: float = 20.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/models", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"the sim at {base_url} did not start")


def import_time(runs: int = 7, first_use: bool = False) -> float:
    """Median seconds of ``import agentguard`` in a fresh interpreter; with ``first_use``, of
    ``import agentguard; agentguard.Guard`` (the package loads its parts on first use)."""
    samples = []
    use = "; agentguard.Guard" if first_use else ""
    for _ in range(runs):
        code = (
            "import time; t = time.perf_counter(); import agentguard" + use + "; "
            "print(time.perf_counter() - t)"
        )
        output = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        samples.append(float(output.stdout))
    return statistics.median(samples)


def in_process(
    guard: Any, batches: int = 40, size: int = 50, after_wait_calls: int = 1000
) -> dict[str, Any]:
    """The guard's own cost per call without a network: the raw SDK and the wrapped one against
    the same canned answer (``httpx.MockTransport``), alternating batches; best batch of each,
    in microseconds. Loopback timings include the provider's time, which varies by the hour;
    this does not. Then the median of single calls each made after a 3 ms pause."""
    import httpx
    import openai

    answer = chat_completion("chatcmpl-bench", "gpt-4o-mini", prompt_tokens=20)

    def canned(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=answer, headers={"content-type": "application/json"})

    def client() -> openai.OpenAI:
        transport = httpx.MockTransport(canned)
        return openai.OpenAI(
            base_url="http://provider.invalid/v1",
            api_key="sk-bench",
            max_retries=0,
            http_client=httpx.Client(transport=transport),
        )

    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in one short sentence."},
    ]
    clients = {"raw": client(), "guarded": guard.wrap(client())}
    best = {name: float("inf") for name in clients}
    with guard.session("bench-in-process", budget_key="default"):
        for _ in range(200):
            for sdk in clients.values():
                sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=16)
        for _ in range(batches):
            for name, sdk in clients.items():
                started = time.perf_counter()
                for _ in range(size):
                    sdk.chat.completions.create(
                        model="gpt-4o-mini", messages=messages, max_tokens=16
                    )
                best[name] = min(best[name], (time.perf_counter() - started) / size)
        # The same calls, each after a 3 ms pause (a network wait's length on loopback): code
        # that runs after the process slept runs slower, the raw SDK's and the guard's alike.
        after_wait: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(after_wait_calls):
            for name, sdk in clients.items():
                time.sleep(0.003)
                started = time.perf_counter()
                sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=16)
                after_wait[name].append(time.perf_counter() - started)
    raw_us, guarded_us = best["raw"] * 1e6, best["guarded"] * 1e6
    waited_raw = statistics.median(after_wait["raw"]) * 1e6
    waited_guarded = statistics.median(after_wait["guarded"]) * 1e6
    return {
        "raw_us": round(raw_us, 1),
        "guarded_us": round(guarded_us, 1),
        "overhead_us": round(guarded_us - raw_us, 1),
        "ratio": round(guarded_us / raw_us, 4),
        "after_3ms_wait_median": {
            "raw_us": round(waited_raw, 1),
            "guarded_us": round(waited_guarded, 1),
            "overhead_us": round(waited_guarded - waited_raw, 1),
            "ratio": round(waited_guarded / waited_raw, 4),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="agentguard-bench-")
    os.environ["AGENTGUARD_HOME"] = home

    import openai

    from agentguard.config import GuardConfig
    from agentguard.guard import Guard

    guard = Guard(
        GuardConfig.from_mapping(
            {
                "budgets": [{"key": "default", "limit_usd": 1_000_000, "window": "1d"}],
                "limits": {"max_iterations": None},
            },
            env={},
        )
    )
    # The same guard with no budget configured: spend is only recorded (at settlement).
    unbudgeted = Guard(
        GuardConfig.from_mapping(
            {
                "store": {"url": f"sqlite:///{home}/unbudgeted.db"},
                "limits": {"max_iterations": None},
            },
            env={},
        )
    )
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in one short sentence."},
    ]
    # The provider runs in its own process, as a real one would: in-process it would compete
    # with the client for the interpreter lock and blur what the guard itself costs.
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "agentguard.cli", "sim", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    wait_until_up(base_url)
    try:
        raw = openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
        wrapped = guard.wrap(openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0))
        recorded = unbudgeted.wrap(
            openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
        )
        clients = (("raw", raw), ("guarded", wrapped), ("guarded_no_budget", recorded))
        timings: dict[str, list[float]] = {name: [] for name, _ in clients}
        # Each guard in a session of its own (a session of one guard would carry its budget
        # into the other's calls).
        with guard.session("bench", budget_key="default"), unbudgeted.session("bench-free"):
            for _ in range(200):  # warm up every path (connections, caches, price lookups)
                for _name, client in clients:
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=messages, max_tokens=16
                    )
            for _ in range(args.calls):
                for name, client in clients:
                    started = time.perf_counter()
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=messages, max_tokens=16
                    )
                    timings[name].append(time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait(timeout=10)
    summary = {
        name: {
            "median_ms": round(statistics.median(values) * 1000, 4),
            "p99_ms": round(percentile(values, 0.99) * 1000, 4),
            "mean_ms": round(statistics.fmean(values) * 1000, 4),
        }
        for name, values in timings.items()
    }
    ratio = summary["guarded"]["median_ms"] / summary["raw"]["median_ms"]
    result = {
        "benchmark": "overhead",
        "calls_each": args.calls,
        "interleaved": True,
        "ledger": "SQLite (WAL, synchronous=NORMAL) in a temporary AGENTGUARD_HOME",
        "provider": "agentguard sim in its own process, loopback HTTP/1.1 keep-alive",
        "budget": "on (one key, 1-day fixed window)",
        "raw": summary["raw"],
        "guarded": summary["guarded"],
        "guarded_no_budget": summary["guarded_no_budget"],
        "median_ratio": round(ratio, 4),
        "median_ratio_no_budget": round(
            summary["guarded_no_budget"]["median_ms"] / summary["raw"]["median_ms"], 4
        ),
        "median_overhead_ms": round(
            summary["guarded"]["median_ms"] - summary["raw"]["median_ms"], 4
        ),
        "in_process_best_batch": in_process(guard),
        "import_agentguard_s": round(import_time(), 4),
        "import_agentguard_guard_s": round(import_time(first_use=True), 4),
        "machine": machine_info(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
