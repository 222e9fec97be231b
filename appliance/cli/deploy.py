"""`appliance deploy ...`: render deploy files for install scripts and image builds."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.context import CliContext, pass_cli


@click.group("deploy")
def deploy() -> None:
    """Render deployment files (used by scripts/install.sh)."""


@deploy.command("supervisor-conf")
@click.option(
    "--bin",
    "bin_command",
    default="/opt/appliance/bin/appliance",
    show_default=True,
    help="The `appliance` command supervisord runs.",
)
@click.option("--user", default="appliance", show_default=True, help="User the programs run as.")
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/var/log/appliance"),
    show_default=True,
    help="Directory of the program logs.",
)
@click.option(
    "--flower",
    "with_flower",
    is_flag=True,
    help="Add the Flower program (`appliance flower` on 127.0.0.1; the flower extra).",
)
@click.option("--flower-port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@pass_cli
def supervisor_conf(
    cli: CliContext,
    bin_command: str,
    user: str,
    log_dir: Path,
    with_flower: bool,
    flower_port: int,
) -> None:
    """Print the supervisord programs (one worker per queue group, beat) for conf.d/.

    Worker groups, stop timeouts and the state dir come from the settings, so run it with
    the same env file the programs will read.
    """
    from appliance.host.supervisor_conf import render

    rendered = render(
        cli.settings,
        bin_command=bin_command,
        user=user,
        log_dir=log_dir,
        flower_port=flower_port if with_flower else None,
    )
    click.echo(rendered, nl=False)


COMMANDS = [deploy]
