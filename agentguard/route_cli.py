"""``agentguard route ...``: routing commands (what routed steps came to; calibrating the
threshold)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

__all__ = ["route_app"]

route_app = typer.Typer(help="Per-step model routing.", no_args_is_help=True)

EventsOption = Annotated[
    Path,
    typer.Option(
        "--events",
        help="JSON lines holding agentguard's 'route' and 'route_outcome' events "
        "(agentguard's log; '-' for stdin).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"agentguard: error: {message}", err=True)
    return typer.Exit(2)


@contextmanager
def _events(path: Path) -> Iterator[tuple[TextIO, str]]:
    """The events file (or stdin) and its name; a file that cannot be read exits 2."""
    if str(path) == "-":
        yield sys.stdin, "stdin"
        return
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise _fail(f"--events {path}: cannot read: {exc.strerror or exc}") from None
    with handle:
        yield handle, str(path)


def _read(path: Path, reader: Callable[[TextIO, str], Any]) -> Any:
    with _events(path) as (handle, name):
        try:
            return reader(handle, name)
        except OSError as exc:
            raise _fail(f"--events {path}: cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise _fail(f"--events {path}: {exc}") from None


@route_app.command("calibrate")
def calibrate(
    events: EventsOption,
    target_large_share: Annotated[
        float | None,
        typer.Option(
            "--target-large-share",
            min=0.0,
            max=1.0,
            help="Share of calls to send to the larger tier, 0..1 (read from 'route' events).",
            show_default=False,
        ),
    ] = None,
    target_escalation_rate: Annotated[
        float | None,
        typer.Option(
            "--target-escalation-rate",
            min=0.0,
            max=1.0,
            help="Share of cheap steps to see escalated, 0..1 (read from 'route_outcome' events).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file whose routing.target_* is used when no --target-* is given.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print the routing.threshold that moves recorded traffic toward a target: a share of
    steps sent up a tier, or a share of cheap steps escalated. Nothing changes until the value
    is put in the config."""
    import json

    # Imported here: the routing package is heavy, and `agentguard --help` should not pay for it.
    from agentguard.routing.calibrate import calibrate_threshold, read_route_scores
    from agentguard.routing.outcomes import calibrate_escalation, read_outcomes

    if target_large_share is not None and target_escalation_rate is not None:
        raise _fail("give one of --target-large-share and --target-escalation-rate, not both")
    if target_large_share is None and target_escalation_rate is None:
        target_large_share, target_escalation_rate = _configured_targets(config)
    result: Any
    if target_escalation_rate is not None:
        outcomes = _read(events, read_outcomes)
        try:
            result = calibrate_escalation(outcomes, target_escalation_rate)
        except ValueError as exc:
            raise _fail(f"--events {events}: {exc}") from None
        summary = (
            f"{result.escalation_rate:.1%} of the recorded cheap steps under it were escalated "
            f"(target {result.target_escalation_rate:.1%}); {result.large_share:.1%} of "
            f"{result.events} steps go to the larger tier"
        )
    else:
        assert target_large_share is not None
        scores = _read(events, read_route_scores)
        try:
            result = calibrate_threshold(scores, target_large_share)
        except ValueError as exc:
            raise _fail(f"--events {events}: {exc}") from None
        summary = (
            f"{result.large_share:.1%} of {result.events} recorded steps go to the larger tier "
            f"(target {result.target_large_share:.1%})"
        )
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
        return
    typer.echo(f"routing.threshold = {result.threshold}  # {summary}")


def _configured_targets(config: Path | None) -> tuple[float | None, float | None]:
    from agentguard.config import GuardConfig
    from agentguard.errors import ConfigError

    try:
        routing = GuardConfig.discover(config, origin="--config").routing
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if routing.target_escalation_rate is not None:
        return None, routing.target_escalation_rate
    if routing.target_large_share is not None:
        return routing.target_large_share, None
    raise _fail(
        "no target: give --target-large-share or --target-escalation-rate, or set "
        "routing.target_large_share or routing.target_escalation_rate in the config"
    )


@route_app.command("report")
def report_command(events: EventsOption, as_json: JsonOption = False) -> None:
    """Show, per tier and kind of step, how often routed steps were escalated, fell back to
    another model, were parked or failed (from recorded 'route_outcome' events)."""
    import json

    from agentguard.routing.outcomes import read_outcomes, report

    rows = report(_read(events, read_outcomes))
    if as_json:
        sys.stdout.write(json.dumps([row.as_dict() for row in rows], indent=2) + "\n")
        return
    if not rows:
        typer.echo(f"no route_outcome events in {events}")
        return
    header = ("tier", "kind", "steps", "escalated", "fell back", "parked", "failed")
    lines = [header]
    for row in rows:
        lines.append(
            (
                row.tier,
                row.kind,
                str(row.steps),
                f"{row.escalated} ({row.escalated / row.steps:.0%})",
                f"{row.fell_back} ({row.fell_back / row.steps:.0%})",
                str(row.parked),
                str(row.failed),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
