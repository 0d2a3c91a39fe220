"""Where the time goes: the profiles behind the closing note of docs/benchmarks.md.

    python -m bench.profile compress   # cProfile of the agent's chunk encoder (clean camera frames)
    python -m bench.profile weights    # each step of a 10M-parameter policy push, timed, + cProfile of the robot side
    python -m bench.profile gil        # each robot-side step of a 100M swap beside a 1 kHz ticker: its worst delay
    python -m bench.profile ingest     # py-spy of a real learner while a real agent drains a state-only backlog
"""

from __future__ import annotations

import collections
import cProfile
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import common as C


def top(prof: cProfile.Profile, n: int = 14) -> str:
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(n)
    return s.getvalue()


def compress() -> None:
    from shared.chunk import StepRecord, build_batch, encode_chunk

    spec, obs = C.observations("clean", 50)
    steps = [StepRecord(obs=obs[k], action=np.zeros(4, np.float32), reward=0.0, next_obs=obs[k + 1],
                        terminated=False, truncated=False, step=k) for k in range(50)]
    t0 = time.perf_counter()
    for _ in range(10):
        batch = build_batch(spec, "r", "e", steps)
    t1 = time.perf_counter()
    for _ in range(10):
        encode_chunk(batch)
    t2 = time.perf_counter()
    print(f"per 50-step chunk: build_batch {1e3 * (t1 - t0) / 10:.2f} ms, encode_chunk (IPC + zstd) {1e3 * (t2 - t1) / 10:.2f} ms")
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(10):
        encode_chunk(build_batch(spec, "r", "e", steps))
    pr.disable()
    print(top(pr))


