"""The ``agentguard`` command: the demo, the sim, budgets, parked sessions and the daemon.

The config is found at ``--config PATH``, else ``$AGENTGUARD_CONFIG``, else
``./agentguard.toml``, else ``$AGENTGUARD_HOME/agentguard.toml``, else defaults. Commands that
resume sessions need the application's Guard (its resumers and clients): ``--app
module:attribute`` or ``app = "module:attribute"`` in the config.

A mistake (a bad flag, file, config field, key or id) is one line on stderr, ``agentguard:
error: ...``, and exit status 2; ``--debug`` shows the traceback behind it. Anything else that
goes wrong is a bug and shows its traceback.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import socket
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

try:
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # a typer that uses click itself
    from click.exceptions import UsageError  # type: ignore[assignment]

    # Before click 8.2, a bare group printed its help without raising.
    _click_errors: Any = importlib.import_module("click.exceptions")
    NoArgsIsHelpError = _click_errors.__dict__.get("NoArgsIsHelpError", typer.Exit)  # type: ignore[misc]

from agentguard.route_cli import route_app

if TYPE_CHECKING:
    from agentguard.config import BudgetConfig
    from agentguard.guard import Guard
    from agentguard.ledger import BudgetStatus
    from agentguard.ledger.history import WindowSpend
    from agentguard.parking.record import ParkedSession
    from agentguard.sim import Script


class UsageProblem(Exception):
    """A mistake in what the user asked for: printed as one line, never as a traceback.

    Attributes:
        code: the exit status.
    """

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _report(message: str) -> None:
    # Plain text: a message may hold brackets that rich would read as markup.
    sys.stderr.write(f"agentguard: error: {message}\n")


def _usage_exit(error: UsageError) -> typer.Exit:
    """Report a bad flag, argument or command in one line, with where to look."""
    message = error.format_message().replace("Value error, ", "")
    where = f" (see `{error.ctx.command_path} --help`)" if error.ctx is not None else ""
    _report(message + where)
    return typer.Exit(2)


class _Commands(TyperGroup):
    """The root command: turns mistakes raised anywhere below it into one-line errors."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            raise _usage_exit(exc) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, NoArgsIsHelpError):
            raise
        except UsageError as exc:
            raise _usage_exit(exc) from None
        except Exception as exc:
            from agentguard.errors import AgentGuardError

            if not isinstance(exc, (UsageProblem, AgentGuardError)):
                raise  # a bug: the traceback is what a report needs
            if ctx.meta.get("agentguard.debug") or os.environ.get("AGENTGUARD_DEBUG"):
                raise
            _report(str(exc))
            raise typer.Exit(exc.code if isinstance(exc, UsageProblem) else 2) from None


app = typer.Typer(
    name="agentguard",
    cls=_Commands,
    help="Stops AI agents from burning money: limits, budgets, routing, trimming, park and resume.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: rich panels show every flag as taking a <bool>.
    rich_markup_mode=None,
)
budget_app = typer.Typer(help="Dollar budgets: status now, spend over time.", no_args_is_help=True)
parked_app = typer.Typer(
    help="Parked sessions: list, show, resume, drop, export, import.", no_args_is_help=True
)
store_app = typer.Typer(help="The SQL store.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")
app.add_typer(parked_app, name="parked")
app.add_typer(store_app, name="store")
app.add_typer(route_app, name="route")

console = Console(highlight=False)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Config file (TOML).", show_default=False)
]
AppOption = Annotated[
    str | None,
    typer.Option("--app", help="The application's Guard, as module:attribute.", show_default=False),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for scripts.", show_default=False)
]


def _show_version(value: bool) -> None:
    if value:
        from agentguard import __version__

        sys.stdout.write(f"agentguard {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_show_version,
            is_eager=True,
            show_default=False,
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Show the traceback behind an error.", show_default=False),
    ] = False,
) -> None:
    """Stops AI agents from burning money: limits, budgets, routing, trimming, park and resume."""
    ctx.meta["agentguard.debug"] = debug


def _print_json(value: Any) -> None:
    # Plain JSON on stdout, whatever the terminal: no colour codes for a parser to trip on.
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _fail(message: str, code: int = 2) -> UsageProblem:
    return UsageProblem(message, code)


