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
    log_level: str = typer.Option(None, help="DEBUG, INFO, WARNING or ERROR (default: service.log_level)"),
    drain_timeout: float = typer.Option(30.0, help="seconds to wait on exit for the cloud to ack what is spooled"),
) -> None:
    """Run the agent until stopped (SIGTERM/SIGINT) or until control.max_episodes is reached.

    SIGTERM drains (a second one exits at once); SIGHUP reloads the safe part of the config."""
    setup_logs(log_level or "INFO")
    try:
        cfg = cfgmod.load(cfgmod.AgentConfig, config)
        setup_logs(log_level or cfg.service.log_level)
        from .daemon import Agent

        agent = Agent(cfg, drain_timeout_s=drain_timeout, config_path=config)
    except FleetError as e:
        typer.echo(f"edge-agent: {e}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(asyncio.run(agent.run()))


@app.command()
def record(
    config: Path = typer.Option(..., "--config", "-c", help="agent TOML file; needs a teleop table (the device the human drives with)"),
    episodes: int = typer.Option(..., "--episodes", "-n", min=1, help="demonstrations to record, then stop"),
    log_level: str = typer.Option(None, help="DEBUG, INFO, WARNING or ERROR (default: service.log_level)"),
    drain_timeout: float = typer.Option(30.0, help="seconds to wait at the end for the learner to ack every demo"),
) -> None:
    """Record demonstrations: the human drives every step through the teleop device.

    Runs the agent as `run` does (same spool, link and learner), take-over forced on, every row tagged demo.

    Exit 0: all recorded and acked by the learner. Exit 3: recorded, not all acked (the spool keeps it)."""
    setup_logs(log_level or "INFO")
    try:
        cfg = cfgmod.load(cfgmod.AgentConfig, config)
        setup_logs(log_level or cfg.service.log_level)
        from .daemon import Agent

        agent = Agent(cfg, drain_timeout_s=drain_timeout, config_path=config, record_episodes=episodes)
    except FleetError as e:
        typer.echo(f"edge-agent: {e}", err=True)
        raise typer.Exit(2) from None
    assert cfg.teleop is not None  # Agent refused a config without one
    typer.echo(f"recording {episodes} demonstration(s) with {cfg.teleop.device}: you drive every step")
    agent.on_episode = lambda end: typer.echo(
        f"episode {end.index}/{episodes}: {end.steps} steps, {'success' if end.success else 'no success'}")
    try:
        rc = asyncio.run(agent.run())
    except FleetError as e:  # found only when starting (a credential file): said in one line, as above
        typer.echo(f"edge-agent: {e}", err=True)
        raise typer.Exit(2) from None
    done = agent.control.episodes
    if rc != 0:
        err = agent.control.error
        why = f": {err}" if isinstance(err, FleetError) else "; see the log"
        typer.echo(f"edge-agent: recording failed after {done} episode(s){why}", err=True)
        raise typer.Exit(rc)
    if agent.pending_at_exit:
        typer.echo(f"recorded {done} episode(s), but the learner did not acknowledge {agent.pending_at_exit} "
                   f"chunk(s) (unreachable? {agent.link_state['last_error'] or 'no ack in time'}); they are kept in the "
                   f"spool at {cfg.spool.dir} and sent when the agent next runs", err=True)
        raise typer.Exit(3)
    if done < episodes:
        typer.echo(f"stopped after {done} of {episodes} episode(s); all recorded steps acknowledged by the learner")
    else:
        typer.echo(f"recorded {done} episode(s); all acknowledged by the learner")
    raise typer.Exit(0)


@app.command("check-config")
def check_config(config: Path = typer.Argument(..., help="agent TOML file")) -> None:
    """Validate an agent config file (its robot driver's and teleop device's options too) and print it with
    defaults filled in. The robot is not started: its options are checked by its driver's config class."""
    try:
        cfg = cfgmod.load(cfgmod.AgentConfig, config)
        from hal_drivers import registry

        from .human import create_teleop

        registry.validate(cfg.robot.driver, cfg.robot.options)

        unit = create_teleop(cfg)  # a teleop device that cannot be built is a config error
        if unit is not None:
            unit.close()
    except FleetError as e:
        typer.echo(f"edge-agent: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(cfg.model_dump_json(indent=2))


def _read_credential(given: str | None, path: Path | None) -> str:
    """The credential from a file, stdin or a prompt: not from argv, which every user sees in `ps`."""
    import getpass
    import sys

    from shared.errors import ConfigError

    if path is not None:
        if given is not None:
            raise ConfigError("--credential and --credential-file: give one of them")
        try:
            return path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"--credential-file: {path}: {e.strerror or e}") from None
    if given is not None and given != "-":
        typer.echo("edge-agent: warning: --credential on the command line shows in `ps` and the shell history; "
                   "use --credential-file FILE or --credential - (stdin)", err=True)
        return given
    if given is None and sys.stdin.isatty():
        return getpass.getpass("credential (fr1_..., from `cloud-learner robots add`): ").strip()
    text = sys.stdin.readline().strip()
    if not text:
        raise ConfigError("no credential on stdin: pipe it in (--credential -), or use --credential-file FILE")
    return text


@app.command()
def enroll(
    url: str = typer.Argument(..., help="the learner's websocket URL (wss://host:port/ws)"),
    config: Path = typer.Option(..., "--config", "-c", help="agent TOML file (robot_id, state_dir)"),
    credential: str = typer.Option(
        None, help="`-` reads the credential from stdin; a literal fr1_... works but shows in `ps` and shell history "
        "(default: prompt for it, or read stdin when it is not a terminal)",
    ),
    credential_file: Path = typer.Option(None, help="read the credential `cloud-learner robots add` printed from this file"),
    pin: str = typer.Option(None, help="expected SHA-256 of the learner's certificate (default: pin what it shows now)"),
    check: bool = typer.Option(True, help="do a handshake to prove the credential before storing it"),
) -> None:
    """Store this robot's credential (mode 0600) and pin the learner's certificate."""
    try:
        cfg = cfgmod.load(cfgmod.AgentConfig, config)
        from .enrollment import enroll as do_enroll

        rec = do_enroll(cfg, url, _read_credential(credential, credential_file), pin, check)
    except FleetError as e:
        typer.echo(f"edge-agent: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"enrolled {cfg.robot_id} with {url}" + (f"; learner certificate pinned: {rec['pin_sha256']}" if rec["pin_sha256"] else ""))


@app.command()
def install(
    root: Path = typer.Option(Path("/"), help="prefix for /etc (an image being built; tests); skips user and daemon-reload"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print what would be done, do nothing"),
    robot_id: str = typer.Option(None, help="robot_id for the config skeleton (default: this host's name)"),
    url: str = typer.Option("wss://learner.example:8765/ws", help="learner URL for the config skeleton"),
    driver: str = typer.Option("mujoco_fetch", help="robot driver for the config skeleton"),
    user: str = typer.Option("fleetrl", help="system user the agent runs as"),
    exec_path: str = typer.Option(None, "--exec", help="edge-agent executable for ExecStart (default: the one on PATH)"),
    enable: bool = typer.Option(True, help="enable the service (start at boot)"),
) -> None:
    """Install the systemd unit, a config skeleton and the system user; enable the service."""
    import socket

    from .install import install as do_install

    rid = robot_id or "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    raise typer.Exit(do_install(root, dry_run, exec_path, user, rid, url, driver, enable, echo=typer.echo))


@app.command()
def check(
    config: Path = typer.Option(..., "--config", "-c", help="agent TOML file"),
    timeout: float = typer.Option(5.0, help="seconds for each network probe"),
) -> None:
    """Validate the config, probe the robot, the spool and state dirs, the link and the credential."""
    from .check import format_table, run_checks

    rows = run_checks(config, timeout)
    typer.echo(format_table(rows))
    raise typer.Exit(1 if any(r.ok is False for r in rows) else 0)


@app.command()
def status(
    config: Path = typer.Option(..., "--config", "-c", help="agent TOML file (for its state_dir)"),
    json_out: bool = typer.Option(False, "--json", help="print the raw status.json"),
) -> None:
    """Online or not, policy version, spool fill, last ack, control-loop rate and jitter (exit 3: offline)."""
    import json

    from .metrics import STATUS_FILE, format_status, read_status

    try:
        cfg = cfgmod.load(cfgmod.AgentConfig, config)
    except FleetError as e:
        typer.echo(f"edge-agent: {e}", err=True)
        raise typer.Exit(2) from None
    s = read_status(cfg.state_dir)
    text, online = format_status(s, where=str(cfg.state_dir / STATUS_FILE))
    typer.echo(json.dumps(s, indent=1) if json_out and s is not None else text)
    raise typer.Exit(0 if online else 3)


@app.command()
def label(
    config: Path = typer.Option(..., "--config", "-c", help="agent TOML file (for its state_dir)"),
    reward: float = typer.Option(None, "--reward", help="add this to the current step's human reward"),
    success: bool = typer.Option(False, "--success", help="end the current episode as a success"),
    failure: bool = typer.Option(False, "--failure", help="end the current episode as a failure"),
    reset: bool = typer.Option(False, "--reset", help="cut the current episode (neither success nor failure)"),
) -> None:
    """Label the running agent's current step or episode (learner.reward = "human" trains on these labels)."""
    from .labels import send_label
    from .metrics import is_online, read_status

    chosen = [k for k, on in (("success", success), ("failure", failure), ("reset", reset)) if on]
    if len(chosen) + (reward is not None) != 1:
        typer.echo("edge-agent label: give exactly one of --reward X, --success, --failure, --reset", err=True)
        raise typer.Exit(2)
    try:
        cfg = cfgmod.load(cfgmod.AgentConfig, config)
        s = read_status(cfg.state_dir)
        if s is None or not is_online(s) or not s.get("metrics_url"):
            raise FleetError("the agent is not running here with its local API (service.metrics = true), "
                             f"no fresh status in {cfg.state_dir}")
        body = {"reward": reward} if reward is not None else {"event": chosen[0]}
        send_label(str(s["metrics_url"]), cfg.state_dir, body)
    except FleetError as e:
        typer.echo(f"edge-agent label: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"labelled: {', '.join(f'{k}={v}' for k, v in body.items())}")


def main() -> None:
    app()
