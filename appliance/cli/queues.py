"""`appliance queues [purge NAME]`: what waits in Redis, and removing it."""

from __future__ import annotations

import time
from typing import Any

import click

from appliance.cli.context import CliContext, confirm_destructive, echo_json, pass_cli


def _snapshot(cli: CliContext) -> dict[str, Any]:
    from appliance.health.checks import read_heartbeats
    from appliance.health.queues import (
        consuming_groups,
        queue_stats,
        unacked_stats,
        unconsumed_message,
        unconsumed_queues,
    )
    from appliance.health.resp import Resp, RespConnectionError, RespError

    settings = cli.settings
    now = time.time()
    try:
        with Resp(settings.broker_url) as conn:
            beats = read_heartbeats(conn)
            # Non-empty queue lists no worker group consumes (configured or bound by kombu).
            unconsumed = unconsumed_queues(conn, settings.queues, settings.worker_groups, beats)
            extra = [u["queue"] for u in unconsumed if not u["configured"]]
            stats = queue_stats(conn, [*settings.queues, *extra], now)
            unacked = unacked_stats(conn, now)
    except (RespConnectionError, RespError) as exc:
        from appliance.broker.admin import unavailable

        raise unavailable(settings, exc) from None
    consumers = consuming_groups(settings.worker_groups, beats)
    for stat in stats:
        stat["consumed_by"] = consumers.get(stat["queue"], [])
        stat["configured"] = stat["queue"] in settings.queues
    return {
        "queues": stats,
        "unacked": unacked,
        "warnings": [
            unconsumed_message(u, settings.queues, settings.worker_groups) for u in unconsumed
        ],
    }


@click.group("queues", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def queues(ctx: click.Context, as_json: bool) -> None:
    """Show each queue's depth (all priorities), its oldest message's age, the worker groups
    consuming it, and unacked; warn about waiting messages that no worker group consumes."""
    if ctx.invoked_subcommand is not None:
        return
    cli = ctx.find_object(CliContext)
    assert cli is not None
    data = _snapshot(cli)
    if as_json:
        echo_json(data)
        return
    from tabulate import tabulate

    from appliance.cli.status import oldest

    rows = [
        [
            q["queue"],
            q["depth"],
            " ".join(f"p{p}:{n}" for p, n in q["by_priority"].items() if n),
            oldest(q),
            ",".join(q["consumed_by"]) or "(none)",
        ]
        for q in data["queues"]
    ]
    headers = ["queue", "depth", "by priority", "oldest", "consumed by"]
    click.echo(tabulate(rows, headers=headers))
    unacked = data["unacked"]
    click.echo(
        f"\nunacked (taken by workers, not yet acknowledged): {unacked['count']}, "
        f"oldest {oldest(unacked)}"
    )
    for warning in data["warnings"]:
        click.echo(f"appliance: warning: {warning}", err=True)


@queues.command("purge")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def purge(cli: CliContext, name: str, yes: bool) -> None:
    """Delete every waiting message of queue NAME (all priorities); unacked ones are kept.

    Their task records become REVOKED ("purged"), so nothing vanishes silently.
    """
    import redis

    from appliance.broker.admin import client, unavailable
    from appliance.broker.purge import purge_queue

    settings = cli.settings
    if name not in settings.queues:
        raise click.BadParameter(f"unknown queue {name!r}; use one of {', '.join(settings.queues)}")
    confirm_destructive(
        "appliance queues purge", f"every waiting message of queue {name} (all priorities)", yes
    )
    try:
        count, ids = purge_queue(client(settings), name)
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from None
    _mark_purged(cli, ids)
    click.echo(f"purged {count} message(s) from queue {name} ({len(ids)} task(s) marked REVOKED)")


def _mark_purged(cli: CliContext, ids: list[str]) -> None:
    from appliance.broker.purge import PURGED_REASON
    from appliance.records import maintenance

    try:
        maintenance.revoke_many(cli.records_url, ids, reason=PURGED_REASON)
    except Exception as exc:
        click.echo(f"appliance: warning: task records not updated ({exc})", err=True)


COMMANDS = [queues]
