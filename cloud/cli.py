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
    cluster: str = typer.Option(
        None, "--cluster", help="run on Ray, placed as the run config's cluster table says: auto, ray://host:10001, or local"
    ),
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING or ERROR"),
) -> None:
    """Serve robots and train until stopped (SIGTERM/SIGINT).

    The buffer, each robot's resume point and the policy version always survive a
    restart on the same data_dir; --resume also continues training (model,
    optimizer, counters, RNG) from the last checkpoint."""
    cfg = _load(config)
    setup_logs(log_level)
    if cluster:
        from .cluster.cli import serve_cluster

        raise typer.Exit(serve_cluster(cfg, cluster, resume))
    from .serve import main

    raise typer.Exit(main(cfg, resume))


@app.command()
def demo(
    robots: str = typer.Option(
        "2", help="simulated robots, each its own edge-agent process: a number (Fetch robots of --task) or a mixed "
        "fleet such as reach:2,point_mass:2 (kinds: reach, push, point_mass; each embodiment learns its own policy)"
    ),
    minutes: float = typer.Option(10.0, min=0.1, help="stop after this long even if the target is not reached"),
    target: float = typer.Option(0.8, min=0.0, max=1.0, help="stop once the success rate over the last 50 episodes reaches this"),
    rate_hz: float = typer.Option(
        None, min=0.0, help="control rate of each simulated robot (0: as fast as it steps; default 50, pixels 25)"
    ),
    task: str = typer.Option("reach", help="Fetch task: reach or push"),
    obs: str = typer.Option(
        "state", "--obs", help="what the policy sees: state (state vectors) or pixels (two camera views and the "
        "gripper's own state, not the goal: it must find the goal in the images)"
    ),
    run_dir: Path = typer.Option(None, "--dir", help="where the run's data goes (default: ./fleetrl-runs/demo-<time>)"),
    seed: int = typer.Option(0, help="seed for the learner and the robots"),
) -> None:
    """Start a learner and simulated robots on this machine and watch them learn (FetchReach, SAC).

    Writes success.png (success rate over time) and summary.json into the run directory."""
    from .demo import OBS_MODES, run_demo
    from .demo_fleet import parse_fleet

    if obs not in OBS_MODES:
        raise typer.BadParameter(f"{obs!r}: use one of {', '.join(OBS_MODES)}", param_hint="--obs")
    try:
        fleet = parse_fleet(robots, task)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--robots") from None
    others = sorted({k.name for k in fleet.kinds} - {"reach"})
    if obs == "pixels" and others:  # the cameras frame FetchReach's goal cube (docs/pixels.md)
        raise typer.BadParameter(f"--obs pixels runs the reach task (its cameras frame the reach goal), not {others[0]!r}",
                                 param_hint="--task" if robots.strip().isdigit() else "--robots")
    raise typer.Exit(run_demo(robots=robots, minutes=minutes, target=target, rate_hz=rate_hz, task=task,
                              run_dir=run_dir, seed=seed, obs=obs))


@app.command("check-config")
def check_config(config: Path = typer.Argument(..., help="run TOML file")) -> None:
    """Validate a run config file and print it with defaults filled in."""
    typer.echo(_load(config).model_dump_json(indent=2))


from .export.cli import export as _export  # noqa: E402

app.command("export")(_export)

from .cluster.cli import app as _cluster_app  # noqa: E402

app.add_typer(_cluster_app, name="cluster")

from .classifier_cli import classifier_app as _classifier_app  # noqa: E402

app.add_typer(_classifier_app, name="classifier")

from .export.cli import import_demos as _import_demos  # noqa: E402

_demos_app = typer.Typer(help="demonstration datasets for learner.demo_paths", no_args_is_help=True)
_demos_app.command("import")(_import_demos)
app.add_typer(_demos_app, name="demos")

robots_app = typer.Typer(help="Enroll, list and revoke robots (credentials are shown once, stored hashed).",
                         no_args_is_help=True)
app.add_typer(robots_app, name="robots")


