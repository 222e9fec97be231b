"""`appliance tasks list|show|names`: the task records."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click

from appliance.cli.context import (
    CliContext,
    confirm_destructive,
    echo_json,
    json_option,
    pass_cli,
)
from appliance.core.constants import TASK_STATES as STATES
from appliance.core.timeparse import parse_since
from appliance.errors import RecordNotFoundError


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
    if not records:
        click.echo("no task records match")
        return
    rows = [
        [r["id"], r["name"], r["status"], _short(r["created_at"]), _args(r), _note(r)]
        for r in records
    ]
    headers = ["id", "name", "status", "created (UTC)", "args", "note"]
    click.echo(table(fit(rows, headers), headers))


# `tasks list` fits 100 columns: the args, then the note (the error), then the name give
# way, down to these widths, cut with an ellipsis; --json and `tasks show` have it all.
LIST_WIDTH = 100
_SHRINK = ((4, 8), (5, 20), (1, 12), (5, 12))  # (column, narrowest), in turn


def fit(rows: list[list[str]], headers: list[str], width: int = LIST_WIDTH) -> list[list[str]]:
    """*rows* with the shrinkable columns cut so that the table fits *width* columns."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    over = sum(widths) + 2 * (len(widths) - 1) - width
    for column, narrowest in _SHRINK:
        if over <= 0:
            break
        cut = min(over, widths[column] - max(narrowest, len(headers[column])))
        if cut > 0:
            widths[column] -= cut
            over -= cut
    return [[_cut(cell, widths[i]) for i, cell in enumerate(row)] for row in rows]


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Left-aligned columns two spaces apart under a dashed rule, no trailing blanks."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _short(stamp: str | None) -> str:
    """``12-04 19:14:54`` (UTC) of an ISO time."""
    return stamp[5:19].replace("T", " ") if stamp else ""


def _args(record: dict[str, Any]) -> str:
    import json

    args, kwargs = record.get("args"), record.get("kwargs")
    text = json.dumps(args) if args else ""
    if kwargs:
        text = f"{text} {json.dumps(kwargs)}".strip()
    return text


def _note(record: dict[str, Any]) -> str:
    """What a reader wants next to the state: the error, where it runs, how long it took."""
    status = record["status"]
    retries = f"after {record['retries']} retries" if record.get("retries") else ""
    if status in ("FAILURE", "RETRY", "REVOKED"):
        error = (record.get("error") or "").strip().splitlines()
        return "; ".join(x for x in (error[0] if error else "", retries) if x)
    if status in ("STARTED", "PROGRESS"):
        worker = f"on {record['worker']}" if record.get("worker") else "running"
        progress = f"{record['progress']}%" if record.get("progress") else ""
        return ", ".join(x for x in (worker, progress, record.get("progress_message")) if x)
    if status == "SUCCESS":
        took = _took(record.get("started_at") or record.get("created_at"), record["finished_at"])
        return " ".join(x for x in (f"took {took}" if took else "", retries) if x)
    return retries


def _took(start: str | None, end: str | None) -> str:
    if not start or not end:
        return ""
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


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


@tasks.command("retry")
@click.argument("task_id", required=False)
@click.option("--failed", is_flag=True, help="Retry every FAILURE record (with --name/--since).")
@click.option("--name", help="With --failed: only tasks of this name.")
@click.option("--since", callback=_since, help="With --failed: created since an age or ISO time.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--force", is_flag=True, help="Retry TASK_ID even if it is not FAILURE/REVOKED.")
@pass_cli
def retry(
    cli: CliContext,
    task_id: str | None,
    failed: bool,
    name: str | None,
    since: datetime | None,
    limit: int,
    force: bool,
) -> None:
    """Republish a failed task (or every failed one) with its original arguments."""
    from appliance import operations

    if bool(task_id) == failed:
        raise click.UsageError("give either TASK_ID or --failed")
    if task_id:
        new_id = operations.retry(cli.settings, task_id, force=force)
        click.echo(new_id if new_id == task_id else f"{task_id} -> {new_id}")
        return
    pairs = operations.retry_failed(cli.settings, name=name, since=since, limit=limit)
    for old, new in pairs:
        click.echo(new if new == old else f"{old} -> {new}")
    click.echo(f"retried {len(pairs)} task(s)", err=True)


