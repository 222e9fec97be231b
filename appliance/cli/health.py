"""`appliance health`: Nagios-style checks for cron, timers and monitoring."""

from __future__ import annotations

import sys
import time
from typing import Any, NoReturn

import click

from appliance.health.config import DEFAULT_THRESHOLDS

_UNKNOWN = 3


class NagiosCommand(click.Command):
    """A command with Nagios exit codes: a bad argument is the checker's own failure,
    UNKNOWN (exit 3) with one line on stdout, not click's usage error (2, CRITICAL)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            path = f"{parent.command_path} {info_name}" if parent else str(info_name)
            click.echo(
                f"APPLIANCE UNKNOWN - bad argument: {exc.format_message().rstrip('.')}; "
                f"fix: see `{path} --help`"
            )
            raise click.exceptions.Exit(_UNKNOWN) from None


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


@click.command("health", cls=NagiosCommand)
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
    from appliance.health.run import run_health

    fmt = "json" if as_json else fmt
    overrides = {name: (warn.get(name), crit.get(name)) for name in set(warn) | set(crit)}
    metrics_wanted = bool(textfile) or fmt == "prometheus"
    started = time.time()
    try:
        cfg = load_health_config(overrides)
        run = run_health(cfg, with_database=with_database, for_metrics=metrics_wanted)
        if textfile:
            from prometheus_client import write_to_textfile

            from appliance.health.metrics import previous_checks

            previous = previous_checks(textfile) if not run.reached_redis else []
            write_to_textfile(textfile, output.prometheus(cfg, run, previous))
    except ApplianceError as exc:
        _unknown(str(exc), fmt, textfile, started)
    except Exception as exc:  # the checker's own failure: Nagios UNKNOWN, never a traceback
        _unknown(f"health check failed: {type(exc).__name__}: {exc}", fmt, textfile, started)
    if fmt == "json":
        click.echo(output.as_json(run.checks))
    elif fmt == "prometheus":
        from prometheus_client import generate_latest

        click.echo(generate_latest(output.prometheus(cfg, run)).decode(), nl=False)
    else:
        click.echo(output.nagios(run.checks))
    sys.exit(output.overall(run.checks))


def _unknown(message: str, fmt: str, textfile: str | None, started: float) -> NoReturn:
    """Exit 3. A textfile is rewritten to say so (status 3 for every check it named, no
    stale value); --format prometheus prints the same metrics and the message on stderr."""
    line = f"APPLIANCE UNKNOWN - {message}"
    if textfile or fmt == "prometheus":
        from prometheus_client import generate_latest, write_to_textfile

        from appliance.health import metrics

        if textfile:
            try:
                previous = metrics.previous_checks(textfile)
                write_to_textfile(textfile, metrics.unknown(previous, started))
            except OSError as exc:
                line += f" (and the textfile was not written: {exc})"
        if fmt == "prometheus":
            click.echo(line, err=True)
            click.echo(generate_latest(metrics.unknown((), started)).decode(), nl=False)
            sys.exit(_UNKNOWN)
    click.echo(line)
    sys.exit(_UNKNOWN)


COMMANDS = [health]
