"""What ``agentguard proxy`` adds per call, next to what a LiteLLM proxy adds: the simulated
provider called directly, through ``agentguard proxy`` (budget on, SQLite ledger) and through
LiteLLM's proxy (no budget), interleaved in one run, with 1 and 8 concurrent clients,
non-streamed and streamed chat completions.

The provider, each proxy and the load generator run in processes of their own, as they would
in use. The load generator is a lean ``aiohttp`` client (no SDK), so that what is measured is
each proxy's hop, not a client's own cost; a call is timed to its last byte. Rounds alternate
the targets, so a load spike of the (shared) machine falls on all of them.

LiteLLM is not a dependency of agentguard: install it into an environment of its own
(``python3.11 -m venv .venv-litellm && .venv-litellm/bin/pip install 'litellm[proxy]'``) and
name its ``litellm`` command with ``--litellm`` or ``AGENTGUARD_BENCH_LITELLM`` (default:
``.venv-litellm/bin/litellm`` in the repository). Without it the run says so and measures the
other two.

Run: .venv/bin/python bench/proxy.py [--calls 1200] [--litellm-calls 240] [--rounds 4]
     [--litellm PATH | --no-litellm] [--upstream sim|fast]
Writes bench/results/proxy.json (``--upstream fast``: proxy_fast_upstream.json). The simulated
provider is a thread-per-connection server that spends ~0.3-0.6 ms of CPU per call on this
2-core machine; ``--upstream fast`` answers a canned completion for a fraction of that, so the
proxy's own throughput shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "gpt-4o-mini"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in one short sentence."},
]
BODIES = {
    False: json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 16}).encode(),
    True: json.dumps(
        {
            "model": MODEL,
            "messages": MESSAGES,
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode(),
}
BODY = BODIES[False]
"""The non-streamed request (kept for other scripts that import this one)."""


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


FAST_ANSWER = chat_completion("chatcmpl-fast", MODEL, prompt_tokens=24)
FAST_STREAM = (
    b"".join(
        b"data: " + json.dumps(chunk).encode() + b"\n\n"
        for chunk in (
            {
                "id": "chatcmpl-fast",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": MODEL,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}}],
            },
            {
                "id": "chatcmpl-fast",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": MODEL,
                "choices": [{"index": 0, "delta": {"content": " there!"}, "finish_reason": "stop"}],
            },
            {
                "id": "chatcmpl-fast",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": MODEL,
                "choices": [],
                "usage": {"prompt_tokens": 24, "completion_tokens": 4, "total_tokens": 28},
            },
        )
    )
    + b"data: [DONE]\n\n"
)


def serve_fast_upstream(port: int) -> None:
    """A canned provider on asyncio and httptools: one fixed chat completion (streamed when
    asked), its usage reported, keep-alive; so that the upstream's own cost does not hide the
    proxy's."""
    import httptools
    import uvloop

    class Answering(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.body: list[bytes] = []
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            stream = b'"stream":true' in b"".join(self.body).replace(b" ", b"")
            self.body.clear()
            if stream:
                head = b"content-type: text/event-stream\r\n"
                payload = FAST_STREAM
            else:
                head = b"content-type: application/json\r\n"
                payload = FAST_ANSWER
            self.transport.write(
                b"HTTP/1.1 200 OK\r\n"
                + head
                + b"content-length: %d\r\n\r\n" % len(payload)
                + payload
            )

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Answering, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def litellm_command(named: str | None) -> Path | None:
    """The ``litellm`` command to run, or ``None`` when it is not installed."""
    candidate = named or os.environ.get("AGENTGUARD_BENCH_LITELLM")
    path = Path(candidate) if candidate else ROOT / ".venv-litellm" / "bin" / "litellm"
    if path.is_dir():
        path = path / "bin" / "litellm"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def start_litellm(
    command: Path, port: int, sim_url: str, work: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """LiteLLM's proxy in front of the sim, one worker, no budget, no database; (process,
    the master key its clients send)."""
    master_key = "sk-" + secrets.token_hex(32)
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {sim_url}\n"
        "      api_key: sk-bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    environment = {
        **os.environ,
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download at start
        "LITELLM_LOG": "ERROR",
    }
    arguments = ["--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        [str(command), *arguments, "--num_workers", "1"],
        stdout=(work / "litellm.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=environment,
        cwd=work,
    )
    return process, master_key


async def batch(
    url: str, clients: int, calls_each: int, *, stream: bool = False, key: str = "sk-bench"
) -> tuple[list[float], float]:
    """``clients`` concurrent clients making ``calls_each`` calls; (per-call seconds, wall)."""
    import aiohttp

    timings: list[float] = []
    body = BODIES[stream]

    async def client(session: aiohttp.ClientSession, index: int, calls: int) -> None:
        headers = {
            "content-type": "application/json",
            "authorization": f"Bearer {key}",
            "x-agentguard-session": f"bench-{index}",
        }
        for _ in range(calls):
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status} from {url}: {answer[:200]!r}")
            timings.append(time.perf_counter() - started)
            if stream and b"[DONE]" not in answer:
                raise RuntimeError(f"a stream from {url} did not end with [DONE]")

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, i, 5) for i in range(clients)))  # connect, warm
        timings.clear()
        started = time.perf_counter()
        await asyncio.gather(*(client(session, i, calls_each) for i in range(clients)))
        wall = time.perf_counter() - started
    return timings, wall


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process and its children alive now have used (Linux)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            pending.extend(int(child) for child in task.read_text().split())
    return total


