"""`appliance redis check|tune`: Redis as a broker, and the settings that keep tasks safe."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli.context import CliContext, echo_json, json_option, pass_cli
from appliance.cli.health import NagiosCommand


@click.group("redis")
def redis_group() -> None:
    """Check and tune the broker's Redis."""


@redis_group.command("check", cls=NagiosCommand)
@json_option
@pass_cli
def check(cli: CliContext, as_json: bool) -> None:
    """The Redis part of `appliance health`, with advice; Nagios exit codes."""
    import time

    from appliance.broker.tuning import host_advice
    from appliance.health import output
    from appliance.health.checks import check_redis, unreadable
    from appliance.health.config import load_health_config
    from appliance.health.resp import Resp, RespConnectionError, RespError

    cfg = load_health_config()
    try:
        with Resp(cfg.broker_url) as conn:
            checks = check_redis(cfg, conn, time.time())
    except (RespConnectionError, RespError) as exc:
        checks = [unreadable(cfg, exc, "the check")]
    advice = host_advice()
    if as_json:
        echo_json(
            {
                "status": output.overall(checks),
                "checks": [c.to_dict() for c in checks],
                "host_advice": advice,
            }
        )
    else:
        click.echo(output.nagios(checks))
        for line in advice:
            click.echo(f"advice: {line}")
    sys.exit(output.overall(checks))


@redis_group.command("tune")
@click.option(
    "--apply", "do_apply", is_flag=True, help="CONFIG SET the values (and CONFIG REWRITE)."
)
@click.option(
    "--maxmemory",
    help="Size like 256mb or 2gb (default: 25 % of this host's RAM, 256 MiB to 8 GiB).",
)
@click.option(
    "--policy", default="noeviction", show_default=True, help="Only noeviction is accepted."
)
@click.option(
    "--conf-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a redis.conf snippet here (to include from redis.conf).",
)
@json_option
@pass_cli
def tune(
    cli: CliContext,
    do_apply: bool,
    maxmemory: str | None,
    policy: str,
    conf_out: Path | None,
    as_json: bool,
) -> None:
    """Show (and with --apply set) maxmemory, noeviction and AOF for a broker."""
    import redis

    from appliance.broker.acl import acl_user, grant, is_noperm
    from appliance.broker.admin import client, unavailable
    from appliance.broker.tuning import (
        Plan,
        UnsafePolicyError,
        apply,
        check_policy,
        current,
        host_advice,
        parse_size,
        recommended_maxmemory,
    )
    from appliance.errors import ApplianceError

    try:
        check_policy(policy)
    except UnsafePolicyError as exc:
        raise click.BadParameter(str(exc), param_hint="--policy") from None
    try:
        size = parse_size(maxmemory) if maxmemory else recommended_maxmemory()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--maxmemory") from None
    plan = Plan(maxmemory=size, policy=policy)
    settings = cli.settings
    conn = client(settings)
    try:
        before = current(conn)
        result = apply(conn, plan) if do_apply else None
        after = current(conn) if do_apply else before
    except redis.ResponseError as exc:
        if not is_noperm(exc):
            raise ApplianceError(
                f"Redis refused CONFIG ({exc}); fix: run this as a Redis admin, or use "
                "--conf-out and include the snippet from redis.conf"
            ) from None
        # CONFIG is in @dangerous: an appliance ACL user (-@dangerous) may not run it.
        user = acl_user(settings.broker_url)
        fix = (
            "run it with an admin user's URL (APPLIANCE_BROKER_URL=redis://ADMIN:PW@HOST/0 "
            "appliance redis tune --apply), or use --conf-out FILE and include FILE from "
            "redis.conf"
            if do_apply
            else f"{grant(settings.broker_url, '+config|get')} to let it read them, or use "
            "--conf-out FILE and include FILE from redis.conf"
        )
        raise ApplianceError(
            f"Redis refused CONFIG to ACL user {user} (CONFIG is in @dangerous); fix: {fix}"
        ) from None
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from None
    if conf_out:
        conf_out.write_text(plan.snippet())
    advice = host_advice()
    data = {
        "planned": plan.settings(),
        "before": before,
        "after": after,
        "applied": do_apply,
        "result": result[1] if result else None,
        "host_advice": advice,
    }
    if as_json:
        echo_json(data)
        return
    for key, value in plan.settings().items():
        now = after.get(key, "")
        mark = "ok" if now == value else "differs"
        shown, has = (_size(value), _size(now)) if key == "maxmemory" else (value, now)
        click.echo(f"{key:<18} want {shown:<12} has {has or '?':<12} {mark}")
    if result:
        click.echo(result[1])
    elif not do_apply:
        click.echo("dry run: pass --apply to set these values")
    if conf_out:
        click.echo(f"wrote {conf_out}; add `include {conf_out.resolve()}` to redis.conf")
    for line in advice:
        click.echo(f"advice: {line}")


def _size(value: str) -> str:
    """A maxmemory value for people: 5.9GiB; 0 is no limit (--json keeps the bytes)."""
    from appliance.core.text import human_bytes

    if not value.isdigit():
        return value
    return "0 (no limit)" if value == "0" else human_bytes(int(value))


COMMANDS = [redis_group]
