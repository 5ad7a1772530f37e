"""``agentguard route ...``: routing commands (calibrating the threshold)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["route_app"]

route_app = typer.Typer(help="Per-step model routing.", no_args_is_help=True)


@route_app.command("calibrate")
def calibrate(
    target_large_share: Annotated[
        float,
        typer.Option(
            "--target-large-share",
            min=0.0,
            max=1.0,
            help="Share of calls to send to the larger tier, 0..1.",
        ),
    ],
    events: Annotated[
        Path,
        typer.Option(
            "--events",
            help="JSON lines holding 'route' events (agentguard's log; '-' for stdin).",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the routing.threshold that sends the target share of recorded steps up a tier."""
    import json

    # Imported here: the routing package is heavy, and `agentguard --help` should not pay for it.
    from agentguard.routing.calibrate import calibrate_threshold, read_route_scores

    try:
        if str(events) == "-":
            scores = read_route_scores(sys.stdin, "stdin")
        else:
            with events.open(encoding="utf-8") as handle:
                scores = read_route_scores(handle, str(events))
        result = calibrate_threshold(scores, target_large_share)
    except OSError as exc:
        typer.echo(
            f"agentguard: error: --events {events}: cannot read: {exc.strerror or exc}", err=True
        )
        raise typer.Exit(2) from None
    except ValueError as exc:
        typer.echo(f"agentguard: error: --events {events}: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
        return
    typer.echo(
        f"routing.threshold = {result.threshold}  "
        f"# {result.large_share:.1%} of {result.events} recorded steps go to the larger tier "
        f"(target {result.target_large_share:.1%})"
    )
