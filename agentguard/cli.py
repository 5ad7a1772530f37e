"""The ``agentguard`` command: the demo, the sim, budgets, parked sessions and the daemon.

The config is found at ``--config PATH``, else ``$AGENTGUARD_CONFIG``, else
``./agentguard.toml``, else ``$AGENTGUARD_HOME/agentguard.toml``, else defaults. Commands that
resume sessions need the application's Guard (its resumers and clients): ``--app
module:attribute`` or ``app = "module:attribute"`` in the config.
"""

from __future__ import annotations

import importlib
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from agentguard.errors import AgentGuardError
from agentguard.routing.cli import route_app

if TYPE_CHECKING:
    from agentguard.guard import Guard
    from agentguard.parking.record import ParkedSession

app = typer.Typer(
    name="agentguard",
    help="Stops AI agents from burning money: limits, budgets, routing, trimming, park and resume.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
budget_app = typer.Typer(help="Dollar budgets and their windows.", no_args_is_help=True)
parked_app = typer.Typer(
    help="Parked sessions: list, show, resume, drop, export, import.", no_args_is_help=True
)
store_app = typer.Typer(help="The SQL store.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")
app.add_typer(parked_app, name="parked")
app.add_typer(store_app, name="store")
app.add_typer(route_app, name="route")

console = Console()
errors = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Config file (TOML).", show_default=False)
]
AppOption = Annotated[
    str | None,
    typer.Option("--app", help="The application's Guard, as module:attribute.", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _print_json(value: Any) -> None:
    # Plain JSON on stdout, whatever the terminal: no colour codes for a parser to trip on.
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def load_app_guard(spec: str) -> Guard:
    """Import ``module:attribute`` and return the Guard it names."""
    from agentguard.guard import Guard

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise _fail(f"--app {spec!r}: expected module:attribute, e.g. myapp.agents:guard")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _fail(f"--app {spec!r}: cannot import {module_name!r}: {exc}") from exc
    value: Any = module
    for part in attribute.split("."):
        value = getattr(value, part, None)
        if value is None:
            raise _fail(f"--app {spec!r}: {module_name} has no attribute {attribute!r}")
    if callable(value) and not isinstance(value, Guard):
        value = value()
    if not isinstance(value, Guard):
        raise _fail(f"--app {spec!r} is a {type(value).__name__}, not an agentguard Guard")
    return value


def _guard(config: Path | None, app_spec: str | None = None) -> Guard:
    from agentguard.config import GuardConfig
    from agentguard.guard import Guard

    try:
        loaded = GuardConfig.discover(config)
    except AgentGuardError as exc:
        raise _fail(str(exc)) from exc
    spec = app_spec or loaded.app
    if spec:
        return load_app_guard(spec)
    return Guard(loaded)


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _in(value: datetime | None) -> str:
    if value is None:
        return "-"
    seconds = (value - datetime.now(UTC)).total_seconds()
    if seconds <= 0:
        return "due"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return (
        f"{hours}h{minutes:02d}m"
        if hours
        else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")
    )


# -- budgets ---------------------------------------------------------------------------------------


@budget_app.command("status")
def budget_status(
    key: Annotated[str | None, typer.Argument(help="One budget key (default: all).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Spend, limit and reset time of each budget's current window."""
    guard = _guard(config)
    keys = (
        [key] if key else sorted({b.key for b in guard.config.budgets} | set(guard.ledger.keys()))
    )
    rows = []
    for name in keys:
        if name.startswith("session:"):
            continue
        status = guard.budget_status(name)
        rows.append(
            {
                "key": status.key,
                "limit_usd": None if status.limit_usd is None else str(status.limit_usd),
                "spent_usd": str(status.spent_usd),
                "reserved_usd": str(status.reserved_usd),
                "remaining_usd": None
                if status.remaining_usd is None
                else str(status.remaining_usd),
                "calls": status.calls,
                "window": None if status.window is None else str(status.window),
                "window_mode": status.mode,
                "window_start": status.window_start.isoformat() if status.window_start else None,
                "resets_at": status.resets_at.isoformat() if status.resets_at else None,
            }
        )
    if as_json:
        _print_json(rows)
        return
    if not rows:
        console.print("No budgets configured and no spend recorded yet.")
        return
    table = Table(title="Budgets")
    for column in ("key", "spent", "reserved", "limit", "remaining", "calls", "window", "resets"):
        table.add_column(column, justify="right" if column not in ("key", "window") else "left")
    for row in rows:
        resets = datetime.fromisoformat(str(row["resets_at"])) if row["resets_at"] else None
        table.add_row(
            str(row["key"]),
            f"${row['spent_usd']}",
            f"${row['reserved_usd']}",
            f"${row['limit_usd']}" if row["limit_usd"] else "none",
            f"${row['remaining_usd']}" if row["remaining_usd"] else "-",
            str(row["calls"]),
            f"{row['window'] or '-'} {row['window_mode'] if row['window'] else ''}",
            f"{_when(resets)} (in {_in(resets)})" if resets else "never",
        )
    console.print(table)


# -- parked sessions ---------------------------------------------------------------------------------


def _record_json(record: ParkedSession, *, messages: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(record.model_dump_json())
    if not messages:
        request = data.get("request") or {}
        count = len(request.get("messages") or [])
        data["request"] = {k: v for k, v in request.items() if k != "messages"}
        data["request"]["messages"] = f"<{count} messages; --messages to show>"
    return data


@parked_app.command("list")
def parked_list(
    state: Annotated[
        str | None, typer.Option("--state", help="parked, resuming, resumed, failed or dropped.")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The parked sessions, soonest resume first."""
    states = ("parked", "resuming", "resumed", "failed", "dropped")
    if state is not None and state not in states:
        raise _fail(f"--state {state!r}: expected one of {', '.join(states)}")
    guard = _guard(config)
    records = guard.parked.list(state)  # type: ignore[arg-type]
    if as_json:
        _print_json([_record_json(r, messages=False) for r in records])
        return
    if not records:
        console.print("No parked sessions" + (f" in state {state!r}." if state else "."))
        return
    table = Table(title="Parked sessions")
    for column in ("id", "key", "framework", "state", "attempts", "reason", "parked", "resumes in"):
        table.add_column(column)
    for record in records:
        table.add_row(
            record.session_id,
            record.budget_key,
            record.framework,
            record.state,
            str(record.attempts),
            f"{record.reason.kind} {record.reason.status or ''}".strip(),
            _when(record.parked_at),
            _in(record.resume_at) if record.state == "parked" else "-",
        )
    console.print(table)


def _get(guard: Guard, session_id: str) -> ParkedSession:
    from agentguard.parking.store import UnknownSession

    try:
        return guard.parked.get(session_id)
    except UnknownSession as exc:
        raise _fail(f"{exc} (see `agentguard parked list`)") from exc


@parked_app.command("show")
def parked_show(
    session_id: Annotated[str, typer.Argument(help="The session id.")],
    messages: Annotated[bool, typer.Option("--messages", help="Include the conversation.")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One parked session in full."""
    record = _get(_guard(config), session_id)
    if as_json:
        _print_json(_record_json(record, messages=messages))
        return
    console.print(f"[bold]{record.session_id}[/]  state={record.state}  attempts={record.attempts}")
    console.print(
        f"  budget key: {record.budget_key}   framework: {record.framework}   resumer: {record.resumer}"
    )
    if record.parent_id:
        console.print(f"  parent: {record.parent_id}")
    console.print(
        f"  parked at: {_when(record.parked_at)}   resumes at: {_when(record.resume_at)} (in {_in(record.resume_at)})"
    )
    reason = record.reason
    console.print(
        f"  reason: {reason.kind} {reason.status or ''} {reason.error_type or ''} — {reason.message[:300]}"
    )
    console.print(f"  reset from: {reason.reset_source}   headers: {reason.headers or '-'}")
    console.print(f"  iterations: {record.iterations}   spent: ${record.spent_usd}")
    request = record.request
    console.print(
        f"  pending call: model={request.get('model')} messages={len(request.get('messages') or [])} tools={len(request.get('tools') or [])}"
    )
    if record.result:
        console.print(f"  result: {json.dumps(record.result)[:500]}")
    console.print("  history:")
    for step in record.history:
        console.print(f"    {_when(step.at)}  {step.state:<9} {step.note}")
    if messages:
        console.print("  messages:")
        for message in request.get("messages") or []:
            content = message.get("content")
            text = content if isinstance(content, str) else json.dumps(content)
            calls = message.get("tool_calls")
            console.print(
                f"    [{message.get('role')}] {(text or '')[:400]}"
                + (f" (tool calls: {len(calls)})" if calls else ""),
                highlight=False,
            )


@parked_app.command("resume")
def parked_resume(
    session_id: Annotated[str, typer.Argument(help="The session id.")],
    now: Annotated[
        bool, typer.Option("--now", help="Resume in this process now (needs --app).")
    ] = False,
    config: ConfigOption = None,
    app_spec: AppOption = None,
) -> None:
    """Make a parked session due now (a running daemon resumes it), or resume it here (--now)."""
    guard = _guard(config, app_spec if now else None)
    _get(guard, session_id)
    if not now:
        try:
            record = guard.parked.schedule_now(session_id)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        console.print(f"{record.session_id}: due now; a running `agentguard daemon` resumes it.")
        return
    from agentguard.errors import SessionParked

    try:
        guard.parked.resume(session_id)
    except SessionParked as exc:
        raise _fail(str(exc), code=3) from exc
    except Exception as exc:
        raise _fail(f"resume of {session_id} failed: {exc}", code=4) from exc
    record = guard.parked.get(session_id)
    console.print(f"{record.session_id}: {record.state} after {record.attempts} earlier attempts.")
    if record.result:
        console.print(json.dumps(record.result)[:1000], highlight=False)


@parked_app.command("drop")
def parked_drop(
    session_id: Annotated[str, typer.Argument(help="The session id.")], config: ConfigOption = None
) -> None:
    """Mark a parked session dropped: it will not resume (the record is kept)."""
    guard = _guard(config)
    _get(guard, session_id)
    record = guard.parked.drop(session_id)
    console.print(f"{record.session_id}: dropped.")


@parked_app.command("export")
def parked_export(
    session_id: Annotated[str, typer.Argument(help="The session id.")], config: ConfigOption = None
) -> None:
    """Print a parked record as JSON (``> file.json``; it holds the conversation)."""
    record = _get(_guard(config), session_id)
    sys.stdout.write(record.model_dump_json(indent=2) + "\n")


@parked_app.command("import")
def parked_import(
    path: Annotated[Path, typer.Argument(help="A JSON file from `parked export`.")],
    config: ConfigOption = None,
    app_spec: AppOption = None,
) -> None:
    """Store a parked record from a JSON file."""
    from pydantic import ValidationError

    from agentguard.parking.record import ParkedSession

    guard = _guard(config, app_spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"{path}: cannot read: {exc}") from exc
    try:
        record = ParkedSession.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors(include_url=False)[:8]
        )
        raise _fail(f"{path}: not a parked session record: {problems}") from exc
    if record.resumer not in guard.resumers:
        raise _fail(
            f"{path}: names resumer {record.resumer!r}, not registered "
            f"(registered: {sorted(guard.resumers)}; pass --app to load the application's)"
        )
    stored = guard.parked.import_record(record)
    console.print(f"{stored.session_id}: imported ({stored.state}).")


@parked_app.command("schema")
def parked_schema() -> None:
    """Print the JSON Schema of parked records (the inbox file format)."""
    from agentguard.parking.record import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


# -- daemon, sim, store, demo --------------------------------------------------------------------------


@app.command()
def daemon(
    config: ConfigOption = None,
    app_spec: AppOption = None,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the store.")] = 2.0,
    workers: Annotated[int, typer.Option(help="Resumes that may run at once.")] = 4,
    log_level: Annotated[str, typer.Option(help="debug, info or warning.")] = "info",
) -> None:
    """Resume parked sessions when their limits reset (runs until SIGTERM)."""
    from agentguard.log import configure_logging
    from agentguard.scheduler import ResumeDaemon

    configure_logging(log_level)
    guard = _guard(config, app_spec)
    if app_spec is None and guard.config.app is None:
        errors.print(
            "[yellow]note:[/] no --app given: only the built-in resumers are known, and `replay` "
            "needs the application's wrapped client."
        )
    ResumeDaemon(guard, poll_interval_s=poll, workers=workers).run_forever()


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8700,
    latency: Annotated[float, typer.Option(help="Seconds added to each answer.")] = 0.0,
    gateway_key: Annotated[
        list[str] | None, typer.Option("--gateway-key", help="Budget-gateway key (repeatable).")
    ] = None,
    limit_usd: Annotated[float, typer.Option(help="Gateway budget per key and window.")] = 0.01,
    window_s: Annotated[float, typer.Option(help="Gateway window length in seconds.")] = 60.0,
    style: Annotated[
        str, typer.Option(help="Gateway refusals worded like openai or litellm.")
    ] = "openai",
    verbose: Annotated[bool, typer.Option(help="Log each request.")] = False,
) -> None:
    """Serve the simulated OpenAI-compatible provider (offline, on loopback by default)."""
    from agentguard.sim import GatewayKey, SimGateway, serve

    gateway = None
    if gateway_key:
        keys = {
            key: GatewayKey(limit_usd=Decimal(str(limit_usd)), window_s=window_s)
            for key in gateway_key
        }
        gateway = SimGateway(keys, style=style)  # type: ignore[arg-type]
    console.print(f"agentguard sim on http://{host}:{port}/v1 (Ctrl-C to stop)")
    serve(host, port, gateway=gateway, latency_s=latency, verbose=verbose)


@store_app.command("upgrade")
def store_upgrade(config: ConfigOption = None) -> None:
    """Create the store's tables (or check their version)."""
    guard = _guard(config)
    guard.store.ensure_schema()
    from agentguard.store import SCHEMA_VERSION

    console.print(f"store {guard.store.safe_url}: schema version {SCHEMA_VERSION}, ready.")


@app.command()
def demo(
    steps: Annotated[int, typer.Option(help="Model calls the scripted agent wants to make.")] = 12,
    budget: Annotated[float, typer.Option(help="Dollar budget for the demo window.")] = 0.02,
    model: Annotated[str, typer.Option(help="The model the agent asks for.")] = "gpt-4o",
) -> None:
    """Run a scripted tool-using agent against the built-in simulated provider (offline)."""
    from agentguard.demo import run_demo

    raise typer.Exit(run_demo(console, steps=steps, budget_usd=budget, model=model))


def main() -> None:
    """Entry point of the ``agentguard`` console script."""
    try:
        app()
    except AgentGuardError as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
