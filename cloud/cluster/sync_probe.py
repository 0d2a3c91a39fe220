"""One member of a weight-sync group as a process: ``python -m cloud.cluster.sync_probe``.

Used by the tests (gloo, 3 processes) and to try a cluster's backend by hand:
rank 0 publishes deterministic policy weights for ``--rounds`` rounds (a new
version every other round); every rank writes what it ended with to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from shared.policy import Actor
from shared.weights import decode_weights, encode_weights

from .config import WeightSyncConfig
from .weight_sync import WeightSync


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--init", required=True, help="init_method, e.g. file:///tmp/x or tcp://127.0.0.1:port")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--bucket-mb", type=float, default=0.01)
    a = ap.parse_args(argv)
    sync = WeightSync(a.rank, a.world, a.init, WeightSyncConfig(backend=a.backend, bucket_mb=a.bucket_mb, timeout_s=60))
    versions, tensors = [], None
    for r in range(a.rounds):
        blob = None
        if a.rank == 0 and r % 2 == 0:  # rounds 1, 3, ...: a new version; in between: nothing new
            torch.manual_seed(r)
            actor = Actor(16, 4, (64, 64))
            blob = encode_weights(actor.state_dict(), r // 2 + 1, {"actor": actor.arch(), "obs_fields": ["x"]})
        got = sync.sync(blob)
        versions.append(got.version if got else None)
        if got is not None:
            tensors = decode_weights(got.data, got.sha256, 1 << 30).tensors
    a.out.mkdir(parents=True, exist_ok=True)
    if tensors is not None:
        save_file(tensors, str(a.out / f"rank{a.rank}.safetensors"))
    last = sync.last
    (a.out / f"rank{a.rank}.json").write_text(json.dumps({
        "rank": a.rank, "backend": sync.backend, "version": sync.version, "versions": versions,
        "buckets": last.buckets if last else 0, "bytes": last.nbytes if last else 0,
    }))
    sync.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
