"""Read whole episodes out of a run's buffer, read-only.

It reads the manifest and sealed segments read-only (``storage.read_manifest``)
rather than opening a ``SegmentStore``: that would run crash recovery and
delete a live learner's in-flight segment files.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cloud.buffer.storage import MANIFEST, read_manifest, segment_path
from shared.chunk import upgrade
from shared.errors import ConfigError
from shared.ids import RULE, is_safe_id
from shared.schema import EpisodeSpec


@dataclass(frozen=True)
class Episode:
    robot_id: str
    episode_id: str
    table: pa.Table  # this episode's rows in step order (stream_seq included)


def buffer_root(data_dir: Path) -> Path:
    """Accept a run's data_dir (``<data_dir>/buffer``) or the buffer directory itself."""
    for root in (Path(data_dir) / "buffer", Path(data_dir)):
        if (root / MANIFEST).is_file():
            return root
    raise ConfigError(f"data_dir: no buffer manifest under {data_dir} (expected {Path(data_dir) / 'buffer' / MANIFEST})")


class BufferEpisodes:
    def __init__(self, data_dir: Path):
        self.root = buffer_root(data_dir)
        manifest = read_manifest(self.root)
        if manifest is None:  # removed since buffer_root looked
            raise ConfigError(f"data_dir: no buffer manifest under {self.root}")
        self.manifest = manifest
        if self.manifest.spec is None:
            raise ConfigError(f"data_dir: the buffer at {self.root} holds no data yet")
        self.spec = EpisodeSpec.from_dict(self.manifest.spec).current()  # segments read in this build's layout

    def episodes(self, robots: list[str] | None = None, episode_ids: list[str] | None = None) -> Iterator[Episode]:
        """Episodes in order of first appearance; one episode may span several segments."""
        tables = []
        for seg in self.manifest.segments:
            if robots and not set(seg.robots) & set(robots):
                continue
            t = upgrade(pq.read_table(segment_path(self.root, seg)))  # a run older fleetrl began: v2 beside v3
            if robots:
                t = t.filter(pc.is_in(t.column("robot_id"), pa.array(robots)))
            if episode_ids:
                t = t.filter(pc.is_in(t.column("episode_id"), pa.array(episode_ids)))
            if t.num_rows:
                tables.append(t)
        if not tables:
            return
        table = pa.concat_tables(tables)
        order: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, key in enumerate(zip(table.column("robot_id").to_pylist(), table.column("episode_id").to_pylist())):
            order[key].append(i)
        bad = [(rid, eid) for rid, eid in order if not (is_safe_id(rid) and is_safe_id(eid))]
        if bad:  # checked before the first file is written: a bad id writes nothing
            rid, eid = bad[0]
            raise ConfigError(f"robot {str(rid)[:40]!r} episode {str(eid)[:40]!r} is not a safe id ({RULE}); "
                              f"{len(bad)} such episode(s), nothing exported; select others with --robot/--episode")
        for (rid, eid), rows in order.items():
            ep = table.take(pa.array(rows))
            ep = ep.take(pc.sort_indices(ep, sort_keys=[("step", "ascending")]))
            yield Episode(rid, eid, ep)
