"""`appliance worker|beat|up`: the long-running processes, in the foreground."""

from __future__ import annotations

import sys

import click

from appliance.cli.context import CliContext, pass_cli

_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False)


@click.command("worker")
@click.option("-Q", "--queues", help="Comma list of queues (default: those of --group).")
@click.option(
    "-g",
    "--group",
    default="default",
    show_default=True,
    help="Worker queue group from APPLIANCE_WORKER_GROUPS (the systemd instance).",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    help="Pool processes (default: APPLIANCE_CONCURRENCY, else one per CPU).",
)
@click.option(
    "--max-tasks-per-child",
    type=click.IntRange(min=0),
    help="Replace a child after N tasks; 0 = never.",
)
@click.option(
    "--max-memory-per-child",
    type=click.IntRange(min=0),
    help="Replace a child above this much memory (KiB); 0 = never.",
)
@click.option("-l", "--loglevel", type=_LEVELS, help="Log level (default APPLIANCE_LOG_LEVEL).")
@click.option(
    "--topology",
    type=click.Choice(["prefork", "consumers"]),
    help="prefork pool, or consumer processes that run their own tasks "
    "(default APPLIANCE_WORKER_TOPOLOGY).",
)
@pass_cli
def worker(
    cli: CliContext,
    queues: str | None,
    group: str,
    concurrency: int | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    loglevel: str | None,
    topology: str | None,
) -> None:
    """Run the Celery worker of the appliance in the foreground."""
    from appliance.broker import reach
    from appliance.worker.launch import WorkerOptions, run_worker

    options = WorkerOptions(
        group=group,
        queues=tuple(q.strip() for q in (queues or "").split(",") if q.strip()),
        concurrency=concurrency,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        loglevel=loglevel.upper() if loglevel else None,
        topology=topology,
    )
    settings = cli.settings
    reach.reaching()  # which broker, when none is configured: said once, before any fork
    sys.exit(run_worker(settings, options))


@click.command("beat")
@click.option("-l", "--loglevel", type=_LEVELS, help="Log level (default APPLIANCE_LOG_LEVEL).")
@pass_cli
def beat(cli: CliContext, loglevel: str | None) -> None:
    """Run beat (the periodic scheduler) in the foreground; state in the state dir."""
    from appliance.broker import reach
    from appliance.worker.launch import run_beat

    settings = cli.settings
    reach.reaching()  # which broker, when none is configured
    sys.exit(run_beat(settings, loglevel.upper() if loglevel else None))


@click.command("flower")
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (keep it loopback: reach it through an SSH tunnel or a proxy).",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=5555, show_default=True, help="Port."
)
@pass_cli
def flower(cli: CliContext, address: str, port: int) -> None:
    """Run Flower, the Celery web monitor, in the foreground (the `flower` extra).

    HTTP basic auth with FLOWER_BASIC_AUTH=USER:PASSWORD from the environment or the env
    file (install.sh --with-flower generates it); other Flower options are FLOWER_*
    variables. Exit 72 when Flower is not installed, 78 without credentials.
    """
    from appliance.host.flower import run_flower

    cli.settings  # noqa: B018  (a bad setting is exit 78 before Flower starts)
    sys.exit(run_flower(address, port))


@click.command("up")
@click.option(
    "--flower",
    "with_flower",
    is_flag=True,
    help="Also run Flower on 127.0.0.1 (needs the flower extra; exit 72 without it).",
)
@click.option(
    "--flower-port",
    type=click.IntRange(1, 65535),
    default=5555,
    show_default=True,
    help="Flower's port with --flower.",
)
@pass_cli
def up(cli: CliContext, with_flower: bool, flower_port: int) -> None:
    """Run everything on embedded defaults: a private redis-server, worker and beat.

    In the foreground; Ctrl-C or SIGTERM stops it all. Other `appliance` commands with
    the same APPLIANCE_STATE_DIR and no broker URL of their own talk to its Redis.
    With --flower, Flower too (its user and password: FLOWER_BASIC_AUTH if set, else
    generated into <state dir>/embedded/flower-credentials).
    """
    from appliance.broker import reach
    from appliance.host.embedded import run_up

    reach.disarm()  # it runs its own broker and says so

    sys.exit(
        run_up(
            cli.settings,
            announce=lambda line: click.echo(line, err=True),
            flower_port=flower_port if with_flower else None,
        )
    )


COMMANDS = [worker, beat, flower, up]
