"""Versioned weight broadcast to rollout workers over ``torch.distributed``.

Rank 0 (the weight publisher) and the workers meet in a *sync round* between
rollouts: a small header (version, size, sha256) then the safetensors bytes in
fixed-size buckets. The same code runs on gloo (CPU) and NCCL (GPU); on NCCL
the process group is built with a capped number of CTAs so a broadcast leaves
most SMs to the rollout kernels. Workers verify the sha256, so what they load
is bit-identical to what the learner published.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from shared.weights import WeightsBlob, sha256

from .config import WeightSyncConfig

log = logging.getLogger("fleetrl.weight_sync")

_HEADER = 6  # int64: version, nbytes, 4 x 8 bytes of sha256


class NcclUnavailable(RuntimeError):
    """NCCL cannot be used here; the message says why."""


def check_ctas(max_ctas: int, min_ctas: int) -> tuple[int, int]:
    """The CTA cap, validated the same way the config validates it."""
    for name, v in (("max_ctas", max_ctas), ("min_ctas", min_ctas)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64:
            raise ValueError(f"weight_sync.{name} must be an int in 1..64, got {v!r}")
    if min_ctas > max_ctas:
        raise ValueError(f"weight_sync.min_ctas ({min_ctas}) must be <= max_ctas ({max_ctas})")
    return max_ctas, min_ctas


def nccl_unavailable_reason() -> str | None:
    """None when NCCL process groups can be built here, else why not."""
    if torch.version.cuda is None:
        return "not available: CPU build of torch (no CUDA)"
    if not dist.is_nccl_available() or not hasattr(dist, "ProcessGroupNCCL"):
        return "not available: torch built without NCCL"
    if not hasattr(dist.ProcessGroupNCCL.Options(), "config"):
        return "not available: this torch's ProcessGroupNCCL.Options has no config (needs NCCL >= 2.17)"
    return None


def nccl_options(max_ctas: int = 2, min_ctas: int = 1) -> Any:
    """``ProcessGroupNCCL.Options`` whose collectives use at most ``max_ctas`` CTAs.

    Raises :class:`NcclUnavailable` (e.g. "not available: CPU build of torch")
    where NCCL does not exist, after validating the cap either way.
    """
    check_ctas(max_ctas, min_ctas)
    reason = nccl_unavailable_reason()
    if reason is not None:
        raise NcclUnavailable(reason)
    opts = dist.ProcessGroupNCCL.Options()
    opts.config.max_ctas = max_ctas
    opts.config.min_ctas = min_ctas
    return opts


def pick_backend(cfg: WeightSyncConfig) -> str:
    if cfg.backend == "auto":
        return "nccl" if nccl_unavailable_reason() is None and torch.cuda.is_available() else "gloo"
    if cfg.backend == "nccl":
        reason = nccl_unavailable_reason()
        if reason is not None:
            raise NcclUnavailable(f"weight_sync.backend = 'nccl': {reason}")
    return cfg.backend


@dataclass
class SyncStats:
    version: int
    nbytes: int
    buckets: int
    seconds: float


class WeightSync:
    """One member of the weight-sync group: rank 0 sends, the others receive."""

    def __init__(self, rank: int, world_size: int, init_method: str, cfg: WeightSyncConfig | None = None):
        self.cfg = cfg or WeightSyncConfig()
        self.rank, self.world_size = rank, world_size
        self.backend = pick_backend(self.cfg)
        opts = nccl_options(self.cfg.max_ctas, self.cfg.min_ctas) if self.backend == "nccl" else None
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        dist.init_process_group(
            self.backend, init_method=init_method, rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=self.cfg.timeout_s), pg_options=opts,
        )
        self.version = 0
        self.last: SyncStats | None = None
        self.bucket_bytes = max(1, int(self.cfg.bucket_mb * (1 << 20)))

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def sync(self, blob: WeightsBlob | None = None) -> WeightsBlob | None:
        """One round, called by every member between rollouts.

        Rank 0 passes the newest blob (or None: nothing new); receivers get the
        blob when its version is newer than theirs, else None.
        """
        t0 = time.perf_counter()
        header = torch.zeros(_HEADER, dtype=torch.int64)
        if self.rank == 0 and blob is not None and blob.version > self.version:
            header[0], header[1] = blob.version, len(blob.data)
            header[2:] = torch.frombuffer(bytearray(bytes.fromhex(blob.sha256)), dtype=torch.int64)
        header = header.to(self.device)
        dist.broadcast(header, src=0)
        header = header.cpu()
        version, nbytes = int(header[0]), int(header[1])
        if version <= self.version:
            return None
        if self.rank == 0:
            assert blob is not None
            flat = torch.frombuffer(bytearray(blob.data), dtype=torch.uint8).to(self.device)
        else:
            flat = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        buckets = 0
        for start in range(0, nbytes, self.bucket_bytes):
            dist.broadcast(flat[start : start + self.bucket_bytes], src=0)
            buckets += 1
        self.version = version
        self.last = SyncStats(version, nbytes, buckets, time.perf_counter() - t0)
        if self.rank == 0:
            return blob
        data = flat.cpu().numpy().tobytes()
        digest = header[2:].numpy().tobytes().hex()
        if sha256(data) != digest:  # never load bytes that differ from the learner's
            raise RuntimeError(f"weight broadcast v{version}: sha256 mismatch on rank {self.rank}")
        log.info("event=weights_synced rank=%d version=%d bytes=%d buckets=%d", self.rank, version, nbytes, buckets)
        return WeightsBlob(version, digest, data)
