"""Versioned demonstration datasets: D_sim and D_real as Parquet files with a manifest.

A dataset version is a folder ``<dir>/<name>-<key>/`` holding ``rows.parquet`` (the stored
buffer's row schema, ``EpisodeSpec.arrow_schema()``: a D_real file and a learner's segment hold
the same columns) and ``manifest.json`` (name, generator settings, rows, episodes, the file's
sha256). ``key`` is a hash of the generator settings, so a changed setting makes a new version
beside the old one and never overwrites it, and a run with the same settings reuses the files
of an earlier run. A version is written into a temporary folder and renamed into place, so a
kill leaves either a whole version or none; a file whose bytes no longer match its manifest is
refused (StorageError naming the file), never silently regenerated over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cloud.learner.chunks import table_chunks
from shared.errors import StorageError
from shared.fsutil import fsync_dir
from shared.chunk import StepRecord, build_batch
from shared.schema import OBS_PREFIX, EpisodeSpec

from .losses import ChunkDemos, Demos

FORMAT = "fleetrl.rlco.dataset.v1"
ROWS, MANIFEST = "rows.parquet", "manifest.json"
Progress = Callable[[int, int], None]  # (episodes done, episodes in all)


@dataclass(frozen=True)
class Dataset:
    """A dataset version on disk, checked."""

    path: Path
    manifest: dict[str, Any]

    @property
    def rows_path(self) -> Path:
        return self.path / ROWS

    def table(self) -> pa.Table:
        return pq.read_table(self.rows_path)

    def demos(self, fields: tuple[str, ...]) -> Demos:
        """Flat observations (``fields`` in order) and actions, for SFT."""
        t = self.table()
        obs = np.concatenate([_column(t, OBS_PREFIX + f) for f in fields], axis=1)
        return Demos(obs.astype(np.float32), _column(t, "action").astype(np.float32))

    def chunks(self, fields: tuple[str, ...], horizon: int) -> ChunkDemos:
        """Flow-policy training pairs (observation, chunk of the next ``horizon`` actions of its episode),
        cut by the learner's ``table_chunks`` (the rows are in its stored-row schema)."""
        c = table_chunks(self.table(), list(fields), horizon)
        return ChunkDemos(c.obs, c.actions, c.valid)


def _column(t: pa.Table, name: str) -> np.ndarray:
    col = t.column(name).combine_chunks()
    width = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), width)


