"""The `appliance` admin CLI: thin click commands over importable functions."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from typing import Any

import click

from appliance.cli.context import CliContext
from appliance.core import exitcodes
from appliance.core.text import first_line, mask_secrets
from appliance.errors import ApplianceError, InterruptedByUser

_BUG = "this is a bug or an environment problem: rerun with --debug for the traceback"


def _debugging(ctx: click.Context) -> bool:
    """--debug, or APPLIANCE_DEBUG=1 in the environment."""
    flag = os.environ.get("APPLIANCE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(ctx.params.get("debug")) or flag


class _Group(click.Group):
    """The one error boundary of every command: each failure becomes one line on stderr
    (``appliance: error: ...; fix: ...``) and its documented exit code; an unexpected
    exception too (exit 70), with its traceback only under --debug / APPLIANCE_DEBUG=1."""

    def invoke(self, ctx: click.Context) -> Any:
        from appliance.broker import reach

        debug = _debugging(ctx)
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException):
            raise  # click's own: usage errors (exit 2) and exits
        except click.Abort:  # a prompt got Ctrl-C or end of input
            click.echo("appliance: aborted; nothing was changed", err=True)
            ctx.exit(exitcodes.NOT_CONFIRMED)
        except ApplianceError as exc:
            if debug:
                traceback.print_exc()
            kind = "" if isinstance(exc, InterruptedByUser) else "error: "
            click.echo(f"appliance: {kind}{exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("appliance: interrupted", err=True)
            ctx.exit(exitcodes.INTERRUPTED)
        except Exception as exc:
            from appliance.broker import acl

            if debug:
                traceback.print_exc()
            if acl.is_noperm(exc):
                # Redis refused a command, key or channel to the ACL user (e.g. no &*).
                reason = first_line(exc)
                click.echo(
                    f"appliance: error: Redis refused this to the ACL user ({reason}); fix: "
                    "grant the user `~* &* +@all -@dangerous` (docs/redis.md, ACL user)",
                    err=True,
                )
                ctx.exit(exitcodes.BROKER_UNAVAILABLE)
            known = _known_failure(exc)
            if known is not None:
                click.echo(f"appliance: error: {known}", err=True)
                ctx.exit(known.exit_code)
            text = mask_secrets(first_line(exc))
            why = _BUG if not debug else "this is a bug or an environment problem (traceback above)"
            click.echo(f"appliance: error: {type(exc).__name__}: {text}; {why}", err=True)
            ctx.exit(exitcodes.INTERNAL)
        finally:
            reach.disarm()


def _known_failure(exc: Exception) -> ApplianceError | None:
    """An environment failure with a known fix that reached the boundary untranslated:
    Redis down or refusing the login (69), the record database down (74)."""
    from appliance.broker.reach import is_auth_error

    redis = sys.modules.get("redis")
    kombu = sys.modules.get("kombu.exceptions")
    broker_down = (
        (redis is not None and isinstance(exc, (redis.ConnectionError, redis.TimeoutError)))
        or (kombu is not None and isinstance(exc, kombu.OperationalError))
        or (redis is not None and isinstance(exc, redis.RedisError) and is_auth_error(exc))
    )
    sqlalchemy = sys.modules.get("sqlalchemy.exc")
    database_down = sqlalchemy is not None and isinstance(exc, sqlalchemy.SQLAlchemyError)
    if not (broker_down or database_down):
        return None
    from appliance.config.settings import get_settings

    try:
        settings = get_settings()
    except ApplianceError:
        return None
    if broker_down:
        from appliance.broker.admin import unavailable

        return unavailable(settings, exc)
    from appliance.records.db import unavailable_error

    return unavailable_error(settings.effective_database_url, exc)


def _announce_broker() -> None:
    """The note of which broker this command uses, when none is configured (stderr)."""
    from appliance.broker.reach import using_line
    from appliance.config.envsource import resolve_broker

    try:
        url, origin = resolve_broker()
    except ApplianceError:
        return
    line = using_line(url, origin)
    if line:
        click.echo(f"appliance: {line}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="celery-appliance")
@click.option(
    "--debug",
    is_flag=True,
    help="Print the traceback of an unexpected error (also APPLIANCE_DEBUG=1).",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Celery Appliance: run and operate a production Celery worker + beat.

    Settings come from APPLIANCE_* environment variables and the env file
    (APPLIANCE_ENV_FILE, default /etc/appliance/appliance.env). Exit codes are listed
    in the README; 78 always means a configuration error, 70 an unexpected one (a bug
    or an environment problem: --debug shows its traceback).
    """
    from appliance.broker import reach

    ctx.obj = CliContext()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="appliance: %(levelname)s: %(message)s")
    # A command that reaches Redis says which broker it uses when none is configured.
    reach.arm(_announce_broker)


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
    code: str | int | None
    try:
        code = cli.main(prog_name="appliance", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
    _release()
    sys.exit(code or exitcodes.OK)


def _release() -> None:
    """Run what garbage holds now, while imports still work: a Celery AsyncResult left in
    a reference cycle (a wait that timed out or was interrupted) unsubscribes in its
    __del__, which at interpreter exit printed `Exception ignored in: <function
    AsyncResult.__del__>... sys.meta_path is None`."""
    import gc

    with contextlib.suppress(Exception):
        sys.stdout.flush()
    gc.collect()
