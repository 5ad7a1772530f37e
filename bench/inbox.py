"""Inbox ingest throughput: parked records dropped as JSON files, validated and stored, per
second, through one look at the inbox (what the daemon's watcher does on each wake).

Run: .venv/bin/python bench/inbox.py [--files 2000]
Writes bench/results/inbox.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def record(session_id: str) -> dict[str, object]:
    return {
        "schema_version": 1,
        "session_id": session_id,
        "resumer": "replay",
        "request": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        "reason": {"kind": "rate_limit", "status": 429, "message": "slow down"},
        "state": "parked",
        "resume_at": "2030-01-01T00:00:00Z",
    }


def run(files: int) -> dict[str, object]:
    from agentguard.config import GuardConfig
    from agentguard.guard import Guard
    from agentguard.parking.inbox import Inbox

    directory = Path(tempfile.mkdtemp())
    guard = Guard(
        GuardConfig.from_mapping({"store": {"url": f"sqlite:///{directory / 'store.db'}"}}, env={})
    )
    guard.parked.list()  # the schema exists before the clock starts
    inbox = Inbox(
        directory / "parked",
        ingest=guard.parked.import_record,
        ingest_many=guard.parked.import_records,
        known_resumers=lambda: set(guard.resumers),
        check=guard.parked.problem_with,
        settle_s=0.0,
    )
    for number in range(files):
        (inbox.inbox / f"bench-{number}.json").write_text(json.dumps(record(f"bench-{number}")))
    started = time.perf_counter()
    results = inbox.scan()
    elapsed = time.perf_counter() - started
    ingested = sum(result.status == "ingested" for result in results)
    assert ingested == files, f"only {ingested} of {files} ingested"
    return {
        "files": files,
        "seconds": round(elapsed, 3),
        "files_per_second": round(files / elapsed),
        "store": "sqlite (WAL)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=2000)
    arguments = parser.parse_args()
    result = {"inbox_ingest": run(arguments.files), "machine": machine_info()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inbox.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["inbox_ingest"]))


if __name__ == "__main__":
    main()