def load_app_guard(spec: str) -> Guard:
    """Import ``module:attribute`` and return the Guard it names (or that the function of no
    arguments it names returns).

    Raises:
        UsageProblem: the spec is malformed, the module does not import, or the attribute is
            not a Guard.
    """
    from agentguard.guard import Guard

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise _fail(f"--app {spec!r}: expected module:attribute, e.g. myapp.agents:guard")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _fail(f"--app {spec!r}: cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise _fail(
            f"--app {spec!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    value: Any = module
    for part in attribute.split("."):
        value = getattr(value, part, None)
        if value is None:
            raise _fail(f"--app {spec!r}: {module_name} has no attribute {attribute!r}")
    if isinstance(value, Guard):
        return value
    if not _takes_no_arguments(value):
        raise _fail(
            f"--app {spec!r} is a {type(value).__name__}, not an agentguard Guard: name the "
            "Guard (module:guard) or a function of no arguments that returns one"
        )
    try:
        value = value()
    except Exception as exc:
        raise _fail(f"--app {spec!r}: calling it raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(value, Guard):
        raise _fail(f"--app {spec!r} returned a {type(value).__name__}, not an agentguard Guard")
    return value


def _takes_no_arguments(value: Any) -> bool:
    if not callable(value):
        return False
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        return False
    return all(
        parameter.default is not inspect.Parameter.empty
        or parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        for parameter in signature.parameters.values()
    )


def _guard(config: Path | None, app_spec: str | None = None) -> Guard:
    from agentguard.config import GuardConfig
    from agentguard.guard import Guard

    loaded = GuardConfig.discover(config, origin="--config")
    spec = app_spec or loaded.app
    if spec:
        return load_app_guard(spec)
    return Guard(loaded)


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _from_now(value: datetime) -> str:
    """``in 1h05m``, or ``now`` for a time that has come."""
    seconds = (value - datetime.now(UTC)).total_seconds()
    return "now" if seconds <= 0 else f"in {_duration(seconds)}"


def _money(amount: Decimal | None) -> str:
    """Dollars for people: cents when that is exact, else four decimals (six below a cent)."""
    if amount is None:
        return "-"
    if amount == amount.quantize(Decimal("0.01")):
        return f"${amount:.2f}"
    return f"${amount:.4f}" if amount >= Decimal("0.01") else f"${amount:.6f}"


# -- budgets ---------------------------------------------------------------------------------------


def _status_row(status: BudgetStatus) -> dict[str, Any]:
    return {
        "key": status.key,
        "configured": True,
        "limit_usd": None if status.limit_usd is None else str(status.limit_usd),
        "spent_usd": str(status.spent_usd),
        "reserved_usd": str(status.reserved_usd),
        "remaining_usd": None if status.remaining_usd is None else str(status.remaining_usd),
        "calls": status.calls,
        "window": None if status.window is None else str(status.window),
        "window_mode": status.mode,
        "window_start": status.window_start.isoformat() if status.window_start else None,
        "resets_at": status.resets_at.isoformat() if status.resets_at else None,
    }


def _stored_row(latest: WindowSpend | None, key: str) -> dict[str, Any]:
    """A key the config does not know: its latest stored window, limit and length unknown."""
    return {
        "key": key,
        "configured": False,
        "limit_usd": None,
        "spent_usd": str(latest.spent_usd) if latest else "0",
        "reserved_usd": str(latest.reserved_usd) if latest else "0",
        "remaining_usd": None,
        "calls": latest.calls if latest else 0,
        "window": None,
        "window_mode": None,
        "window_start": latest.start.isoformat() if latest and latest.start else None,
        "resets_at": None,
    }


def _budget_keys(guard: Guard, key: str | None) -> list[str]:
    if key is None:
        return guard.budget_keys()
    if key.lower() in ("true", "false") and key not in guard.budget_keys():
        raise _fail(f"unknown budget key {key!r} (flags take no value: --json, not --json {key})")
    guard.require_budget_key(key)
    return [key]


@budget_app.command("status")
def budget_status(
    key: Annotated[str | None, typer.Argument(help="One budget key (default: all).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Spend, limit and reset time of each budget's current window.

    Lists the keys in the config and the keys with spend in the store; a key the config does
    not know shows its latest stored window, marked with *.
    """
    guard = _guard(config)
    rows = []
    for name in _budget_keys(guard, key):
        if guard.config.budget(name) is not None:
            rows.append(_status_row(guard.budget_status(name)))
        else:
            stored = guard.budget_history(name, windows=1)
            rows.append(_stored_row(stored[-1] if stored else None, name))
    if as_json:
        _print_json(rows)
        return
    if not rows:
        console.print("No budgets configured and no spend recorded yet.")
        return
    from rich import box
    from rich.table import Table

    # Short cells, so the table fits 80 columns; the exact figures are in --json.
    table = Table(title="Budgets", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("key", "spent", "held", "limit", "left", "calls", "window", "resets"):
        table.add_column(column, no_wrap=True, justify="left" if column == "key" else "right")
    for row in rows:
        budget = guard.config.budget(str(row["key"]))
        resets = datetime.fromisoformat(str(row["resets_at"])) if row["resets_at"] else None
        table.add_row(
            escape(str(row["key"])) + ("" if row["configured"] else " *"),
            _money(Decimal(row["spent_usd"])),
            _money(Decimal(row["reserved_usd"])),
            _money(Decimal(row["limit_usd"])) if row["limit_usd"] else "none",
            _money(Decimal(row["remaining_usd"])) if row["remaining_usd"] else "-",
            str(row["calls"]),
            _window_text(budget),
            _from_now(resets) if resets else "never",
        )
    console.print(table)
    if not all(row["configured"] for row in rows):
        console.print(
            "* not in this config (wrong --config?): its latest stored window; limit unknown."
        )


def _window_text(budget: BudgetConfig | None) -> str:
    if budget is None:
        return "?"
    return budget.window + (" rolling" if budget.window_mode == "rolling" else "")


_BAR_WIDTH = 24


def _bar(spent: Decimal, scale: Decimal) -> str:
    filled = 0 if scale <= 0 else min(_BAR_WIDTH, round(float(spent / scale) * _BAR_WIDTH))
    if spent > 0 and filled == 0:
        filled = 1  # any spend shows
    return "█" * filled + "·" * (_BAR_WIDTH - filled)


def _print_history(key: str, configured: bool, line_text: str, spends: list[WindowSpend]) -> None:
    console.print(f"[bold]{escape(key)}[/]: {escape(line_text)}")
    if not spends:
        console.print("  no spend recorded")
        return
    limit = spends[-1].limit_usd
    scale = limit if limit else max(spend.spent_usd for spend in spends)
    for index, spend in enumerate(spends):
        start = spend.start.astimezone().strftime("%Y-%m-%d %H:%M") if spend.start else "all time"
        of = f" of {_money(limit)}" if limit else ""
        current = "  < now" if configured and index == len(spends) - 1 else ""
        console.print(
            f"  {start:<16} {_bar(spend.spent_usd, scale)} {_money(spend.spent_usd)}{of}"
            f"  {spend.calls} call{'' if spend.calls == 1 else 's'}{current}",
            markup=False,
        )


@budget_app.command("history")
def budget_history(
    key: Annotated[str | None, typer.Argument(help="One budget key (default: all).")] = None,
    windows: Annotated[
        int, typer.Option("--windows", "-n", min=1, max=1000, help="How many windows back.")
    ] = 12,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Spend per window over time: a bar per window (start, spent, limit), newest last."""
    guard = _guard(config)
    histories = []
    for name in _budget_keys(guard, key):
        budget = guard.config.budget(name)
        histories.append((name, budget, guard.budget_history(name, windows=windows)))
    if as_json:
        _print_json(
            [
                {
                    "key": name,
                    "configured": budget is not None,
                    "limit_usd": str(budget.limit_usd) if budget else None,
                    "window": budget.window if budget else None,
                    "window_mode": budget.window_mode if budget else None,
                    "windows": [
                        {
                            "start": spend.start.isoformat() if spend.start else None,
                            "end": spend.end.isoformat() if spend.end else None,
                            "spent_usd": str(spend.spent_usd),
                            "reserved_usd": str(spend.reserved_usd),
                            "calls": spend.calls,
                        }
                        for spend in spends
                    ],
                }
                for name, budget, spends in histories
            ]
        )
        return
    if not histories:
        console.print("No budgets configured and no spend recorded yet.")
        return
    for name, budget, spends in histories:
        if budget is not None:
            line_text = (
                f"{_money(budget.limit_usd)} per {budget.window} ({budget.window_mode} windows)"
            )
        else:
            line_text = "not in this config: its windows as stored, limit unknown"
        _print_history(name, budget is not None, line_text, spends)


# -- parked sessions ---------------------------------------------------------------------------------


def _record_json(record: ParkedSession, *, messages: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(record.model_dump_json())
    if not messages:
        request = data.get("request") or {}
        count = len(request.get("messages") or [])
        data["request"] = {k: v for k, v in request.items() if k != "messages"}
        data["request"]["messages"] = f"<{count} messages; --messages to show>"
    return data


def _resumes(record: ParkedSession, *, short: bool = False) -> str:
    """When a record resumes, in words: ``due now``, ``in 1h05m``, ``not scheduled``..."""
    if record.state == "resuming":
        return "resuming now" if short else f"resuming now (claimed by {record.lease_owner})"
    if record.state != "parked":
        return "-" if short else f"not scheduled ({record.state})"
    if record.resume_at is None:
        return "not scheduled"
    relative = _from_now(record.resume_at)
    if relative == "now":
        return "due now"
    return relative if short else f"{_when(record.resume_at)} ({relative})"


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
    from rich import box
    from rich.table import Table

    table = Table(
        title="Parked sessions", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    for column in ("id", "key", "framework", "state", "tries", "reason", "parked", "resumes"):
        table.add_column(column, no_wrap=column not in ("id", "key"))
    for record in records:
        table.add_row(
            record.session_id,
            escape(record.budget_key),
            record.framework,
            record.state,
            str(record.attempts),
            f"{record.reason.kind} {record.reason.status or ''}".strip(),
            record.parked_at.astimezone().strftime("%m-%d %H:%M"),
            _resumes(record, short=True),
        )
    console.print(table)


def _get(guard: Guard, session_id: str) -> ParkedSession:
    from agentguard.parking.store import UnknownSession

    try:
        return guard.parked.get(session_id)
    except UnknownSession as exc:
        raise _fail(f"{exc} (see `agentguard parked list`)") from exc


def _print_messages(messages: list[dict[str, Any]]) -> None:
    for message in messages:
        role = str(message.get("role") or "?")
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content) if content else ""
        calls = message.get("tool_calls") or []
        if calls:
            names = ", ".join(str((call.get("function") or {}).get("name")) for call in calls)
            text = f"{text} [calls {names}]".strip()
        if message.get("tool_call_id"):
            role = f"{role} ({message['tool_call_id']})"
        console.print(f"    {role}: {' '.join(text.split())[:400]}", markup=False)


@parked_app.command("show")
def parked_show(
    session_id: Annotated[str, typer.Argument(help="The session id.")],
    messages: Annotated[
        bool, typer.Option("--messages", help="Include the conversation.", show_default=False)
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One parked session in full."""
    record = _get(_guard(config), session_id)
    if as_json:
        _print_json(_record_json(record, messages=messages))
        return
    out = console.print
    out(f"[bold]{record.session_id}[/]  state={record.state}  attempts={record.attempts}")
    out(f"  budget key: {record.budget_key}   framework: {record.framework}", markup=False)
    out(f"  resumer: {record.resumer}", markup=False)
    if record.parent_id:
        out(f"  parent: {record.parent_id}", markup=False)
    out(f"  parked at: {_when(record.parked_at)}   resumes: {_resumes(record)}", markup=False)
    reason = record.reason
    what = " ".join(str(part) for part in (reason.kind, reason.status, reason.error_type) if part)
    out(f"  reason: {what} — {reason.message[:300]}", markup=False)
    headers = ", ".join(f"{k}: {v}" for k, v in reason.headers.items()) or "-"
    out(f"  reset from: {reason.reset_source or '-'}   headers: {headers}", markup=False)
    out(f"  iterations: {record.iterations}   spent: {_money(record.spent_usd)}", markup=False)
    request = record.request
    out(
        f"  pending call: model={request.get('model')} "
        f"messages={len(request.get('messages') or [])} tools={len(request.get('tools') or [])}",
        markup=False,
    )
    if record.result:
        out(f"  result: {json.dumps(record.result)[:500]}", markup=False)
    out("  history:")
    for step in record.history:
        out(f"    {_when(step.at)}  {step.state:<9} {step.note}", markup=False)
    if messages:
        out("  messages:")
        _print_messages(request.get("messages") or [])


def _no_app_hint(guard: Guard, app_spec: str | None) -> str:
    if app_spec is None and guard.config.app is None:
        return '; pass --app module:attribute (or set app = "module:attribute" in the config)'
    return ""


@parked_app.command("resume")
def parked_resume(
    session_id: Annotated[str, typer.Argument(help="The session id.")],
    now: Annotated[
        bool,
        typer.Option("--now", help="Resume in this process now (needs --app).", show_default=False),
    ] = False,
    config: ConfigOption = None,
    app_spec: AppOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a parked session due now (a running daemon resumes it), or resume it here (--now)."""
    guard = _guard(config, app_spec if now else None)
    record = _get(guard, session_id)
    if not now:
        try:
            record = guard.parked.schedule_now(session_id)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        if as_json:
            _print_json(_record_json(record, messages=False))
            return
        console.print(f"{record.session_id}: due now; a running `agentguard daemon` resumes it.")
        return
    # Checked before anything is claimed: a resume that cannot start spends no attempt.
    problem = guard.resume_problem(record)
    if problem is not None:
        raise _fail(problem + _no_app_hint(guard, app_spec))
    from agentguard.errors import SessionParked

    try:
        guard.parked.resume(session_id)
    except SessionParked as exc:
        raise _fail(str(exc), code=3) from exc
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    except Exception as exc:
        raise _fail(f"resume of {session_id} failed: {type(exc).__name__}: {exc}", 4) from exc
    record = guard.parked.get(session_id)
    if as_json:
        _print_json(_record_json(record, messages=False))
        return
    console.print(f"{record.session_id}: {record.state} after {record.attempts} earlier attempts.")
    if record.result:
        console.print(json.dumps(record.result)[:1000], markup=False)


@parked_app.command("drop")
def parked_drop(
    session_id: Annotated[str, typer.Argument(help="The session id.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Mark a parked session dropped: it will not resume (the record is kept)."""
    guard = _guard(config)
    _get(guard, session_id)
    try:
        record = guard.parked.drop(session_id)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        _print_json(_record_json(record, messages=False))
        return
    console.print(f"{record.session_id}: dropped.")


AlwaysJsonOption = Annotated[
    bool,
    typer.Option("--json", help="Accepted for uniformity: the output is JSON.", show_default=False),
]


@parked_app.command("export")
def parked_export(
    session_id: Annotated[str, typer.Argument(help="The session id.")],
    config: ConfigOption = None,
    as_json: AlwaysJsonOption = True,
) -> None:
    """Print a parked record as JSON (redirect it to a file; it holds the conversation)."""
    record = _get(_guard(config), session_id)
    sys.stdout.write(record.model_dump_json(indent=2) + "\n")


@parked_app.command("import")
def parked_import(
    path: Annotated[Path, typer.Argument(help="A JSON file from `parked export`.")],
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Overwrite a record with the same id.", show_default=False),
    ] = False,
    config: ConfigOption = None,
    app_spec: AppOption = None,
    as_json: JsonOption = False,
) -> None:
    """Store a parked record from a JSON file (refuses an existing id without --replace)."""
    from pydantic import ValidationError

    from agentguard.parking.record import ParkedSession

    guard = _guard(config, app_spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _fail(f"{path}: cannot read: {reason}") from exc
    try:
        record = ParkedSession.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}".replace(
                "Value error, ", ""
            )
            for e in exc.errors(include_url=False)[:8]
        )
        raise _fail(f"{path}: not a parked session record: {problems}") from exc
    if record.resumer not in guard.resumers:
        raise _fail(
            f"{path}: names resumer {record.resumer!r}, not registered "
            f"(registered: {', '.join(sorted(guard.resumers))}){_no_app_hint(guard, app_spec)}"
        )
    existing = guard.parked.store.find(record.session_id)
    if existing is not None and not replace:
        raise _fail(
            f"{path}: session {record.session_id!r} already has a record ({existing.state}); "
            "pass --replace to overwrite it"
        )
    if existing is not None and existing.state == "resuming":
        raise _fail(
            f"{path}: session {record.session_id!r} is being resumed right now; "
            "try again once it is done"
        )
    try:
        stored = guard.parked.import_record(record, replace=replace)
    except ValueError as exc:
        raise _fail(f"{path}: {exc}; pass --replace to overwrite it") from exc
    if as_json:
        _print_json(_record_json(stored, messages=False))
        return
    console.print(f"{stored.session_id}: imported ({stored.state}).")


@parked_app.command("schema")
def parked_schema(as_json: AlwaysJsonOption = True) -> None:
    """Print the JSON Schema of parked records (the inbox file format)."""
    from agentguard.parking.record import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


# -- daemon, sim, store, demo --------------------------------------------------------------------------

_LOG_LEVELS = ("debug", "info", "warning")


@app.command()
def daemon(
    config: ConfigOption = None,
    app_spec: AppOption = None,
    poll: Annotated[
        float, typer.Option(min=0.05, help="Seconds between looks at the store.")
    ] = 2.0,
    workers: Annotated[int, typer.Option(min=1, help="Resumes that may run at once.")] = 4,
    log_level: Annotated[str, typer.Option(help="debug, info or warning.")] = "info",
) -> None:
    """Resume parked sessions when their limits reset (runs until SIGTERM)."""
    if log_level not in _LOG_LEVELS:
        raise _fail(f"--log-level {log_level!r}: expected one of {', '.join(_LOG_LEVELS)}")
    from agentguard.log import configure_logging
    from agentguard.scheduler import ResumeDaemon

    configure_logging(log_level)
    guard = _guard(config, app_spec)
    if app_spec is None and guard.config.app is None:
        sys.stderr.write(
            "agentguard: note: no --app given: only the built-in resumers are known, and "
            "`replay` needs the application's wrapped client.\n"
        )
    ResumeDaemon(guard, poll_interval_s=poll, workers=workers).run_forever()


_SIM_STYLES = ("openai", "litellm")


def load_sim_script(name: str, steps: int) -> Script:
    """The script ``agentguard sim --script`` names: ``coding`` (a tool-using coding agent of
    ``steps`` calls) or a JSON file holding a list of replies, each a string or
    ``{"content": ..., "tool_calls": [{"name": ..., "arguments": {...}}]}``.

    Raises:
        UsageProblem: the file cannot be read or is not such a list.
    """
    from agentguard.sim import Reply, Script, ToolCall
    from agentguard.sim.scripts import coding_agent_script

    if name == "coding":
        return coding_agent_script(steps)
    path = Path(name)
    if not path.is_file():
        raise _fail(f"--script {name!r}: expected 'coding' or a JSON file of replies")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _fail(f"--script {name}: cannot read it as JSON: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise _fail(f"--script {name}: expected a non-empty JSON list of replies")
    replies: list[Reply | str] = []
    for index, item in enumerate(data):
        where = f"--script {name}: reply {index}"
        if isinstance(item, str):
            replies.append(item)
            continue
        if not isinstance(item, dict) or not set(item) <= {"content", "tool_calls"}:
            raise _fail(f"{where}: expected a string or an object with content and tool_calls")
        calls = item.get("tool_calls") or []
        if not isinstance(calls, list) or not all(
            isinstance(call, dict) and isinstance(call.get("name"), str) for call in calls
        ):
            raise _fail(f"{where}: tool_calls must be a list of {{name, arguments}} objects")
        replies.append(
            Reply(
                content=item.get("content"),
                tool_calls=[ToolCall(c["name"], c.get("arguments") or {}) for c in calls] or None,
            )
        )
    return Script(replies)


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free).")] = 8700,
    latency: Annotated[float, typer.Option(min=0, help="Seconds added to each answer.")] = 0.0,
    script: Annotated[
        str | None,
        typer.Option(
            help="What the model answers: 'coding' (a tool-using coding agent) or a JSON file "
            "of replies (strings or {content, tool_calls: [{name, arguments}]}).",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[int, typer.Option(min=2, help="Model calls the 'coding' script takes.")] = 6,
    gateway_key: Annotated[
        list[str] | None,
        typer.Option("--gateway-key", help="Budget-gateway key (repeatable).", show_default=False),
    ] = None,
    limit_usd: Annotated[
        float, typer.Option(min=0, help="Gateway budget per key and window.")
    ] = 0.01,
    window_s: Annotated[float, typer.Option(min=0.001, help="Gateway window in seconds.")] = 60.0,
    style: Annotated[str, typer.Option(help="Gateway refusals like openai or litellm.")] = "openai",
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Log each request.", show_default=False)
    ] = False,
) -> None:
    """Serve the simulated OpenAI-compatible provider (offline, on loopback by default)."""
    if style not in _SIM_STYLES:
        raise _fail(f"--style {style!r}: expected one of {', '.join(_SIM_STYLES)}")
    from agentguard.sim import GatewayKey, SimGateway, serve

    replies = load_sim_script(script, steps) if script else None
    gateway = None
    if gateway_key:
        keys = {
            key: GatewayKey(limit_usd=Decimal(str(limit_usd)), window_s=window_s)
            for key in gateway_key
        }
        gateway = SimGateway(keys, style=style)  # type: ignore[arg-type]

    def ready(server: Any) -> None:
        console.print(f"agentguard sim on {server.base_url} (Ctrl-C to stop)")

    try:
        serve(
            host,
            port,
            script=replies,
            gateway=gateway,
            latency_s=latency,
            verbose=verbose,
            on_ready=ready,
        )
    except OSError as exc:
        raise _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


@app.command()
def proxy(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8787,
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info or warning.")] = "warning",
    as_json: JsonOption = False,
) -> None:
    """Serve the guard as an HTTP proxy for OpenAI and Anthropic clients (extra: proxy)."""
    if log_level not in _LOG_LEVELS:
        raise _fail(f"--log-level {log_level!r}: expected one of {', '.join(_LOG_LEVELS)}")
    try:
        from agentguard.proxy import serve
    except ImportError as exc:
        raise _fail(
            f"agentguard proxy needs the proxy extra ({exc.name} is missing): "
            "pip install 'agentguard[proxy]'",
            code=1,
        ) from None
    from agentguard.log import configure_logging

    configure_logging(log_level)
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _fail(
                f"--host/--port: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
    guard = _guard(config)
    settings = guard.config.proxy
    where = {
        "url": f"http://{host}:{port}",
        "openai_base_url": settings.openai_base_url,
        "anthropic_base_url": settings.anthropic_base_url,
        "virtual_keys": len(settings.keys),
    }
    if as_json:
        _print_json(where)
    else:
        console.print(
            f"agentguard proxy on {where['url']}: OpenAI clients use {where['url']}/v1 "
            f"(to {settings.openai_base_url}), Anthropic clients {where['url']} (to "
            f"{settings.anthropic_base_url}). Ctrl-C to stop."
        )
    try:
        serve(guard, host, port, log_level=log_level)
    finally:
        guard.close()


@store_app.command("upgrade")
def store_upgrade(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Create the store's tables (or check their version)."""
    from agentguard.store import SCHEMA_VERSION

    guard = _guard(config)
    guard.store.ensure_schema()
    if as_json:
        _print_json({"store": guard.store.safe_url, "schema_version": SCHEMA_VERSION})
        return
    console.print(f"store {guard.store.safe_url}: schema version {SCHEMA_VERSION}, ready.")


@app.command()
def demo(
    steps: Annotated[
        int, typer.Option(min=2, help="Model calls the scripted agent wants to make.")
    ] = 12,
    budget: Annotated[
        float | None,
        typer.Option(help="Dollar budget per window (default: $0.02; $0.06 for anthropic)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="The model the agent asks for (default: the API's large tier)."),
    ] = None,
    api: Annotated[
        str,
        typer.Option(help="The API the agent speaks: chat, responses or anthropic."),
    ] = "chat",
) -> None:
    """Run a scripted tool-using agent against the built-in simulated provider (offline)."""
    if budget is not None and not budget > 0:
        raise _fail(f"--budget {budget}: expected a dollar amount above 0, e.g. --budget 0.02")
    from agentguard.demo import APIS, run_demo

    if api not in APIS:
        raise _fail(f"--api {api}: expected one of {', '.join(APIS)}")
    if api == "anthropic":
        try:
            import anthropic  # noqa: F401
        except ImportError:
            raise _fail(
                '--api anthropic needs the anthropic SDK: pip install "agentguard[anthropic]"'
            ) from None
    raise typer.Exit(run_demo(console, steps=steps, budget_usd=budget, model=model, api=api))


def main() -> None:
    """Entry point of the ``agentguard`` console script (and ``python -m agentguard``)."""
    app(prog_name="agentguard")


if __name__ == "__main__":
    main()
