"""What ``agentguard proxy`` adds per call: the simulated provider called directly vs through the
proxy (budget on, SQLite ledger), interleaved in one run, with 1 and 8 concurrent clients,
non-streamed chat completions.

The provider, the proxy and the load generator each run in a process of their own, as they
would in use. The load generator is a lean ``aiohttp`` client (no SDK), so that what is
measured is the proxy's hop, not a client's own cost. Rounds alternate direct and proxied
batches, so a load spike of the (shared) machine falls on both.

Run: .venv/bin/python bench/proxy.py [--calls 1500] [--rounds 6]
Writes bench/results/proxy.json.
"""

from __future__ import annotations

import argparse
import asyncio
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

from _machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in one short sentence."},
        ],
        "max_tokens": 16,
    }
).encode()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def serve_proxy(port: int, sim_url: str, home: str) -> None:
    """The proxy process: a budget on its key, no per-session iteration limit."""
    from agentguard.config import GuardConfig
    from agentguard.guard import Guard
    from agentguard.proxy import serve

    os.environ["AGENTGUARD_HOME"] = home
    guard = Guard(
        GuardConfig.from_mapping(
            {
                "budgets": [{"key": "bench", "limit_usd": 1_000_000, "window": "1d"}],
                "limits": {"max_iterations": None},
                "proxy": {
                    "openai_base_url": sim_url,
                    "anthropic_base_url": sim_url.removesuffix("/v1"),
                    "budget_key": "bench",
                },
            },
            env={},
        )
    )
    try:
        serve(guard, "127.0.0.1", port)
    finally:
        guard.close()


async def batch(url: str, clients: int, calls_each: int) -> tuple[list[float], float]:
    """``clients`` concurrent clients making ``calls_each`` calls; (per-call seconds, wall)."""
    import aiohttp

    timings: list[float] = []

    async def client(session: aiohttp.ClientSession, index: int, calls: int) -> None:
        headers = {
            "content-type": "application/json",
            "authorization": "Bearer sk-bench",
            "x-agentguard-session": f"bench-{index}",
        }
        for _ in range(calls):
            started = time.perf_counter()
            async with session.post(url, data=BODY, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status} from {url}")
            timings.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, i, 5) for i in range(clients)))  # connect, warm
        timings.clear()
        started = time.perf_counter()
        await asyncio.gather(*(client(session, i, calls_each) for i in range(clients)))
        wall = time.perf_counter() - started
    return timings, wall


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(timings: list[float], calls: int, wall: float) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(timings) * 1000, 4),
        "p99_ms": round(percentile(timings, 0.99) * 1000, 4),
        "throughput_rps": round(calls / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1500, help="calls per client setting")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--serve-proxy", nargs=3, metavar=("PORT", "SIM_URL", "HOME"))
    args = parser.parse_args()
    if args.serve_proxy:
        port, sim_url, home = args.serve_proxy
        serve_proxy(int(port), sim_url, home)
        return
    home = tempfile.mkdtemp(prefix="agentguard-bench-")
    environment = {**os.environ, "AGENTGUARD_HOME": home}
    sim_port, proxy_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}/v1"
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "agentguard.cli", "sim", "--port", str(sim_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=environment,
        ),
        subprocess.Popen(
            [sys.executable, __file__, "--serve-proxy", str(proxy_port), sim_url, home],
            env=environment,
        ),
    ]
    targets = {
        "direct": f"{sim_url}/chat/completions",
        "proxy": f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
    }
    results: dict[str, Any] = {}
    try:
        wait_until_up(f"{sim_url}/models")
        wait_until_up(f"http://127.0.0.1:{proxy_port}/healthz")
        for clients in (1, 8):
            per_round = max(args.calls // args.rounds // clients, 1)
            timings: dict[str, list[float]] = {name: [] for name in targets}
            walls: dict[str, float] = dict.fromkeys(targets, 0.0)
            proxy_cpu = sim_cpu = 0.0
            for _ in range(args.rounds):
                for name, url in targets.items():
                    cpu_before = cpu_seconds(processes[1].pid)
                    sim_before = cpu_seconds(processes[0].pid)
                    batch_timings, wall = asyncio.run(batch(url, clients, per_round))
                    if name == "proxy":
                        proxy_cpu += cpu_seconds(processes[1].pid) - cpu_before
                    else:
                        sim_cpu += cpu_seconds(processes[0].pid) - sim_before
                    timings[name] += batch_timings
                    walls[name] += wall
            calls = per_round * clients * args.rounds
            direct = summary(timings["direct"], calls, walls["direct"])
            proxied = summary(timings["proxy"], calls, walls["proxy"])
            results[f"clients_{clients}"] = {
                "calls_each": calls,
                "direct": direct,
                "proxy": proxied,
                "added_median_ms": round(proxied["median_ms"] - direct["median_ms"], 4),
                "added_p99_ms": round(proxied["p99_ms"] - direct["p99_ms"], 4),
                # The proxy's own CPU time (user + system) over every call it served, the
                # warm-up calls (5 per client and batch) included.
                "proxy_cpu_ms_per_call": round(
                    proxy_cpu / (calls + 5 * clients * args.rounds) * 1000, 4
                ),
                # The simulated provider's, in the direct batches: the same machine pays it.
                "sim_cpu_ms_per_call": round(
                    sim_cpu / (calls + 5 * clients * args.rounds) * 1000, 4
                ),
            }
            print(f"{clients} client(s): {json.dumps(results[f'clients_{clients}'])}", flush=True)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    result = {
        "benchmark": "proxy",
        "interleaved": True,
        "stream": False,
        "provider": "agentguard sim in its own process, loopback HTTP/1.1 keep-alive",
        "proxy": "agentguard proxy in its own process (uvicorn + httptools + uvloop, its own "
        "HTTP/1.1 upstream client), budget on (one key, 1-day window), SQLite ledger, a session "
        "per client",
        "load": "aiohttp clients in one process, one keep-alive connection each",
        **results,
        "machine": machine_info(),
        "machine_note": "shared 2-CPU machine, other work running during the measurement",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "proxy.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