def weights() -> None:

    from edge_agent.policy_holder import PolicyHolder
    from shared.fsutil import atomic_write
    from shared.protocol import Policy
    from shared.protocol.stream import POLICY_PART_BYTES, PolicyReceiver
    from shared.weights import WeightsBlob, decode_weights, load_weights_file

    from cloud.policy_frames import PolicyFrames

    from .weights import make_blob

    d = Path(tempfile.mkdtemp())
    make_blob(10_000_000, 1, d / "p.safetensors")
    data = (d / "p.safetensors").read_bytes()
    import json

    sha = json.loads((d / "p.json").read_text())["sha256"]
    blob = WeightsBlob(1, sha, data)
    t = {}
    t0 = time.perf_counter()
    atomic_write(d / "latest.safetensors", data)
    t["learner: persist latest.safetensors (atomic_write + fsync), overlapped with the push"] = time.perf_counter() - t0
    frames = PolicyFrames()
    spans = [(o, min(o + POLICY_PART_BYTES, len(data))) for o in range(0, len(data), POLICY_PART_BYTES)]
    t0 = time.perf_counter()
    for a, b in spans:
        frames.part(blob, a, b)
    t["learner: encode the frames (one copy of the blob, shared by every link)"] = time.perf_counter() - t0
    rx = PolicyReceiver(1 << 31)
    parts = [Policy(1, sha, len(data), a, data[a:b]) for a, b in spans]
    t0 = time.perf_counter()
    whole = None
    for p in parts:
        whole = rx.add(p) or whole
    assert whole is not None
    t["robot: PolicyReceiver.add of every part (copy into one buffer + sha256 as they arrive)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    w = decode_weights(whole[2], None, 1 << 30)
    t["robot: decode_weights of the received buffer (verified already: zero-copy parse)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_weights_file(d / "latest.safetensors", sha, 1 << 30)
    t["robot: load_weights_file with sha256 (mmap, copy-on-write)"] = time.perf_counter() - t0
    holder = PolicyHolder({"observation": 10, "achieved_goal": 3, "desired_goal": 3}, 4)
    t0 = time.perf_counter()
    pr = cProfile.Profile()
    pr.enable()
    loaded = holder.prepare(w)
    pr.disable()
    t["robot: PolicyHolder.prepare (meta-device actor, assign, finite check)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    holder.swap(loaded)
    t["robot: swap"] = time.perf_counter() - t0
    for k, v in t.items():
        print(f"{1e3 * v:8.1f} ms  {k}")
    print(top(pr, 10))
    shutil.rmtree(d)


def ingest(seconds: float = 6.0) -> None:
    if shutil.which("py-spy") is None:
        sys.exit("py-spy not installed: pip install py-spy")
    root = Path(tempfile.mkdtemp(prefix="fleetrl-prof-"))
    try:
        cs = C.make_chunks("state", 60_000, "prof")
        learner = C.Learner(root).start()
        cfg = C.agent_config(root, "prof", learner.url)
        C.prefill_spool(cfg.parent / "spool", C.ChunkSet(cs.spec, cs.chunks * 3))
        agent = C.start_agent(cfg, drain_timeout=300)
        log = cfg.parent / "agent.log"
        C.wait_for(lambda: C.log_events(log, "link_up"), 60, "link")
        outs = {}
        procs = {}
        for who, p in (("learner", learner.proc), ("agent", agent)):
            outs[who] = root / f"{who}.txt"
            procs[who] = subprocess.Popen(["py-spy", "record", "--pid", str(p.pid), "-d", str(int(seconds)), "-r", "200",
                                           "--format", "raw", "-o", str(outs[who]), "--nonblocking"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for p in procs.values():
            p.wait(seconds + 30)
        agent.wait(300)
        learner.stop()
        for who, path in outs.items():
            summarize(who, path)
    finally:
        C.kill_all()
        shutil.rmtree(root, ignore_errors=True)


IDLE = {"_worker", "select", "wait", "_wait_for_tstate_lock", "epoll", "run_forever", "_run_once"}
OURS = ("cloud/", "shared/", "edge_agent/")


def summarize(who: str, path: Path, n: int = 14) -> None:
    """Busy samples only (threads waiting on a queue, a lock or epoll are dropped):
    inclusive share of fleetrl's own functions, and self time of every leaf."""
    incl: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    busy = total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        c = int(count)
        frames = stack.split(";")
        total += c
        leaf_fn = frames[-1].split(" (")[0].rsplit(".", 1)[-1]
        if leaf_fn in IDLE:
            continue
        busy += c
        seen = set()
        for f in frames:
            if any(o in f for o in OURS):
                name = f.split(" (")[0] + " [" + f.split(" (")[-1].split(":")[0].split("/work/main/")[-1] + "]"
                if name not in seen:
                    incl[name] += c
                    seen.add(name)
        leaf[frames[-1].split(" (")[0]] += c
    print(f"\n{who}: {busy} busy of {total} samples; inclusive share of busy samples (fleetrl functions)")
    for name, c in incl.most_common(n):
        print(f"  {100 * c / busy:5.1f}%  {name}")
    print(f"{who}: self time (share of busy samples)")
    for name, c in leaf.most_common(n):
        print(f"  {100 * c / busy:5.1f}%  {name}")


def gil(params: int = 100_000_000) -> None:
    """How long each robot-side step of a policy swap keeps a 1 kHz thread from running:
    a ticker thread sleeps 1 ms in a loop and records its worst lateness while each step runs."""
    import json
    import threading

    from edge_agent.policy_download import PolicyDownload
    from edge_agent.policy_holder import PolicyHolder
    from shared.weights import decode_weights, load_weights_file

    from .weights import make_blob

    d = Path(tempfile.mkdtemp())
    make_blob(params, 1, d / "p.safetensors")
    data = (d / "p.safetensors").read_bytes()
    sha = json.loads((d / "p.json").read_text())["sha256"]
    worst = [0.0]
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            time.sleep(0.001)
            worst[0] = max(worst[0], time.perf_counter() - t - 0.001)

    th = threading.Thread(target=ticker, daemon=True)
    th.start()
    time.sleep(0.2)

    def step(name: str, fn):
        worst[0] = 0.0
        t0 = time.perf_counter()
        out = fn()
        print(f"{1e3 * (time.perf_counter() - t0):8.1f} ms  worst tick delay {1e3 * worst[0]:7.1f} ms  {name}")
        return out

    part = 1 << 20
    from shared.protocol import Policy

    dl = PolicyDownload(1 << 31)
    parts = [Policy(version=1, sha256=sha, size=len(data), offset=off, body=data[off:off + part])
             for off in range(0, len(data), part)]

    def download():
        done = None
        for p in parts:
            done = dl.add(p) or done
        return done[2]

    whole = step(f"reassemble {len(data) // part} parts of 1 MiB, sha256 as they arrive (PolicyDownload.add)", download)
    step("decode_weights of the verified buffer (no re-hash, zero-copy)", lambda: decode_weights(whole, None, 1 << 31))
    step("load_weights_file, no re-hash (mmap copy-on-write, zero-copy)",
         lambda: load_weights_file(d / "p.safetensors", None, 1 << 31))
    w = step("load_weights_file with sha256", lambda: load_weights_file(d / "p.safetensors", sha, 1 << 31))
    holder = PolicyHolder({"observation": 10, "achieved_goal": 3, "desired_goal": 3}, 4)
    loaded = step("PolicyHolder.prepare (meta-device actor, assign, finite check)", lambda: holder.prepare(w))
    step("swap", lambda: holder.swap(loaded))
    stop.set()
    shutil.rmtree(d)


if __name__ == "__main__":
    {"compress": compress, "weights": weights, "ingest": ingest, "gil": gil}[sys.argv[1]]()
