"""The `appliance` admin CLI: thin click commands over importable functions."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from appliance.cli.context import CliContext
from appliance.core import exitcodes
from appliance.core.text import first_line
from appliance.errors import ApplianceError


class _Group(click.Group):
    """Turns every expected failure into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApplianceError as exc:
            click.echo(f"appliance: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except Exception as exc:
            from appliance.broker import acl

            if not acl.is_noperm(exc):
                raise
            # Redis refused a command, key or channel to the ACL user (e.g. no &*).
            reason = first_line(exc)
            click.echo(
                f"appliance: error: Redis refused this to the ACL user ({reason}); fix: grant "
                "the user `~* &* +@all -@dangerous` (docs/redis.md, ACL user)",
                err=True,
            )
            ctx.exit(exitcodes.BROKER_UNAVAILABLE)
        except KeyboardInterrupt:
            click.echo("appliance: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="celery-appliance")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Celery Appliance: run and operate a production Celery worker + beat.

    Settings come from APPLIANCE_* environment variables and the env file
    (APPLIANCE_ENV_FILE, default /etc/appliance/appliance.env). Exit codes are listed
    in the README; 78 always means a configuration error.
    """
    ctx.obj = CliContext()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="appliance: %(levelname)s: %(message)s")


def _register() -> None:
    from appliance.cli import (
        config,
        db,
        deadletter,
        deploy,
        health,
        queues,
        redis,
        run,
        status,
        submit,
        tasks,
    )

    modules = (config, db, deadletter, deploy, health, queues, redis, run, status, submit, tasks)
    for module in modules:
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="appliance", standalone_mode=True) or exitcodes.OK)
