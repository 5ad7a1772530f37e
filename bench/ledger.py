"""Ledger throughput: reserve + settle pairs per second on one budget, with 1, 4 and 8
processes, on SQLite and (when AGENTGUARD_BENCH_POSTGRES_URL is set) PostgreSQL.

Run: .venv/bin/python bench/ledger.py [--seconds 3]
Writes bench/results/ledger.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from _machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def worker(url: str, seconds: float, deferred: bool) -> int:
    from agentguard.ledger import BudgetLine, Ledger
    from agentguard.store import Store

    ledger = Ledger(Store(url))
    line = BudgetLine("bench", Decimal("1000000"), timedelta(days=1))
    deadline = time.perf_counter() + seconds
    pairs = 0
    while time.perf_counter() < deadline:
        reservation = ledger.reserve([line], Decimal("0.001"))
        ledger.settle(reservation, Decimal("0.0005"), defer=deferred)
        pairs += 1
    ledger.flush()
    return pairs


def measure(url: str, processes: int, seconds: float, deferred: bool) -> float:
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        counts = pool.starmap(worker, [(url, seconds, deferred)] * processes)
    return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    stores = {"sqlite": f"sqlite:///{tempfile.mkdtemp(prefix='agentguard-ledger-')}/ledger.db"}
    if os.environ.get("AGENTGUARD_BENCH_POSTGRES_URL"):
        stores["postgresql"] = os.environ["AGENTGUARD_BENCH_POSTGRES_URL"]
    rows = []
    for name, url in stores.items():
        worker(url, 0.2, False)  # create the schema and warm up
        for processes in (1, 4, 8):
            for deferred in (False, True):
                rate = measure(url, processes, args.seconds, deferred)
                rows.append(
                    {
                        "store": name,
                        "processes": processes,
                        "settle": "deferred (as the pipeline does)" if deferred else "immediate",
                        "pairs_per_s": round(rate),
                    }
                )
                print(
                    f"{name:<10} processes={processes} settle={'deferred' if deferred else 'immediate':<9} {rate:8.0f} reserve+settle/s"
                )
    result = {
        "benchmark": "ledger",
        "seconds_each": args.seconds,
        "rows": rows,
        "machine": machine_info(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ledger.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
