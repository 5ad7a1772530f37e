"""Assemble the hand-written steps into bench/data/routing_steps.jsonl."""

import json
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gen_part1 import E
from gen_part2 import H
from gen_part3 import L

HARD = {"debugging", "multi_file_refactor", "long_context_synthesis", "planning", "math_proof"}

SYSTEM = {
    "support": "You are the customer support assistant for Acme Store. Be concise and friendly. Use the tools to look up orders and the knowledge base; never invent policies. Escalate with create_ticket when you cannot resolve an issue.",
    "coding": "You are a coding agent working in a git repository. Use the tools to read files, search, edit and run tests. Make minimal, correct changes and explain what you changed.",
    "data": "You are a data-processing assistant inside an ETL pipeline. Return exactly the requested output format with no commentary.",
    "research": "You are a research assistant. Use web_search and fetch_url to gather sources, then answer with citations to the sources you used.",
    "ops": "You are an SRE assistant with read-only access to logs, metrics and the deploy history. Be precise and cite the evidence you looked at.",
    "general": "You are a helpful assistant.",
    "math": "You are a careful mathematics assistant. Show your reasoning.",
}


def fn(name, desc, props):
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": desc,
            "parameters": {
                "type": "object",
                "properties": {k: {"type": v} for k, v in props.items()},
                "required": list(props)[:1],
            },
        },
    }


TOOLS = {
    "read_file": fn(
        "read_file", "Read a file from the repository.", {"path": "string", "lines": "string"}
    ),
    "write_file": fn(
        "write_file", "Write a file in the repository.", {"path": "string", "content": "string"}
    ),
    "grep": fn("grep", "Search the repository with a regular expression.", {"pattern": "string"}),
    "list_dir": fn("list_dir", "List a directory.", {"path": "string"}),
    "run_tests": fn(
        "run_tests", "Run tests or a shell check command.", {"path": "string", "cmd": "string"}
    ),
    "lookup_order": fn(
        "lookup_order",
        "Look up an order or a customer's orders.",
        {"order_id": "string", "customer_id": "string"},
    ),
    "search_kb": fn("search_kb", "Search the help-centre knowledge base.", {"query": "string"}),
    "create_ticket": fn("create_ticket", "Escalate to a human agent.", {"summary": "string"}),
    "web_search": fn("web_search", "Search the web.", {"query": "string"}),
    "fetch_url": fn("fetch_url", "Fetch a web page as text.", {"url": "string"}),
    "query_logs": fn(
        "query_logs",
        "Query the log store.",
        {"query": "string", "since": "string", "service": "string"},
    ),
    "get_metrics": fn(
        "get_metrics", "Read service metrics.", {"service": "string", "window": "string"}
    ),
    "get_deploys": fn(
        "get_deploys", "List recent deploys.", {"service": "string", "limit": "integer"}
    ),
    "python": fn("python", "Run a Python snippet and return stdout.", {"code": "string"}),
}
SYSTEM_TOOLS = {
    "coding": ["read_file", "write_file", "grep", "list_dir", "run_tests"],
    "support": ["lookup_order", "search_kb", "create_ticket"],
    "research": ["web_search", "fetch_url"],
    "ops": ["query_logs", "get_metrics", "get_deploys"],
    "data": [],
    "general": [],
    "math": [],
}
PRIOR_TURNS = [
    ("Thanks, that worked.", "Great — anything else I can help with?"),
    ("Can you check the previous order too?", "Done: order A-1 was delivered on 2 November."),
    ("Ok, next thing.", "Sure, go ahead."),
    ("Earlier you said the tests pass — I reran them and they do.", "Good, then we can move on."),
    ("Let's start with something small.", "Sounds good."),
    ("That summary was too long last time, keep it short.", "Understood, I'll keep answers brief."),
]

rng = random.Random(7)
records = []
counters = Counter()
for item in E + H + L:
    cls = item["c"]
    counters[cls] += 1
    sys_key = item["sys"]
    messages = [{"role": "system", "content": SYSTEM[sys_key]}]
    if rng.random() < 0.2:
        user, assistant = rng.choice(PRIOR_TURNS)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": item["u"]})
    tool_names = list(SYSTEM_TOOLS[sys_key])
    if sys_key in ("math", "general") and rng.random() < 0.3:
        tool_names.append("python" if sys_key == "math" else "web_search")
    if item["t"]:
        calls = []
        for i, (name, args, _result) in enumerate(item["t"], 1):
            calls.append(
                {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)},
                }
            )
            if name not in tool_names:
                tool_names.append(name)
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        for i, (_name, _args, result) in enumerate(item["t"], 1):
            messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": result})
    records.append(
        {
            "id": f"{cls}-{counters[cls]:03d}",
            "task_class": cls,
            "label": "hard" if cls in HARD else "easy",
            "messages": messages,
            "tools": [TOOLS[n] for n in tool_names] or None,
            "note": item["n"],
        }
    )

out = Path(sys.argv[1])
out.parent.mkdir(parents=True, exist_ok=True)
with out.open("w") as f:
    for r in records:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
print(len(records), Counter(r["label"] for r in records), out.stat().st_size)
