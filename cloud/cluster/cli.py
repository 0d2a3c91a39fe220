"""``cloud-learner cluster ...`` and the body of ``cloud-learner serve --cluster``."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import signal
import sys
import threading
from pathlib import Path

import typer

from shared import config as cfgmod
from shared.errors import FleetError
from shared.fsutil import atomic_write

from .config import ClusterConfig, parse_cluster
from .placement import check, check_live, node_resources, render

app = typer.Typer(help="multi-node runs on Ray: units, node groups, placement", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


def _load(config: Path) -> tuple[cfgmod.LearnerConfig, ClusterConfig]:
    try:
        cfg = cfgmod.load(cfgmod.LearnerConfig, config)
        return cfg, parse_cluster(cfg.cluster)
    except FleetError as e:
        typer.echo(f"cloud-learner: {e}", err=True)
        raise typer.Exit(2) from None


@app.command("show")
def show(
    config: Path = typer.Option(..., "--config", "-c", help="run TOML file with a [cluster] table"),
    ray_start: bool = typer.Option(False, "--ray-start", help="also print the `ray start` line for each node"),
    live: str = typer.Option(None, "--live", help="also check the placement against this running Ray cluster (auto, ray://...)"),
) -> None:
    """Print the nodes' units, the node groups and the placement as tables; exit 2 if it cannot be satisfied."""
    cfg, cluster = _load(config)
    typer.echo(render(cluster, embodiments=cfg.groups), nl=False)
    if ray_start:
        for n in cluster.nodes:
            r = node_resources(n)
            typer.echo(f"{n.name}: ray start --address=<head:6379> --num-cpus={r['num_cpus']:g} "
                       f"--num-gpus={r['num_gpus']} --resources='{json.dumps(r['resources'])}'")
    ok = True
    try:
        check(cluster)
        if live:
            import ray

            ray.init(address=live, logging_level=logging.ERROR)
            try:
                check_live(cluster, ray.nodes())
                typer.echo("live Ray cluster: OK")
            finally:
                ray.shutdown()
    except FleetError as e:
        if live:
            typer.echo(f"cloud-learner: {e}", err=True)
        ok = False
    raise typer.Exit(0 if ok else 2)


def _stop_on_signals(stop: threading.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def serve_cluster(cfg: cfgmod.LearnerConfig, address: str, resume: bool = False) -> int:
    """Run the learner's components on Ray (``serve --cluster auto|ray://...|local``) until SIGTERM/SIGINT."""
    try:
        cluster = parse_cluster(cfg.cluster)
        check(cluster)
        from .runtime import check_shards

        check_shards(cfg, cluster)  # before Ray starts: a shard beyond loopback without TLS is refused
    except FleetError as e:
        print(f"cloud-learner: {e}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("ray") is None:
        print("cloud-learner: --cluster needs Ray: pip install 'fleetrl[cluster]'", file=sys.stderr)
        return 2
    stop = threading.Event()  # from here on a signal stops the run cleanly, even while Ray starts
    _stop_on_signals(stop)
    if resume:
        print("cloud-learner: note: on a cluster, shards and policy versions always resume; "
              "the learner restarts training from the shards' data", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        if address == "local":
            from .local import local_cluster, ray_nodes

            print(f"cloud-learner: starting a local Ray cluster of {len(ray_nodes(cluster))} node(s) "
                  f"({', '.join(n.name for n in ray_nodes(cluster))})", file=sys.stderr, flush=True)
            address = stack.enter_context(local_cluster(cluster))
        rc = _serve_on_ray(cfg, cluster, address, stop)
    return rc


def groups_line(cfg: cfgmod.LearnerConfig) -> str:
    """The run's embodiment groups as the start line says them."""
    g = cfg.groups
    named = ", ".join(f"{n.name} ({', '.join(n.robots) or 'any fitting spec'})" for n in g.named)
    if g.mode == "auto":
        return f"auto (a group per episode spec, up to {g.max_groups})" + (f"; named: {named}" if named else "")
    return f"fixed: {named}" if named else "one (the first robot fixes the spec)"


def _serve_on_ray(cfg: cfgmod.LearnerConfig, cluster: ClusterConfig, address: str, stop: threading.Event) -> int:
    import ray

    from .channels import NAMESPACE
    from .runtime import ClusterRuntime

    ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
    _stop_on_signals(stop)  # ray.init installs a SIGTERM handler that exits at once: ours stops cleanly
    runtime = ClusterRuntime(cfg, cluster)
    try:
        runtime.start()
    except FleetError as e:
        print(f"cloud-learner: {e}", file=sys.stderr)
        ray.shutdown()
        return 2
    endpoints = runtime.endpoints()
    placed = "; ".join(f"{comp} on {', '.join(nodes)}" for comp, nodes in runtime.where().items())
    print(f"cloud-learner: placed {placed}", file=sys.stderr, flush=True)
    print(f"cloud-learner: embodiment groups: {groups_line(cfg)}", file=sys.stderr, flush=True)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(cfg.data_dir / "endpoints.json", json.dumps(endpoints).encode())
    print(f"READY {json.dumps(endpoints)}", flush=True)
    rollouts = threading.Thread(target=runtime.run_rollouts, args=(stop,), name="rollouts", daemon=True)
    if runtime.workers:
        rollouts.start()
    stop.wait()
    if rollouts.is_alive():
        rollouts.join(60)
    runtime.stop()
    ray.shutdown()
    return 0
