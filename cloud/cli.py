"""``cloud-learner``: the learner's command line."""

from __future__ import annotations

from pathlib import Path

import typer

from shared import config as cfgmod
from shared.errors import FleetError
from shared.logs import setup as setup_logs

app = typer.Typer(
    help="fleetrl cloud learner: accepts robot links, stores every transition once in a Parquet "
    "replay buffer, trains asynchronously and pushes new policy weights back to the robots.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _load(config: Path) -> cfgmod.LearnerConfig:
    try:
        return cfgmod.load(cfgmod.LearnerConfig, config)
    except FleetError as e:
        typer.echo(f"cloud-learner: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="run TOML file (data_dir, [server], [limits], [learner])"),
    resume: bool = typer.Option(False, "--resume", help="continue a stopped or killed run from its checkpoint"),
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING or ERROR"),
) -> None:
    """Serve robots and train until stopped (SIGTERM/SIGINT).

    The buffer, each robot's resume point and the policy version always survive a
    restart on the same data_dir; --resume also continues training (model,
    optimizer, counters, RNG) from the last checkpoint."""
    cfg = _load(config)
    setup_logs(log_level)
    from .serve import main

    raise typer.Exit(main(cfg, resume))


@app.command()
def demo(
    robots: int = typer.Option(2, min=1, max=8, help="simulated robots, each its own edge-agent process"),
    minutes: float = typer.Option(10.0, min=0.1, help="stop after this long even if the target is not reached"),
    target: float = typer.Option(0.8, min=0.0, max=1.0, help="stop once the success rate over the last 50 episodes reaches this"),
    rate_hz: float = typer.Option(50.0, min=0.0, help="control rate of each simulated robot (0: as fast as it steps)"),
    task: str = typer.Option("reach", help="Fetch task: reach or push"),
    run_dir: Path = typer.Option(None, "--dir", help="where the run's data goes (default: ./fleetrl-runs/demo-<time>)"),
    seed: int = typer.Option(0, help="seed for the learner and the robots"),
) -> None:
    """Start a learner and simulated robots on this machine and watch them learn (FetchReach, SAC)."""
    from .demo import run_demo

    raise typer.Exit(run_demo(robots=robots, minutes=minutes, target=target, rate_hz=rate_hz, task=task, run_dir=run_dir, seed=seed))


@app.command("check-config")
def check_config(config: Path = typer.Argument(..., help="run TOML file")) -> None:
    """Validate a run config file and print it with defaults filled in."""
    typer.echo(_load(config).model_dump_json(indent=2))


from .export.cli import export as _export  # noqa: E402

app.command("export")(_export)


def main() -> None:
    app()
