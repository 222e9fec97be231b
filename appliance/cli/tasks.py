"""`appliance tasks list|show|names`: the task records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from appliance.cli.context import CliContext, echo_json, json_option, pass_cli
from appliance.constants import TASK_STATES as STATES
from appliance.errors import RecordNotFoundError
from appliance.timeparse import parse_since


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group("tasks")
def tasks() -> None:
    """Inspect the task records."""


@tasks.command("list")
@click.option("--status", type=click.Choice(STATES, case_sensitive=False), help="Only this state.")
@click.option("--name", help="Only tasks of this name.")
@click.option("--since", callback=_since, help="Created since an age (30m, 2h, 7d) or ISO time.")
@click.option("--root", "root_id", help="Only members of the workflow with this root id.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@pass_cli
def list_(
    cli: CliContext,
    status: str | None,
    name: str | None,
    since: datetime | None,
    root_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List task records, newest first."""
    from appliance.records import store
    from appliance.records.db import translate_errors

    url = cli.records_url
    with translate_errors(url):
        records = store.list_records(
            url,
            status=status.upper() if status else None,
            name=name,
            since=since,
            root_id=root_id,
            limit=limit,
        )
    if as_json:
        echo_json(records)
        return
    from tabulate import tabulate

    rows = [
        [
            r["id"],
            r["name"],
            r["status"],
            f"{r['progress']}%",
            r["retries"],
            r["worker"] or "",
            _short(r["created_at"]),
            _short(r["finished_at"]),
        ]
        for r in records
    ]
    headers = ["id", "name", "status", "progress", "retries", "worker", "created", "finished"]
    click.echo(tabulate(rows, headers=headers) if rows else "no task records match")


def _short(stamp: str | None) -> str:
    return stamp[:19].replace("T", " ") if stamp else ""


@tasks.command("show")
@click.argument("task_id")
@json_option
@pass_cli
def show(cli: CliContext, task_id: str, as_json: bool) -> None:
    """Show one task record."""
    from appliance.records import store
    from appliance.records.db import translate_errors

    url = cli.records_url
    with translate_errors(url):
        record = store.get_record(url, task_id)
    if record is None:
        raise RecordNotFoundError(
            f"no task record with id {task_id}; fix: check the id (`appliance tasks list`)"
        )
    if as_json:
        echo_json(record)
        return
    for key, value in record.items():
        if value is None or value == "":
            continue
        click.echo(f"{key + ':':<18}{_text(value)}")


def _text(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


@tasks.command("names")
@json_option
def names(as_json: bool) -> None:
    """List the task names this appliance can run."""
    from appliance.celery_app import load_tasks

    found = sorted(n for n in load_tasks().tasks if not n.startswith("celery."))
    if as_json:
        echo_json(found)
    else:
        click.echo("\n".join(found))


COMMANDS = [tasks]