def summary(timings: list[float], calls: int, wall: float) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(timings) * 1000, 4),
        "p99_ms": round(percentile(timings, 0.99) * 1000, 4),
        "throughput_rps": round(calls / wall, 1),
    }


def measure(
    targets: dict[str, tuple[str, str, int | None]],
    clients: int,
    stream: bool,
    calls: dict[str, int],
    rounds: int,
) -> dict[str, Any]:
    """One setting: every target in each round, in turn; medians, p99s, throughput, CPU."""
    per_round = {name: max(calls[name] // rounds // clients, 1) for name in targets}
    timings: dict[str, list[float]] = {name: [] for name in targets}
    walls = dict.fromkeys(targets, 0.0)
    cpu = dict.fromkeys(targets, 0.0)
    for _ in range(rounds):
        for name, (url, key, pid) in targets.items():
            before = cpu_seconds(pid) if pid else 0.0
            batch_timings, wall = asyncio.run(
                batch(url, clients, per_round[name], stream=stream, key=key)
            )
            if pid:
                cpu[name] += cpu_seconds(pid) - before
            timings[name] += batch_timings
            walls[name] += wall
    result: dict[str, Any] = {}
    for name in targets:
        done = per_round[name] * clients * rounds
        served = done + 5 * clients * rounds  # the warm-up calls were served too
        result[name] = {"calls": done, **summary(timings[name], done, walls[name])}
        if targets[name][2]:
            result[name]["cpu_ms_per_call"] = round(cpu[name] / served * 1000, 4)
    direct = result["direct"]
    for name in targets:
        if name != "direct":
            result[name]["added_median_ms"] = round(
                result[name]["median_ms"] - direct["median_ms"], 4
            )
            result[name]["added_p99_ms"] = round(result[name]["p99_ms"] - direct["p99_ms"], 4)
    if "litellm" in result and result["litellm"]["added_median_ms"] > 0:
        result["agentguard_share_of_litellm_added"] = round(
            result["agentguard"]["added_median_ms"] / result["litellm"]["added_median_ms"], 4
        )
    return result


def warm_up(targets: dict[str, tuple[str, str, int | None]]) -> None:
    """First calls of each kind, not measured: tokenizers, price tables and connections load."""
    for url, key, _ in targets.values():
        for stream in (False, True):
            asyncio.run(batch(url, 2, 10, stream=stream, key=key))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1200, help="calls per target and setting")
    parser.add_argument(
        "--litellm-calls", type=int, default=240, help="calls through LiteLLM per setting"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--litellm", help="the litellm command (or its environment)")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument(
        "--upstream",
        choices=("sim", "fast"),
        default="sim",
        help="the provider: agentguard's simulated one, or a canned answer on asyncio (fast)",
    )
    parser.add_argument("--serve-proxy", nargs=3, metavar=("PORT", "SIM_URL", "HOME"))
    parser.add_argument("--serve-fast-upstream", type=int, metavar="PORT")
    args = parser.parse_args()
    if args.serve_proxy:
        port, sim_url, home = args.serve_proxy
        serve_proxy(int(port), sim_url, home)
        return
    if args.serve_fast_upstream:
        serve_fast_upstream(args.serve_fast_upstream)
        return
    litellm = None if args.no_litellm else litellm_command(args.litellm)
    if litellm is None and not args.no_litellm:
        print(
            "LiteLLM is not installed (no --litellm, AGENTGUARD_BENCH_LITELLM or "
            f"{ROOT / '.venv-litellm/bin/litellm'}): measuring direct and agentguard only",
            flush=True,
        )
    home = tempfile.mkdtemp(prefix="agentguard-bench-")
    environment = {**os.environ, "AGENTGUARD_HOME": home}
    sim_port, proxy_port, litellm_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}/v1"
    upstream_command = (
        [sys.executable, "-m", "agentguard.cli", "sim", "--port", str(sim_port)]
        if args.upstream == "sim"
        else [sys.executable, __file__, "--serve-fast-upstream", str(sim_port)]
    )
    sim = subprocess.Popen(
        upstream_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
    )
    proxy = subprocess.Popen(
        [sys.executable, __file__, "--serve-proxy", str(proxy_port), sim_url, home],
        env=environment,
    )
    processes = [sim, proxy]
    targets: dict[str, tuple[str, str, int | None]] = {
        "direct": (f"{sim_url}/chat/completions", "sk-bench", None),
        "agentguard": (f"http://127.0.0.1:{proxy_port}/v1/chat/completions", "sk-bench", proxy.pid),
    }
    results: dict[str, Any] = {}
    try:
        if litellm is not None:
            process, master_key = start_litellm(litellm, litellm_port, sim_url, Path(home))
            processes.append(process)
            targets["litellm"] = (
                f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
                master_key,
                process.pid,
            )
        wait_until_up(f"{sim_url}/models")
        wait_until_up(f"http://127.0.0.1:{proxy_port}/healthz")
        if litellm is not None:
            wait_until_up(f"http://127.0.0.1:{litellm_port}/health/liveliness", timeout=180)
        warm_up(targets)
        calls = {name: args.calls for name in targets}
        if "litellm" in calls:
            # Forty times slower per call: fewer calls give it a steady median all the same.
            calls["litellm"] = args.litellm_calls
        for stream in (False, True):
            for clients in (1, 8):
                name = f"{'stream' if stream else 'non_stream'}_clients_{clients}"
                results[name] = measure(targets, clients, stream, calls, args.rounds)
                print(f"{name}: {json.dumps(results[name])}", flush=True)
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    versions = {"litellm": _litellm_version(litellm)} if litellm is not None else {}
    result = {
        "benchmark": "proxy",
        "interleaved": True,
        "provider": (
            "agentguard sim in its own process, loopback HTTP/1.1 keep-alive"
            if args.upstream == "sim"
            else "a canned answer (asyncio, uvloop, httptools) in its own process, loopback "
            "HTTP/1.1 keep-alive"
        ),
        "agentguard": "agentguard proxy in its own process (uvicorn + httptools + uvloop, its own "
        "HTTP/1.1 upstream client), budget on (one key, 1-day window), SQLite ledger, a session "
        "per client",
        "litellm": (
            f"LiteLLM proxy {versions['litellm']} in its own process (one worker, master key, "
            "no budget, no database)"
            if litellm is not None
            else "not installed: not measured"
        ),
        "load": "aiohttp clients in one process, one keep-alive connection each; a call is timed "
        "to its last byte",
        **results,
        "machine": machine_info(),
        "machine_note": "shared 2-CPU machine, other work running during the measurement",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    name = "proxy.json" if args.upstream == "sim" else "proxy_fast_upstream.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _litellm_version(command: Path) -> str:
    python = command.parent / "python"
    found = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