@tasks.command("revoke")
@click.argument("task_id")
@click.option(
    "--terminate", is_flag=True, help="Also kill it if it is running (SIGTERM to its child)."
)
@click.option(
    "--force",
    is_flag=True,
    help="Revoke TASK_ID even without a task record (a task sent by a client without records).",
)
@pass_cli
def revoke(cli: CliContext, task_id: str, terminate: bool, force: bool) -> None:
    """Stop a task from running; remembered in Redis for workers that start later.

    Exit 66 when no task record has that id (nothing revoked) unless --force. A task that
    is running goes on to the end unless --terminate.
    """
    from appliance import operations

    record = operations.revoke(cli.settings, task_id, terminate=terminate, must_exist=not force)
    status = record["status"] if record else None
    if status is None:
        note = " (it has no task record; any worker that gets it discards it)"
    elif status in ("SUCCESS", "FAILURE", "REVOKED"):
        note = f"; it had already ended {status}, so nothing changes"
    elif status in ("STARTED", "PROGRESS") and not terminate:
        on = f" on {record['worker']}" if record and record.get("worker") else ""
        note = f"; it is running now{on} and will finish: use --terminate to stop it"
    elif status in ("STARTED", "PROGRESS"):
        note = "; it is running: its process is being stopped"
    else:
        note = f" (it was {status}; it will not run)"
    click.echo(f"revoked {task_id}{note}")


@tasks.command("purge")
@click.option("--older-than", "older_than", required=True, help="Age like 30d, 12h.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(STATES, case_sensitive=False),
    help="Only these states (repeatable; default: SUCCESS, FAILURE, REVOKED).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def purge(cli: CliContext, older_than: str, statuses: tuple[str, ...], yes: bool) -> None:
    """Delete task records older than an age (finished ones unless --status says otherwise)."""
    from appliance import operations
    from appliance.core.constants import TERMINAL_STATES
    from appliance.core.timeparse import parse_age
    from appliance.records import maintenance
    from appliance.records.db import translate_errors

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    chosen = tuple(s.upper() for s in statuses) or TERMINAL_STATES
    cutoff = datetime.now(UTC) - age
    url = cli.records_url
    with translate_errors(url):
        count = maintenance.count_records(url, before=cutoff, statuses=chosen)
        if count == 0:
            click.echo("no task records match")
            return
        confirm_destructive(
            "appliance tasks purge",
            f"{count} task record(s) ({', '.join(chosen)}) older than {older_than}",
            yes,
        )

        if count > 1000:
            batches = list(range(0, count, 1000))
            with click.progressbar(batches, label="deleting", file=sys.stderr) as bar:
                deleted = operations.purge_records(
                    cli.settings, cutoff, chosen, progress=lambda _: iter(bar)
                )
        else:
            deleted = operations.purge_records(cli.settings, cutoff, chosen)
    click.echo(f"deleted {deleted} task record(s)")


@tasks.command("reconcile")
@click.option("--dry-run", is_flag=True, help="Only report what would be re-published.")
@click.option(
    "--min-age",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Only records PENDING for longer than this (default: APPLIANCE_RECONCILE_MIN_AGE).",
)
@json_option
@pass_cli
def reconcile(cli: CliContext, dry_run: bool, min_age: float | None, as_json: bool) -> None:
    """Re-publish tasks whose record is PENDING but whose message Redis lost.

    Same id, name, args, kwargs and queue; not an ETA, priority or workflow links (see
    docs/operations.md, Lost messages). One log line per re-published id on stderr. Exit
    codes: 69 Redis unavailable, 74 task-record database unavailable.
    """
    from appliance.recovery import reconcile as reconciler

    report = reconciler.reconcile(cli.settings, min_age=min_age, dry_run=dry_run)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.summary())
