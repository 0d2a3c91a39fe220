"""lora_sft: full vs LoRA fine-tuning of a larger flow policy: what is trained, what it costs per update.

In process, through the learner's own parts: a ``flow`` policy (default
hidden 1024x1024x1024 over Fetch-sized observations, chunks of 8 actions) is
written as a pretrained weights file, then loaded by ``learner.init_policy``
twice, through ``cloud.learner.finetune.prepare``: once for full fine-tuning
(the baseline, ``FlowSFT`` as the live learner runs it) and once with LoRA
adapters of rank 8 on every Linear layer (``cloud.learner.lora``). Both train
on the same batches; their updates are interleaved (full, LoRA, full, ...),
so a shared machine's load falls on both alike. Reported: trainable
parameters, optimizer-state bytes (Adam's two moments, after a step), the
median time of one update, the time to merge the adapters for publishing, and
each as a ratio to full fine-tuning. CPU unless ``--device`` names a GPU.

    python -m bench lora_sft [--quick]
    python -m bench.lora_sft --hidden 1024,1024,1024 --rank 8 --updates 30 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud.learner import finetune
from cloud.learner.flow_sft import CHUNK, CHUNK_VALID, FlowSFT
from shared.config import LearnerAlgoConfig
from shared.weights import encode_weights

from . import common as C

OBS_DIM, ACT_DIM, HORIZON = 31, 4, 8  # FetchPush's state (25 + 3 + 3) and action; chunks of 8
FIELDS = ["observation", "achieved_goal", "desired_goal"]
FULL = {"hidden": (1024, 1024, 1024), "rank": 8, "updates": 30, "batch": 256, "threads": 2}
QUICK = {"hidden": (128, 128), "rank": 4, "updates": 4, "batch": 32, "threads": 1}


def optimizer_bytes(optim: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's per-parameter state tensors (Adam: two moments; its step counters)."""
    return sum(v.numel() * v.element_size() for s in optim.state.values() for v in s.values() if torch.is_tensor(v))


def _learner(cfg: LearnerAlgoConfig, device: torch.device) -> Any:
    sft = FlowSFT(OBS_DIM, ACT_DIM, horizon=HORIZON, steps=cfg.flow_steps, hidden=tuple(cfg.hidden), lr=cfg.lr,
                  device=device, seed=cfg.seed)
    return finetune.prepare(sft, cfg, FIELDS, None)


def compare(hidden: tuple[int, ...], rank: int, updates: int, batch: int, threads: int, device: str = "cpu",
            seed: int = 0) -> dict[str, Any]:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pretrained.safetensors"
        pre = FlowSFT(OBS_DIM, ACT_DIM, horizon=HORIZON, hidden=hidden, seed=seed + 1)
        path.write_bytes(encode_weights(pre.actor_state(), 1, {"actor": pre.actor.arch(), "obs_fields": FIELDS}).data)
        base = {"algorithm": "bc", "policy": "flow", "flow_horizon": HORIZON, "hidden": list(hidden), "lr": 1e-3,
                "init_policy": path, "device": device, "seed": seed}
        full = _learner(LearnerAlgoConfig(**base), dev)
        lora = _learner(LearnerAlgoConfig(**base, finetune="lora", lora_rank=rank, lora_alpha=2 * rank), dev)
    rng = np.random.default_rng(seed)
    batches = [{"obs": torch.from_numpy(rng.normal(size=(batch, OBS_DIM)).astype(np.float32)),
                CHUNK: torch.from_numpy(np.tanh(rng.normal(size=(batch, HORIZON, ACT_DIM))).astype(np.float32)),
                CHUNK_VALID: torch.ones(batch, HORIZON)} for _ in range(4)]
    times: dict[str, list[float]] = {"full": [], "lora": []}
    for i in range(updates + 2):  # the first two of each: warm-up (allocations, lazy optimizer state)
        for name, algo in (("full", full), ("lora", lora)):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            algo.update(batches[i % len(batches)])
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"hidden": list(hidden), "rank": rank, "updates": updates, "batch": batch,
                           "threads": threads, "device": device}
    for name, algo in (("full", full), ("lora", lora)):
        t0 = time.perf_counter()
        published = algo.actor_state()
        merge_s = time.perf_counter() - t0
        optim = algo.inner.optim if name == "lora" else algo.optim
        out[name] = {"trainable_params": sum(p.numel() for p in algo.actor.parameters() if p.requires_grad),
                     "policy_params": sum(v.numel() for v in published.values()),
                     "optimizer_bytes": optimizer_bytes(optim),
                     "update_ms": 1e3 * statistics.median(times[name]),
                     "publish_ms": 1e3 * merge_s}
    return out


def run(quick: bool = False, **over: Any) -> C.Result:
    p = {**(QUICK if quick else FULL), **over}
    res = C.Result("lora_sft", quick)
    out = compare(tuple(p["hidden"]), p["rank"], p["updates"], p["batch"], p["threads"], p.get("device", "cpu"))
    f, lo = out["full"], out["lora"]
    case = (f"flow {'x'.join(map(str, out['hidden']))}, {f['policy_params'] / 1e6:.2f} M params, batch "
            f"{out['batch']}, {out['device']} ({out['threads']} threads)")
    note = "full fine-tuning is the baseline"
    res.add(case, f"trainable parameters, LoRA r={out['rank']}", float(lo["trainable_params"]), "",
            float(f["trainable_params"]), C.ratio(lo["trainable_params"], f["trainable_params"]), note=note)
    res.add(case, "optimizer state", lo["optimizer_bytes"] / 2**20, "MiB", f["optimizer_bytes"] / 2**20,
            C.ratio(lo["optimizer_bytes"], f["optimizer_bytes"]), note="Adam's moments, after a step")
    res.add(case, "update time", lo["update_ms"], "ms", f["update_ms"], C.ratio(lo["update_ms"], f["update_ms"]),
            note=f"median of {out['updates']} interleaved updates each")
    res.add(case, "publish (merge adapters)", lo["publish_ms"], "ms", f["publish_ms"],
            C.ratio(lo["publish_ms"], f["publish_ms"]), note="actor_state(): plain-arch tensors on the CPU")
    res.extra.update(out)
    res.notes.append("the robots' policy is the same size either way: LoRA publishes merged weights")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=lambda v: tuple(int(x) for x in v.split(",")), default=FULL["hidden"])
    ap.add_argument("--rank", type=int, default=FULL["rank"])
    ap.add_argument("--updates", type=int, default=FULL["updates"])
    ap.add_argument("--batch", type=int, default=FULL["batch"])
    ap.add_argument("--threads", type=int, default=FULL["threads"])
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    C.print_result(run(hidden=a.hidden, rank=a.rank, updates=a.updates, batch=a.batch, threads=a.threads,
                       device=a.device))


if __name__ == "__main__":
    main()
