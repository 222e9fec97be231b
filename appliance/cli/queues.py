"""`appliance queues [purge NAME]`: what waits in Redis, and removing it."""

from __future__ import annotations

import time
from typing import Any

import click

from appliance.cli.context import CliContext, echo_json, pass_cli


def _snapshot(cli: CliContext) -> dict[str, Any]:
    from appliance.health.queues import queue_stats, unacked_stats
    from appliance.health.resp import Resp, RespConnectionError, RespError

    settings = cli.settings
    now = time.time()
    try:
        with Resp(settings.broker_url) as conn:
            return {
                "queues": queue_stats(conn, settings.queues, now),
                "unacked": unacked_stats(conn, now),
            }
    except (RespConnectionError, RespError) as exc:
        from appliance.broker.admin import unavailable

        raise unavailable(settings, exc) from None


@click.group("queues", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def queues(ctx: click.Context, as_json: bool) -> None:
    """Show each queue's depth (all priorities), its oldest message's age, and unacked."""
    if ctx.invoked_subcommand is not None:
        return
    cli = ctx.find_object(CliContext)
    assert cli is not None
    data = _snapshot(cli)
    if as_json:
        echo_json(data)
        return
    from tabulate import tabulate

    rows = [
        [
            q["queue"],
            q["depth"],
            " ".join(f"p{p}:{n}" for p, n in q["by_priority"].items() if n),
            f"{q['oldest_age']:.0f}s",
        ]
        for q in data["queues"]
    ]
    click.echo(tabulate(rows, headers=["queue", "depth", "by priority", "oldest"]))
    unacked = data["unacked"]
    click.echo(
        f"\nunacked (taken by workers, not yet acknowledged): {unacked['count']}, "
        f"oldest {unacked['oldest_age']:.0f}s"
    )


@queues.command("purge")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def purge(cli: CliContext, name: str, yes: bool) -> None:
    """Delete every waiting message of queue NAME (all priorities); unacked ones are kept.

    Their task records become REVOKED ("purged"), so nothing vanishes silently.
    """
    import redis

    from appliance.broker.admin import client, message_task_id, unavailable
    from appliance.core.keys import queue_keys

    settings = cli.settings
    if name not in settings.queues:
        raise click.BadParameter(f"unknown queue {name!r}; use one of {', '.join(settings.queues)}")
    if not yes:
        click.confirm(f"Delete every waiting message in queue {name!r}?", abort=True)
    try:
        pipe = client(settings).pipeline(transaction=True)
        for key in queue_keys(name):
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
        replies = pipe.execute()
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from None
    messages = [raw for reply in replies[0::2] for raw in reply]
    ids = [i for i in (message_task_id(raw) for raw in messages) if i]
    _mark_purged(cli, ids)
    click.echo(
        f"purged {len(messages)} message(s) from queue {name} ({len(ids)} task(s) marked REVOKED)"
    )


def _mark_purged(cli: CliContext, ids: list[str]) -> None:
    from appliance.records import maintenance

    try:
        maintenance.revoke_many(cli.records_url, ids, reason="purged by operator")
    except Exception as exc:
        click.echo(f"appliance: warning: task records not updated ({exc})", err=True)


COMMANDS = [queues]
