"""The exact count every fault test and benchmark ends with: what each robot
says it generated (its ledger) against what the learner stored.

Stored rows are read straight from the Parquet segments the manifest names,
not through the product's buffer code: the count must not share the bugs it
is there to catch.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import pyarrow.parquet as pq

KEY_COLUMNS = ("robot_id", "episode_id", "step", "stream_seq")


class Robot(Protocol):
    """What the count needs of a robot: its id and its state directory (harness.Agent has both)."""

    robot_id: str
    state_dir: Path


@dataclass(frozen=True)
class RobotState:
    """A robot known by its id and state directory: an agent a test started by hand."""

    robot_id: str
    state_dir: Path


def read_ledger(state_dir: Path) -> dict[str, Any]:
    """The agent's own count of what it generated (state/ledger.json)."""
    return json.loads((state_dir / "ledger.json").read_text())


def chunk_rows(state_dir: Path) -> dict[int, int]:
    """Rows per chunk sequence number, from the agent's chunks.log."""
    rows: dict[int, int] = {}
    for line in (state_dir / "chunks.log").read_text().splitlines():
        seq, n = line.split()
        rows[int(seq)] = int(n)  # a reconciled chunk may appear twice: same rows
    return rows


def stored_rows(data_dir: Path, columns: Iterable[str] = KEY_COLUMNS) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(manifest, one dict per stored row) of a learner's data directory."""
    buf = data_dir / "buffer"
    from cloud.buffer.storage import read_manifest  # snapshot + the log of commits since it

    m = read_manifest(buf)
    assert m is not None, f"no buffer manifest in {buf}"
    manifest = m.to_dict()
    rows: list[dict[str, Any]] = []
    for s in manifest["segments"]:
        rows.extend(pq.read_table(buf / "segments" / s["name"], columns=list(columns)).to_pylist())
    return manifest, rows


def stored_count(data_dir: Path, robot_id: str | None = None) -> int:
    """How many rows are stored (for one robot, or all); 0 before the buffer wrote its manifest."""
    if not (data_dir / "buffer" / "manifest.json").exists():
        return 0
    _, rows = stored_rows(data_dir, ["robot_id"])
    return sum(1 for r in rows if robot_id is None or r["robot_id"] == robot_id)


def _tally(rows: list[dict[str, Any]], robot_id: str) -> tuple[list[dict[str, Any]], Counter]:
    mine = [r for r in rows if r["robot_id"] == robot_id]
    return mine, Counter((r["episode_id"], r["step"], r["stream_seq"]) for r in mine)


def count_exactly_once(data_dir: Path, robot_id: str, state_dir: Path) -> dict[str, int]:
    """Generated (the agent's ledger) against stored rows, duplicates by (episode, step, seq):
    the figures a benchmark reports, without asserting."""
    ledger = read_ledger(state_dir)
    _, rows = stored_rows(data_dir)
    mine, keys = _tally(rows, robot_id)
    return {"generated": ledger["transitions"], "stored": len(mine),
            "duplicates": sum(c - 1 for c in keys.values() if c > 1),
            "missing": ledger["transitions"] - len(keys)}


def assert_exactly_once(data_dir: Path, agents: list[Robot]) -> dict[str, dict[str, int]]:
    """Every transition each agent recorded is stored once; nothing else is stored.

    Chunks the robot reported lost (damaged on its disk) are the only rows
    allowed missing, and they must be listed in the manifest.
    """
    manifest, rows = stored_rows(data_dir)
    by_robot = Counter(r["robot_id"] for r in rows)
    assert set(by_robot) <= {a.robot_id for a in agents}, f"rows from unknown robots: {set(by_robot)}"
    totals = {}
    for a in agents:
        ledger = read_ledger(a.state_dir)
        per_chunk = chunk_rows(a.state_dir)
        lost_seqs = {s for r in manifest["lost"] if r["robot_id"] == a.robot_id for s in range(r["first"], r["last"] + 1)}
        lost_rows = sum(per_chunk.get(s, 0) for s in lost_seqs)
        mine, keys = _tally(rows, a.robot_id)
        dupes = sum(c - 1 for c in keys.values() if c > 1)
        seqs = {r["stream_seq"] for r in mine}
        totals[a.robot_id] = {"generated": ledger["transitions"], "stored": len(mine), "duplicates": dupes,
                              "lost_reported": lost_rows, "chunks": ledger["chunks"]}
        print(f"ledger {a.robot_id}: {totals[a.robot_id]}")
        assert dupes == 0, f"{a.robot_id}: {dupes} transitions stored twice"
        assert len(mine) == ledger["transitions"] - lost_rows, f"{a.robot_id}: {totals[a.robot_id]}"
        assert seqs | lost_seqs == set(range(1, ledger["last_seq"] + 1)), f"{a.robot_id}: stream seqs missing"
        assert manifest["hwm"].get(a.robot_id, 0) == ledger["last_seq"]
    return totals
