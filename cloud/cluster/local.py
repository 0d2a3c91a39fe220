"""``serve --cluster local``: the config's nodes as Ray nodes on this one machine.

A bare ``ray.init()`` offers this machine's CPUs and nothing else, so no
component's group (``fleetrl.group.train``...) exists and placement fails.
Trying a cluster config on one machine means starting one Ray node per
described node that hosts a component, each offering what the config says
that node offers (``cluster show --ray-start``): placement, node pinning and
the shards behave as on the real machines. Accelerators are logical there:
the learner trains on CUDA only where torch finds a GPU.

Robot computers (nodes whose groups no component uses) never run Ray, here
as on the real fleet.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .config import ClusterConfig, NodeConfig
from .placement import node_resources
from .ray_env import ensure_ray_temp_root

OBJECT_STORE_MB = 256  # per node: several nodes share this machine's /dev/shm


def ray_nodes(cluster: ClusterConfig) -> list[NodeConfig]:
    """The described nodes that host at least one component's group, in config order."""
    used = {p.group for _, p in cluster.components()}
    return [n for n in cluster.nodes if used.intersection(n.groups)]


def node_args(node: NodeConfig) -> dict[str, Any]:
    r = node_resources(node)
    return {"num_cpus": r["num_cpus"], "num_gpus": r["num_gpus"], "resources": r["resources"],
            "object_store_memory": OBJECT_STORE_MB << 20}


@contextmanager
def local_cluster(cluster: ClusterConfig) -> Iterator[str]:
    """Start the nodes, yield the head's address for ``ray.init``; stop them and remove their files after.

    Ray's files go to a fresh short folder (its socket paths must stay under
    108 bytes, and a stale ``ray_current_cluster`` from a killed run must not
    be picked up); Ray's default temp root is pointed there as well."""
    from ray.cluster_utils import Cluster

    nodes = ray_nodes(cluster)
    tmp = tempfile.mkdtemp(prefix="ray-")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    ensure_ray_temp_root()
    c = None
    try:
        c = Cluster(initialize_head=True, head_node_args={**node_args(nodes[0]), "include_dashboard": False,
                                                            "temp_dir": tmp})
        for n in nodes[1:]:
            c.add_node(**node_args(n))
        yield c.address
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()  # Ray refuses to stop the head node a driver is still connected to
        if c is not None:
            c.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
