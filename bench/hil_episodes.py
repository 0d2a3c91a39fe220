"""bench hil's reading of a learner's stored episodes: success, interventions and time, per episode.

Everything comes from the sealed Parquet segments (the robot's ``t_ns``, each
row's ``success``, ``intervention`` and ``demo``), so the curves show what the
learner stored, not what a robot reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Episode:
    robot_id: str
    end_ns: int  # the robot's wall clock at the episode's last step
    steps: int
    success: bool
    intervention_steps: int
    demo: bool


def read_episodes(data_dir: Path, max_steps: int = 50) -> list[Episode]:
    """Finished episodes in a learner's sealed segments, by end time. An episode counts when its last
    row ended it (terminated, or truncated at the env's time limit): one cut by a robot's shutdown does not."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from cloud.buffer.storage import read_manifest, segment_path

    root = data_dir / "buffer"
    manifest = read_manifest(root)
    if manifest is None or not manifest.segments:
        return []
    cols = ["robot_id", "episode_id", "step", "t_ns", "success", "intervention", "demo", "terminated", "truncated"]
    t = pa.concat_tables([pq.read_table(segment_path(root, s), columns=cols) for s in manifest.segments])
    per = t.group_by(["robot_id", "episode_id"]).aggregate(
        [("step", "count"), ("step", "max"), ("t_ns", "max"), ("intervention", "sum"), ("demo", "max")])
    ends = t.filter(pc.or_(t.column("terminated"), t.column("truncated")))
    end = {(r, e): (bool(term), int(step), bool(ok)) for r, e, term, step, ok in zip(
        *(ends.column(k).to_pylist() for k in ("robot_id", "episode_id", "terminated", "step", "success")))}
    out = []
    for row in per.to_pylist():
        key = (row["robot_id"], row["episode_id"])
        if key not in end:
            continue
        term, last, ok = end[key]
        if not term and last + 1 < max_steps:
            continue
        out.append(Episode(row["robot_id"], int(row["t_ns_max"]), int(row["step_count"]), ok,
                           int(row["intervention_sum"]), bool(row["demo_max"])))
    return sorted(out, key=lambda e: e.end_ns)


def windowed_rate(eps: list[Episode], window: int) -> float | None:
    """Success over the last ``window`` episodes (fewer while there are fewer); None without any."""
    last = eps[-window:]
    return sum(e.success for e in last) / len(last) if last else None


def curve(eps: list[Episode], t0_ns: int, window: int) -> dict[str, list[Any]]:
    """The rolling success rate at each episode's end, in seconds since the variant started."""
    out: dict[str, list[Any]] = {"t_s": [], "success_rate": [], "episodes": []}
    for i, e in enumerate(eps):
        out["t_s"].append(round(max(0.0, (e.end_ns - t0_ns) / 1e9), 2))
        out["success_rate"].append(windowed_rate(eps[: i + 1], window))
        out["episodes"].append(i + 1)
    return out


def time_to(c: dict[str, list[Any]], target: float, window: int) -> float | None:
    """Seconds until the rate over a full window first reached ``target``; None if it never did."""
    for t, r, n in zip(c["t_s"], c["success_rate"], c["episodes"]):
        if n >= window and r is not None and r >= target:
            return float(t)
    return None


def intervention_windows(eps: list[Episode], t0_ns: int, width_s: float) -> list[dict[str, float]]:
    """Per ``width_s`` of wall clock: episodes ended, their success and the share of steps the operator drove."""
    bins: dict[int, list[Episode]] = {}
    for e in eps:
        bins.setdefault(int(max(0, e.end_ns - t0_ns) / 1e9 // width_s), []).append(e)
    return [{"t_s": k * width_s, "episodes": len(b), "success": sum(e.success for e in b) / len(b),
             "rate": sum(e.intervention_steps for e in b) / max(1, sum(e.steps for e in b))}
            for k, b in sorted(bins.items())]
