"""ingest: durable end-to-end throughput, agent spool -> sealed Parquet on the learner.

A real edge-agent process starts with a spool pre-filled (by its own Spool
class) with episode chunks encoded exactly as it encodes them; it uploads them
to a real learner process, which validates, group-commits Parquet segments
(fsync, rename, manifest) and acks. Timed from the agent's ``link_up`` to its
``drained`` log line (everything acked durable), then every row is counted.
Baseline in the same run: the same chunk bodies streamed over a bare
websocket on loopback (aiohttp server, websockets client, no protocol, no disk).

Cost per commit: the learner's own write path (``ReplayBuffer.write``: Parquet,
fsync, rename, manifest log line) timed for each of 10,000 one-chunk segments
into one buffer; the first 100 commits against the last 100 show whether the
cost grows with the run (it did while the manifest was rewritten whole).

Ceilings: the same chunk bodies decompressed, then decompressed and validated
(``decode_chunk``), in this process on one core, against the same baseline. Ingest
must do at least that before it may store or ack a chunk, so these ratios bound
what any storage path reaches here.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import common as C
from ._rawws import send_all

FULL = {"state": 30_000, "clean": 3_000, "noisy": 2_000}
QUICK = {"noisy": 100}  # the smoke test: one kind is enough
COMMITS, QUICK_COMMITS, WINDOW = 10_000, 300, 100  # segments written; first and last WINDOW compared
LIMITS = {"max_inflight_chunks": 256}  # credit for a fast link (default 16: 64 kB of 4 kB state chunks in flight)
LABEL = {"state": "state-only", "clean": "128x128 RGB (MuJoCo)", "noisy": "128x128 RGB + camera noise"}


def raw_ws_seconds(bodies: list[bytes], root: Path) -> float:
    log = root / "rawws.log"
    p = C.spawn([sys.executable, "-m", "bench._rawws", "sink"], log, stdout=subprocess.PIPE)
    try:
        url = C.read_ready(p, log)
        return min(asyncio.run(send_all(url, bodies)) for _ in range(2))
    finally:
        C.stop(p)


def ceiling_seconds(cs: C.ChunkSet) -> tuple[float, float]:
    """Seconds to decompress the chunk bodies, and to decompress and validate them (``decode_chunk``,
    what ingest must do before it may store a byte), on one core: a bound on durable goodput that no
    storage path can beat without more cores or less checking."""
    from shared.chunk import decode_chunk
    from shared.compression import decompress

    bodies = [c[3] for c in cs.chunks]
    t0 = time.perf_counter()
    for b in bodies:
        decompress(b, 1 << 31)
    t1 = time.perf_counter()
    for b in bodies:
        decode_chunk(b, cs.spec, max_decompressed=1 << 31, max_rows=1 << 20)
    return t1 - t0, time.perf_counter() - t1


def run_kind(kind: str, n: int, root: Path, res: C.Result) -> None:
    robot = f"ingest-{kind}"
    cs = C.make_chunks(kind, n, robot)
    base_s = raw_ws_seconds([c[3] for c in cs.chunks], root)
    base_mbs = cs.wire_bytes / base_s / 1e6
    unzip_s, decode_s = ceiling_seconds(cs)
    learner = C.Learner(root / kind, limits=LIMITS).start()
    try:
        cfg = C.agent_config(root / kind, robot, learner.url, camera=kind != "state")
        C.prefill_spool(cfg.parent / "spool", cs)
        agent = C.start_agent(cfg, drain_timeout=600)
        rc = agent.wait(900)
        log = cfg.parent / "agent.log"
        up, drained = C.log_events(log, "link_up"), C.log_events(log, "drained")
        if rc != 0 or not up or not drained:
            raise RuntimeError(f"agent exited {rc}: {log.read_text()[-2000:]}")
        secs = drained[0][0] - up[0][0]
        count = C.count_exactly_once(learner.data_dir, robot, cfg.parent / "state")
    finally:
        learner.stop()
    rows = count["generated"]
    scale = rows / cs.rows  # the agent's own live episode rides along (~50 rows)
    wire_mbs = cs.wire_bytes * scale / secs / 1e6
    raw_mbs = cs.raw_bytes * scale / secs / 1e6
    tag = LABEL[kind]
    res.add(tag, "durable goodput (wire)", wire_mbs, "MB/s", base_mbs, C.ratio(wire_mbs, base_mbs), ">= 0.6x",
            wire_mbs / base_mbs >= 0.6)
    res.add(tag, "transitions/s", rows / secs, "1/s", cs.rows / base_s, C.ratio(rows / secs, cs.rows / base_s))
    res.add(tag, "raw (Arrow) MB/s", raw_mbs, "MB/s")
    for what, secs_ in (("ceiling: zstd decompress only, one core", unzip_s),
                        ("ceiling: decompress + validate (decode_chunk), one core", decode_s)):
        mbs = cs.wire_bytes / secs_ / 1e6
        res.add(tag, what, mbs, "MB/s", base_mbs, C.ratio(mbs, base_mbs))
    res.add(tag, "stored exactly once", float(count["stored"]), "rows", float(count["generated"]), None,
            "all, no dupes", count["stored"] == count["generated"] and count["duplicates"] == 0)
    res.extra[kind] = {"transitions": rows, "chunks": len(cs.chunks), "wire_bytes": cs.wire_bytes,
                       "raw_bytes": cs.raw_bytes, "seconds": secs, "baseline_seconds": base_s,
                       "compression": cs.raw_bytes / cs.wire_bytes, "decompress_s": unzip_s, "decode_s": decode_s,
                       **count}


def commit_cost(n: int, root: Path, res: C.Result) -> None:
    """Seconds per ``ReplayBuffer.write`` of one 50-step state chunk, for commits 1..WINDOW and n-WINDOW+1..n."""
    from cloud.buffer import ReplayBuffer
    from shared.chunk import decode_chunk

    cs = C.make_chunks("state", 50 * 4, "commit")
    batches = [decode_chunk(c[3], cs.spec, max_decompressed=1 << 30, max_rows=10_000) for c in cs.chunks]
    buf = ReplayBuffer(root / "commits", memory_capacity=200_000)
    buf.check_spec(cs.spec, "commit")
    took = []
    for seq in range(1, n + 1):
        t0 = time.perf_counter()
        buf.write([("commit", seq, batches[seq % len(batches)])])
        took.append(time.perf_counter() - t0)
    buf.store.close()
    first, last = took[:WINDOW], took[-WINDOW:]
    med_first, med_last = statistics.median(first), statistics.median(last)
    tag = f"cost per commit ({n:,} segments)"
    res.add(tag, f"median, commits {n - WINDOW + 1:,}-{n:,}", med_last * 1e3, "ms", med_first * 1e3,
            C.ratio(med_last, med_first), "<= 1.2x", med_last / med_first <= 1.2,
            note=f"baseline: median of commits 1-{WINDOW}")
    res.add(tag, f"mean, commits {n - WINDOW + 1:,}-{n:,}", statistics.fmean(last) * 1e3, "ms",
            statistics.fmean(first) * 1e3, C.ratio(statistics.fmean(last), statistics.fmean(first)))
    res.add(tag, "mean over all commits (snapshots included)", statistics.fmean(took) * 1e3, "ms")
    res.extra["commit_cost"] = {"commits": n, "first_ms": [round(x * 1e3, 3) for x in first],
                                "last_ms": [round(x * 1e3, 3) for x in last], "max_ms": max(took) * 1e3}


def run(quick: bool = False) -> C.Result:
    res = C.Result("ingest", quick)
    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="fleetrl-bench-ingest-") as d:
        for kind, n in sizes.items():
            run_kind(kind, n, Path(d), res)
        commit_cost(QUICK_COMMITS if quick else COMMITS, Path(d), res)
    res.notes.append(f"learner limits {LIMITS}: the credit a fast link needs (the default, 16 chunks, keeps "
                     "64 kB of 4 kB state chunks in flight); chunks are the agent's 50-step ones (an episode "
                     "is 50 steps, and a chunk never spans episodes)")
    res.notes.append("timed from the agent's link_up to drained (last ack, i.e. last segment fsynced); "
                     "learner and agent share this machine's cores with the baseline's two ends")
    return res
