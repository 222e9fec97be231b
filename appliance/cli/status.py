"""`appliance status`: the human overview of workers, queues, beat and recent failures."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from appliance.cli.context import CliContext, echo_json, json_option, pass_cli
from appliance.core import keys
from appliance.core.text import first_line


def collect_status(cli: CliContext) -> dict[str, Any]:
    """Everything `status` shows, as data (secrets never included)."""
    from appliance.core.text import mask_url
    from appliance.health.checks import read_heartbeats
    from appliance.health.queues import queue_stats, unacked_stats
    from appliance.health.resp import Resp, RespConnectionError, RespError

    settings = cli.settings
    now = time.time()
    data: dict[str, Any] = {"broker": mask_url(settings.broker_url)}
    try:
        with Resp(settings.broker_url) as conn:
            data["workers"] = sorted(read_heartbeats(conn), key=lambda b: str(b.get("hostname")))
            data["queues"] = queue_stats(conn, settings.queues, now)
            data["unacked"] = unacked_stats(conn, now)
            raw = conn.call("GET", keys.BEAT_TICK_KEY)
            data["beat"] = json.loads(raw) if raw else None
    except (RespConnectionError, RespError, ValueError) as exc:
        from appliance.broker import reach

        url = settings.broker_url
        data["error"] = reach.problem(url, first_line(exc), reach.origin_of(url))
    try:
        from appliance.records import store

        data["recent_failures"] = [
            {k: r[k] for k in ("id", "name", "error", "finished_at", "retries")}
            for r in store.list_records(settings.effective_database_url, status="FAILURE", limit=10)
        ]
        data["record_counts"] = store.count_by_status(settings.effective_database_url)
    except Exception as exc:
        data["records_error"] = f"task records unavailable ({first_line(exc)})"
    return data


def _age(stamp: float | None) -> str:
    return f"{time.time() - stamp:.0f}s ago" if stamp else "never"


def oldest(queue: dict[str, Any]) -> str:
    """The age of a queue's oldest message, or ``-`` when it is empty."""
    if not queue.get("depth") and not queue.get("count"):
        return "-"
    return f"{queue['oldest_age']:.0f}s"


def counts(by_status: dict[str, int]) -> str:
    """``SUCCESS 1, FAILURE 2`` (in the order of the states), or ``none``."""
    from appliance.core.constants import TASK_STATES

    order = {state: i for i, state in enumerate(TASK_STATES)}
    ranked = sorted(by_status.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    return ", ".join(f"{state} {n}" for state, n in ranked) or "none"


@click.command("status")
@json_option
@pass_cli
def status(cli: CliContext, as_json: bool) -> None:
    """Workers, queues, beat and recent failures at a glance.

    Exit 69 when Redis cannot be read (what the records say is printed all the same).
    """
    from appliance.errors import BrokerUnavailableError

    data = collect_status(cli)
    if as_json:
        echo_json(data)
    else:
        _print(data)
    if "error" in data:
        raise BrokerUnavailableError(data["error"])


def _print(data: dict[str, Any]) -> None:
    from tabulate import tabulate

    click.echo(f"broker: {data['broker']}" + ("  (not readable)" if "error" in data else ""))
    workers = data.get("workers", [])
    if "error" not in data:
        click.echo(f"\nworkers ({len(workers)}):")
    if workers:
        rows = [
            [
                w["hostname"],
                w["group"],
                ",".join(w["queues"]),
                w["active"],
                w["succeeded"],
                w["failed"],
                f"{w['rss_kib'] // 1024} MiB",
                _age(w["updated_at"]),
            ]
            for w in workers
        ]
        headers = ["node", "group", "queues", "active", "ok", "failed", "rss", "heartbeat"]
        click.echo(tabulate(rows, headers=headers))
    if "queues" in data:
        click.echo("\nqueues:")
        rows = [[q["queue"], q["depth"], oldest(q)] for q in data["queues"]]
        click.echo(tabulate(rows, headers=["queue", "waiting", "oldest"]))
        click.echo(f"unacked: {data['unacked']['count']}")
    beat = data.get("beat")
    if beat:
        click.echo(f"\nbeat: leader {beat.get('leader')}, last tick {_age(beat.get('last_tick'))}")
    elif "error" not in data:
        click.echo("\nbeat: no leader ticking")
    if "records_error" in data:
        click.echo(f"\n{data['records_error']}")
    else:
        click.echo(f"\nrecords: {counts(data['record_counts'])}")
        failures = data["recent_failures"]
        if failures:
            click.echo("recent failures:")
            for f in failures:
                when = (f["finished_at"] or "")[:19].replace("T", " ")
                click.echo(f"  {when}  {f['name']}  {f['id']}  {(f['error'] or '')[:80]}")


COMMANDS = [status]
