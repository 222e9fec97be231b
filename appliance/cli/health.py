"""`appliance health`: Nagios-style checks for cron, timers and monitoring."""

from __future__ import annotations

import sys

import click

from appliance.health.config import DEFAULT_THRESHOLDS

_UNKNOWN = 3


def _thresholds(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, float]:
    parsed: dict[str, float] = {}
    for item in value:
        name, sep, number = item.partition("=")
        if not sep or name not in DEFAULT_THRESHOLDS:
            raise click.BadParameter(
                f"{item!r}: use NAME=VALUE with NAME one of {', '.join(DEFAULT_THRESHOLDS)}"
            )
        try:
            parsed[name] = float(number)
        except ValueError:
            raise click.BadParameter(f"{item!r}: {number!r} is not a number") from None
    return parsed


@click.command("health")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["nagios", "json", "prometheus"]),
    default="nagios",
    show_default=True,
    help="Output format.",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option(
    "--textfile",
    type=click.Path(dir_okay=False),
    help="Also write a node_exporter textfile here (atomically).",
)
@click.option(
    "--db",
    "with_database",
    is_flag=True,
    help="Also check the task-record database (schema, stuck tasks).",
)
@click.option(
    "--warn",
    multiple=True,
    callback=_thresholds,
    metavar="NAME=VALUE",
    help=f"Warning threshold; NAME: {', '.join(DEFAULT_THRESHOLDS)}.",
)
@click.option(
    "--crit",
    multiple=True,
    callback=_thresholds,
    metavar="NAME=VALUE",
    help="Critical threshold (same names).",
)
def health(
    fmt: str,
    as_json: bool,
    textfile: str | None,
    with_database: bool,
    warn: dict[str, float],
    crit: dict[str, float],
) -> None:
    """Check Redis, queues, workers, beat (and with --db the records); Nagios exit codes.

    0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the checker itself failed, e.g. bad settings).
    Reads Redis directly and imports neither the Celery app nor task modules. Thresholds
    also come from APPLIANCE_HEALTH_<NAME>_WARN / _CRIT.
    """
    from appliance.errors import ApplianceError
    from appliance.health import output
    from appliance.health.config import load_health_config
    from appliance.health.run import run_checks

    overrides = {name: (warn.get(name), crit.get(name)) for name in set(warn) | set(crit)}
    try:
        checks = run_checks(load_health_config(overrides), with_database=with_database)
        if textfile:
            from prometheus_client import write_to_textfile

            write_to_textfile(textfile, output.prometheus(checks))
    except ApplianceError as exc:
        click.echo(f"APPLIANCE UNKNOWN - {exc}")
        sys.exit(_UNKNOWN)
    except Exception as exc:  # the checker's own failure: Nagios UNKNOWN, never a traceback
        click.echo(f"APPLIANCE UNKNOWN - health check failed: {type(exc).__name__}: {exc}")
        sys.exit(_UNKNOWN)
    fmt = "json" if as_json else fmt
    if fmt == "json":
        click.echo(output.as_json(checks))
    elif fmt == "prometheus":
        from prometheus_client import generate_latest

        click.echo(generate_latest(output.prometheus(checks)).decode(), nl=False)
    else:
        click.echo(output.nagios(checks))
    sys.exit(output.overall(checks))


COMMANDS = [health]
