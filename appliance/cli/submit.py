"""`appliance submit`: publish a task, optionally wait for its result."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from appliance.cli.context import CliContext, echo_json, pass_cli
from appliance.core.timeparse import parse_instant
from appliance.errors import InterruptedByUser


def _json_param(expected: type, what: str, example: str) -> Any:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            data = json.loads(value)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:  # json.loads recurses per nesting level
            raise click.BadParameter("JSON nested too deeply; fix: flatten it") from None
        if not isinstance(data, expected):
            raise click.BadParameter(f"must be a JSON {what}, e.g. {example}")
        return data

    return convert


def _eta(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("submit")
@click.argument("name")
@click.option(
    "--args",
    "args",
    callback=_json_param(list, "array", "[2, 3]"),
    help="Positional arguments as a JSON array.",
)
@click.option(
    "--kwargs",
    "kwargs",
    callback=_json_param(dict, "object", '{"x": 1}'),
    help="Keyword arguments as a JSON object.",
)
@click.option(
    "--queue", "-q", help="Queue to publish to (default: routes, else the default queue)."
)
@click.option(
    "--countdown", type=click.FloatRange(min=0), help="Run no earlier than S seconds from now."
)
@click.option("--eta", callback=_eta, help="Run no earlier than this ISO 8601 time (naive = UTC).")
@click.option(
    "--priority", type=click.IntRange(0, 9), help="0 (highest) to 9 (lowest), Redis semantics."
)
@click.option(
    "--soft-time-limit",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Raise SoftTimeLimitExceeded in the task after S seconds (this call only).",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Kill the child running the task after S seconds (this call only).",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Wait for the result and print it as JSON (the id goes to stderr).",
)
@click.option("--json", "as_json", is_flag=True, help="Print {id, status, result} as JSON.")
@pass_cli
def submit(
    cli: CliContext,
    name: str,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    queue: str | None,
    countdown: float | None,
    eta: datetime | None,
    priority: int | None,
    soft_time_limit: float | None,
    time_limit: float | None,
    wait: float | None,
    as_json: bool,
) -> None:
    """Submit task NAME; print its id (or, with --wait, its result as JSON).

    Exit codes: 65 unknown task, 69 broker unavailable, 1 the task failed, 75 the wait
    timed out (the task goes on, queued or running), 2 bad arguments (including an ETA or
    time limit beyond APPLIANCE_VISIBILITY_TIMEOUT), 130 interrupted (the task goes on).
    On 65, 69 and 2 nothing is queued.
    """
    from appliance import api

    cli.settings  # noqa: B018  (settings errors first: exit 78 before anything else)
    task_id = api.submit(
        name,
        args=args or [],
        kwargs=kwargs,
        queue=queue,
        countdown=countdown,
        eta=eta,
        priority=priority,
        soft_time_limit=soft_time_limit,
        time_limit=time_limit,
    )
    if wait is None:
        if as_json:
            echo_json({"id": task_id, "status": "PENDING"})
        else:
            click.echo(task_id)
        return
    if not as_json:
        click.echo(f"submitted {name} as {task_id}", err=True)
    try:
        result = api.wait(task_id, wait)
    except KeyboardInterrupt:
        raise InterruptedByUser(
            f"interrupted; task {task_id} stays submitted and goes on: follow it with "
            f"`appliance tasks show {task_id}`, or cancel it with `appliance tasks revoke "
            f"{task_id}`"
        ) from None
    except Exception:
        if as_json:
            record = _safe_record(task_id)
            echo_json(
                {
                    "id": task_id,
                    "status": (record or {}).get("status"),
                    "result": None,
                    "error": (record or {}).get("error"),
                }
            )
        raise
    if as_json:
        echo_json({"id": task_id, "status": "SUCCESS", "result": result})
    else:
        click.echo(json.dumps(result))


def _safe_record(task_id: str) -> dict[str, Any] | None:
    from appliance import api

    try:
        return api.get_task(task_id)
    except Exception:
        return None


COMMANDS = [submit]