@robots_app.command("add")
def robots_add(
    name: str = typer.Argument(..., help="robot id (A-Z a-z 0-9 . _ -)"),
    config: Path = typer.Option(..., "--config", "-c", help="run TOML file (its data_dir holds the robot table)"),
    expires_days: float = typer.Option(None, help="credential lifetime in days (default: no expiry)"),
    rotate: bool = typer.Option(False, "--rotate", help="replace the credential of an enrolled robot"),
) -> None:
    """Issue a credential for a robot. It is printed once; give it to `edge-agent enroll` on the robot."""
    from .admin_client import registry_path
    from .robots import RobotRegistry

    cfg = _load(config)
    try:
        cred = RobotRegistry(registry_path(cfg)).add(name, expires_days, rotate)
    except FleetError as e:
        typer.echo(f"cloud-learner: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"credential for {name} (shown once, keep it secret):\n{cred}")
    typer.echo("on the robot: edge-agent enroll <learner wss:// url> --config agent.toml, and paste it at the prompt "
               "(or --credential-file FILE, or --credential - to read it from stdin)")
    _notify(cfg, f"the new credential for {name}")


def _notify(cfg: cfgmod.LearnerConfig, change: str, prefix: str = "") -> None:
    """Tell a running learner; exit 1, loudly, if one runs and did not confirm."""
    from .admin_client import notify_reload

    try:
        typer.echo(prefix + notify_reload(cfg, change))
    except FleetError as e:
        typer.echo(f"cloud-learner: {e}", err=True)
        raise typer.Exit(1) from None


@robots_app.command("list")
def robots_list(config: Path = typer.Option(..., "--config", "-c", help="run TOML file")) -> None:
    """List enrolled robots: created, expiry, revoked, connected now."""
    import time as _time

    from .admin_client import registry_path
    from .robots import RobotRegistry

    cfg = _load(config)
    try:
        reg = RobotRegistry(registry_path(cfg))
    except FleetError as err:
        typer.echo(f"cloud-learner: {err}", err=True)
        raise typer.Exit(2) from None
    if not reg.entries and not reg.invalid:
        typer.echo("no robots enrolled")
    for name, why in reg.invalid.items():
        typer.echo(f"{name:<24} INVALID  refused until fixed: {why}")
    for e in reg.entries.values():
        exp = "never" if e.expires is None else _time.strftime("%Y-%m-%d %H:%M", _time.localtime(e.expires))
        state = "revoked" if e.revoked else ("expired" if e.refusal() else "active")
        typer.echo(f"{e.name:<24} {state:<8} created {_time.strftime('%Y-%m-%d %H:%M', _time.localtime(e.created))}  expires {exp}")


@robots_app.command("revoke")
def robots_revoke(
    name: str = typer.Argument(..., help="robot id"),
    config: Path = typer.Option(..., "--config", "-c", help="run TOML file"),
) -> None:
    """Revoke a robot: it can no longer connect, and an open link is closed at once."""
    from .admin_client import registry_path
    from .robots import RobotRegistry

    cfg = _load(config)
    try:
        RobotRegistry(registry_path(cfg)).revoke(name)
    except FleetError as e:
        typer.echo(f"cloud-learner: {e}", err=True)
        raise typer.Exit(2) from None
    _notify(cfg, f"the revocation of {name}", prefix=f"revoked {name} in robots.json; ")


@robots_app.command("command")
def robots_command(
    robot_id: str = typer.Argument(..., help="robot id (linked to the running learner now)"),
    kind: str = typer.Argument(..., help="pause, start_episode, stop_episode, label or reward"),
    value: str = typer.Argument(
        None, help="pause: true (default) or false to resume; label: success, failure or reset; reward: a number; "
        "start_episode / stop_episode: none"
    ),
    config: Path = typer.Option(..., "--config", "-c", help="run TOML file of the running learner"),
) -> None:
    """Send a linked robot an operator command; it applies it at its next control tick.

    pause: hold the control loop between ticks (its status says paused = operator_pause); pause false: run again.

    stop_episode: end the current episode and start no new one until start_episode.

    label success, failure or reset: end the current episode as a success or a failure, or cut it.

    reward NUMBER: add NUMBER to the current step's human_reward.

    Prints the learner's answer (JSON) once the command is queued on the link.

    The robot must offer commands (cloud-learner status: robots.<id>.commands);
    one whose control.remote_commands is false, or whose agent predates them,
    is refused (exit 1)."""
    import json

    from shared.protocol import commands

    from .admin_client import send_command, value_from_text

    cfg = _load(config)
    try:
        checked = commands.check(kind, value_from_text(kind, value))
    except (ValueError, FleetError) as e:  # a bad kind or value: said before reaching the learner
        typer.echo(f"cloud-learner: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        answer = send_command(cfg, robot_id, kind, checked)
    except FleetError as e:
        typer.echo(f"cloud-learner: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(answer))


@app.command()
def status(config: Path = typer.Option(..., "--config", "-c", help="run TOML file of the running learner")) -> None:
    """The running learner's status as JSON (from its loopback admin listener, with the admin token)."""
    import json

    from .admin_client import fetch_status

    cfg = _load(config)
    try:
        typer.echo(json.dumps(fetch_status(cfg), indent=1))
    except FleetError as e:
        typer.echo(f"cloud-learner: {e}", err=True)
        raise typer.Exit(1) from None


@app.command()
def tunnel(
    robot: str = typer.Argument(..., help="robot id (connected now)"),
    port: int = typer.Argument(..., help="port on the robot (must be on its link.tunnel_allow list)"),
    config: Path = typer.Option(..., "--config", "-c", help="run TOML file of the running learner"),
    local_port: int = typer.Option(0, help="local port to listen on (0: pick one)"),
) -> None:
    """Reach a port on a robot (e.g. ssh) through its own outbound link: opens a local port on this host."""
    import asyncio

    from .admin_client import serve_tunnel

    cfg = _load(config)
    try:
        asyncio.run(serve_tunnel(cfg, robot, port, local_port))
    except FleetError as e:
        typer.echo(f"cloud-learner: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


@app.command()
def dashboard(
    config: Path = typer.Option(..., "--config", "-c", help="run TOML file of the running learner"),
    open_browser: bool = typer.Option(False, "--open", help="also open it in this machine's web browser"),
) -> None:
    """Print the link to the running learner's live dashboard (robots, learning curves, pause/label buttons).

    The dashboard is served on the learner's loopback admin listener; the link holds
    the admin token, so keep it to yourself. From another machine, forward the port
    first: ssh -L PORT:127.0.0.1:PORT learner-host, then open the link there."""
    from .dashboard import dashboard_url

    cfg = _load(config)
    try:
        url = dashboard_url(cfg)
    except FleetError as e:
        typer.echo(f"cloud-learner: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)


from .rlco.cli import rlco as _rlco  # noqa: E402  (its imports are deferred: the CLI starts as fast as before)

app.command(name="rlco")(_rlco)


def main() -> None:
    app()
