"""``cloud-learner export``: a run's buffer as files other tools open.

Registered in cloud/cli.py with ``app.command("export")(export)``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer

from shared.errors import FleetError

FORMATS = ("mcap", "lerobot")


def export(
    data_dir: Path = typer.Argument(..., help="the run's data_dir (or its buffer/ directory)"),
    out: Path = typer.Option(..., "--out", "-o", help="directory the export is written to"),
    fmt: str = typer.Option("mcap", "--format", "-f", help="mcap (ROS 2 CDR, for Foxglove and ros2 bag) or lerobot"),
    robot: list[str] = typer.Option(None, "--robot", help="only these robot ids (repeatable)"),
    episode: list[str] = typer.Option(None, "--episode", help="only these episode ids (repeatable)"),
) -> None:
    """Export stored episodes: one MCAP file per episode under OUT/<robot_id>/<episode_id>.mcap.
    Read-only: safe on the data_dir of a running learner."""
    if fmt not in FORMATS:
        typer.echo(f"cloud-learner export: --format must be one of {', '.join(FORMATS)}, not {fmt!r}", err=True)
        raise typer.Exit(2)
    if fmt == "lerobot":
        typer.echo(lerobot_unsupported(), err=True)
        raise typer.Exit(2)
    if importlib.util.find_spec("mcap") is None or importlib.util.find_spec("rosbags") is None:
        typer.echo("cloud-learner export: --format mcap needs mcap and rosbags: pip install 'fleetrl[ros2]'", err=True)
        raise typer.Exit(2)
    from .episodes import BufferEpisodes
    from .mcap_export import export_mcap

    try:
        source = BufferEpisodes(data_dir)
        report = export_mcap(source.episodes(robot or None, episode or None), source.spec, out)
    except FleetError as e:
        typer.echo(f"cloud-learner export: {e}", err=True)
        raise typer.Exit(2) from None
    if report.episodes == 0:
        typer.echo("cloud-learner export: no episode matched; nothing written", err=True)
        raise typer.Exit(1)
    typer.echo(f"exported {report.episodes} episodes ({report.steps} steps) as MCAP to {out}")


def lerobot_unsupported() -> str:
    """Why there is no LeRobotDataset export yet, and what to use meanwhile."""
    return (
        "cloud-learner export: --format lerobot is not supported yet. A LeRobotDataset needs a fixed fps per "
        "dataset, video-encoded cameras and the lerobot package's own writer (whose on-disk format changes "
        "between releases); fleetrl episodes carry per-step timestamps and per-camera codecs instead. "
        "Use --format mcap, or convert the Parquet segments under <data_dir>/buffer/segments yourself."
    )


def import_demos(
    files: list[Path] = typer.Argument(..., help="MCAP episode files, or directories searched for *.mcap"),
    like: Path = typer.Option(..., "--like", help="data_dir of the run the demos are for (its spec: fields, action bounds)"),
    out: Path = typer.Option(..., "--out", "-o", help="new directory for the demo dataset (learner.demo_paths)"),
    robot: str = typer.Option("import", "--robot", help="robot id the imported rows are stored under"),
) -> None:
    """Import demonstrations: MCAP episodes (as `cloud-learner export` writes them) into a demo dataset that
    learner.demo_paths loads. Every file is checked against the run's spec before anything is written."""
    if importlib.util.find_spec("mcap") is None or importlib.util.find_spec("mcap_ros2") is None:
        typer.echo("cloud-learner demos import: needs mcap and mcap-ros2-support: pip install 'fleetrl[ros2]'", err=True)
        raise typer.Exit(2)
    from .episodes import BufferEpisodes
    from .mcap_import import import_mcap

    try:
        report = import_mcap(files, BufferEpisodes(like).spec, out, robot_id=robot)
    except FleetError as e:
        typer.echo(f"cloud-learner demos import: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"imported {report.episodes} demo episodes ({report.steps} steps) into {out}; "
               f'use it with learner.demo_paths = ["{out}"]')

