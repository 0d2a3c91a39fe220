"""``edge-agent``: the robot-side daemon's command line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from shared import config as cfgmod
from shared.errors import FleetError
from shared.logs import setup as setup_logs

app = typer.Typer(
    help="fleetrl edge agent: drives a robot with the current policy, records every step, "
    "and streams episodes to the cloud learner over one outbound websocket.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def run(
    config: Path = typer.Option(..., "--config", "-c", help="agent TOML file (robot_id, [link], [robot], [control], [spool])"),
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING or ERROR"),
    drain_timeout: float = typer.Option(30.0, help="seconds to wait on exit for the cloud to ack what is spooled"),
) -> None:
    """Run the agent until stopped (SIGTERM/SIGINT) or until control.max_episodes is reached."""
    setup_logs(log_level)
    try:
        cfg = cfgmod.load(cfgmod.AgentConfig, config)
        from .daemon import Agent

        agent = Agent(cfg, drain_timeout_s=drain_timeout)
    except FleetError as e:
        typer.echo(f"edge-agent: {e}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(asyncio.run(agent.run()))


@app.command("check-config")
def check_config(config: Path = typer.Argument(..., help="agent TOML file")) -> None:
    """Validate an agent config file and print it with defaults filled in."""
    try:
        cfg = cfgmod.load(cfgmod.AgentConfig, config)
    except FleetError as e:
        typer.echo(f"edge-agent: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(cfg.model_dump_json(indent=2))


def main() -> None:
    app()