def settings_key(settings: Mapping[str, Any]) -> str:
    """A short, stable hash of the generator settings: the version's name."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def open_version(path: Path) -> Dataset:
    """A version folder, checked against its manifest; StorageError names what is wrong."""
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise StorageError(f"{mpath}: no manifest (not a dataset version)") from None
    except ValueError as e:
        raise StorageError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StorageError(f"{mpath}: format is {str(manifest.get('format') if isinstance(manifest, dict) else manifest)[:60]!r}, "
                           f"expected {FORMAT!r}")
    rows = path / ROWS
    if not rows.exists():
        raise StorageError(f"{rows}: missing (the manifest lists {manifest.get('rows')} rows)")
    digest = file_sha256(rows)
    if digest != manifest.get("sha256"):
        raise StorageError(f"{rows}: content hash {digest[:12]}... does not match the manifest's "
                           f"{str(manifest.get('sha256'))[:12]}... (corrupted or edited); delete {path} to regenerate it")
    return Dataset(path, manifest)


def get_or_make(root: Path, name: str, settings: Mapping[str, Any],
                make: Callable[[], tuple[pa.Table, dict[str, Any]]]) -> tuple[Dataset, bool]:
    """The version of ``name`` with these settings: reused when on disk, else made and written.
    Returns (dataset, made now)."""
    key = settings_key(settings)
    path = Path(root) / f"{name}-{key}"
    if path.exists():
        ds = open_version(path)
        if ds.manifest.get("settings") != json.loads(json.dumps(settings, default=str)):
            raise StorageError(f"{path / MANIFEST}: settings differ from the ones its name was hashed from")
        return ds, False
    t0 = time.monotonic()
    table, stats = make()
    return write_version(path, name, settings, table, {**stats, "seconds": round(time.monotonic() - t0, 1)}), True


def write_version(path: Path, name: str, settings: Mapping[str, Any], table: pa.Table,
                  stats: Mapping[str, Any]) -> Dataset:
    """Write a version atomically: a temporary folder, fsynced, renamed into place."""
    if table.num_rows == 0:
        raise StorageError(f"dataset {name}: no rows to write (no demonstration kept)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    pq.write_table(table, tmp / ROWS, compression="zstd")
    manifest = {"format": FORMAT, "name": name, "settings": json.loads(json.dumps(settings, default=str)),
                "rows": table.num_rows, "episodes": len(set(table.column("episode_id").to_pylist())),
                "sha256": file_sha256(tmp / ROWS), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **dict(stats)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for f in (ROWS, MANIFEST):
        with open(tmp / f, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return Dataset(path, manifest)


# ---------------------------------------------------------------- rows


def episode_rows(spec: EpisodeSpec, robot_id: str, episode_id: str, steps: list[tuple[Mapping[str, np.ndarray], np.ndarray,
                 Any, Mapping[str, np.ndarray]]]) -> pa.RecordBatch:
    """One episode in the buffer's row schema (as a robot's chunk builds it); ``steps``: (obs, action, StepResult,
    next_obs). Times are step indices, so the same episodes give the same bytes (and content hash)."""
    return build_batch(spec, robot_id, episode_id, [
        StepRecord(obs=dict(obs), action=np.asarray(action, np.float32).ravel(), reward=float(res.reward),
                   next_obs=dict(nxt), terminated=bool(res.terminated), truncated=bool(res.truncated),
                   success=bool(res.success), step=i, t_ns=i, demo=True)
        for i, (obs, action, res, nxt) in enumerate(steps)])


def to_table(spec: EpisodeSpec, parts: list[pa.RecordBatch]) -> pa.Table:
    return pa.Table.from_batches(parts, schema=spec.arrow_schema())


def expert_episodes(robot: Any, expert: Callable[[Mapping[str, np.ndarray]], np.ndarray], episodes: int,
                    noise: float, rng: np.random.Generator) -> Iterator[tuple[list[Any], bool]]:
    """Run the expert ``episodes`` times on ``robot``: (steps, succeeded) per episode."""
    for _ in range(episodes):
        obs = robot.reset()
        steps: list[Any] = []
        while True:
            a = np.asarray(expert(obs), np.float32)
            if noise:
                a = np.clip(a + rng.normal(0.0, noise, a.shape).astype(np.float32), -1.0, 1.0)
            res = robot.step(a)
            steps.append((obs, a, res, res.observation))
            obs = res.observation
            if res.terminated or res.truncated:
                break
        yield steps, bool(steps[-1][2].success)


def expert_table(robot: Any, expert: Callable[[Mapping[str, np.ndarray]], np.ndarray], episodes: int, noise: float,
                 seed: int, success_only: bool, robot_id: str, progress: Progress | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """The expert's episodes on ``robot`` (in this process) as a table, and what was kept."""
    spec = robot.describe().episode_spec()
    rng = np.random.default_rng(seed)
    parts, succeeded = [], 0
    for i, (steps, ok) in enumerate(expert_episodes(robot, expert, episodes, noise, rng)):
        succeeded += ok
        if ok or not success_only:
            parts.append(episode_rows(spec, robot_id, f"{robot_id}-{i}", steps))
        if progress:
            progress(i + 1, episodes)
    return to_table(spec, parts), {"recorded": episodes, "succeeded": succeeded, "kept": len(parts)}


def successful_episodes(table: pa.Table) -> pa.Table:
    """The rows of episodes whose last step succeeded."""
    ids = table.column("episode_id").to_pylist()
    steps, succ = table.column("step").to_pylist(), table.column("success").to_pylist()
    last: dict[str, tuple[int, bool]] = {}
    for e, s, ok in zip(ids, steps, succ):
        if e not in last or s > last[e][0]:
            last[e] = (s, ok)
    keep = np.array([last[e][1] for e in ids], bool)
    return table.filter(pa.array(keep))
