"""Weight broadcast over a real gloo process group (3 processes) and the NCCL CTA cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cloud.cluster.config import WeightSyncConfig
from cloud.cluster.weight_sync import NcclUnavailable, check_ctas, nccl_options, nccl_unavailable_reason, pick_backend

ROOT = Path(__file__).resolve().parents[2]
NCCL_REASON = nccl_unavailable_reason()


def test_gloo_broadcast_to_3_processes_is_bit_identical(tmp_path: Path):
    init = f"file://{tmp_path / 'rendezvous'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "cloud.cluster.sync_probe", "--rank", str(r), "--world", "3",
                          "--init", init, "--out", str(tmp_path / "out"), "--rounds", "3", "--bucket-mb", "0.004"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for r in range(3)
    ]
    try:
        outs = [p.communicate(timeout=60)[0].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    reports = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(3)]
    for rep in reports:
        assert rep["backend"] == "gloo"
        assert rep["version"] == 2  # every worker reports the learner's version
        assert rep["versions"] == [1, None, 2]  # a round with nothing new moves no bytes
        assert rep["buckets"] > 3  # 4 KiB buckets: the blob went in several
    learner = load_file(str(tmp_path / "out" / "rank0.safetensors"))
    for r in (1, 2):
        worker = load_file(str(tmp_path / "out" / f"rank{r}.safetensors"))
        assert worker.keys() == learner.keys()
        for k in learner:
            assert worker[k].dtype == learner[k].dtype
            assert torch.equal(worker[k].view(torch.uint8), learner[k].view(torch.uint8)), k


@pytest.mark.parametrize(("mx", "mn", "err"), [
    (0, 1, "max_ctas must be an int in 1..64"), (65, 1, "max_ctas must be an int in 1..64"),
    (2, 4, r"min_ctas \(4\) must be <= max_ctas \(2\)"), (2, True, "min_ctas must be an int"),
])
def test_cta_cap_is_validated(mx, mn, err):
    with pytest.raises(ValueError, match=err):
        check_ctas(mx, mn)
    with pytest.raises(ValueError, match=err):
        nccl_options(mx, mn)  # validated before looking for NCCL


def test_cta_cap_defaults_small():
    cfg = WeightSyncConfig()
    assert (cfg.max_ctas, cfg.min_ctas) == (2, 1)
    assert check_ctas(cfg.max_ctas, cfg.min_ctas) == (2, 1)


@pytest.mark.skipif(NCCL_REASON is not None, reason=f"NCCL options need a CUDA build of torch with NCCL: {NCCL_REASON}")
def test_nccl_options_carry_the_cap():
    opts = nccl_options(max_ctas=3, min_ctas=2)
    assert isinstance(opts, torch.distributed.ProcessGroupNCCL.Options)
    assert (opts.config.max_ctas, opts.config.min_ctas) == (3, 2)


@pytest.mark.skipif(NCCL_REASON is None, reason="this torch has NCCL: the CPU-build error path does not apply")
def test_without_nccl_the_options_say_why():
    with pytest.raises(NcclUnavailable, match="not available: "):
        nccl_options(2, 1)
    assert pick_backend(WeightSyncConfig()) == "gloo"  # auto falls back to gloo on CPU
    with pytest.raises(NcclUnavailable, match="weight_sync.backend = 'nccl': not available"):
        pick_backend(WeightSyncConfig(backend="nccl"))
