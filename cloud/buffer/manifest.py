"""The buffer manifest: a JSON snapshot plus an append-only log of commits since it.

Rewriting every segment ever sealed on each commit made a commit's cost grow
with the run. Instead each commit is one checksummed line appended to
``manifest.log`` and fsynced; now and then (when the log holds as many commits
as the snapshot has segments, so the cost per commit stays flat on average)
the state is written as a new snapshot (atomic replace) and the log emptied.

Each log line carries its commit number ``n``; the snapshot says how many
commits it includes, so a crash between writing a snapshot and emptying the log
replays nothing twice. A torn last line (power cut mid-append) is dropped;
damage before a good line is an error naming the file.

Line layout: ``crc32 (8 hex digits) SP json LF``; the crc covers the JSON.
"""

from __future__ import annotations

import json
import os
import weakref
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import StorageError
from shared.fsutil import fsync_dir

MANIFEST = "manifest.json"
LOG = "manifest.log"
MANIFEST_VERSION = 2  # 2: a snapshot that a manifest.log may extend (``commits``); 1 is read as a snapshot alone
READ_VERSIONS = (1, 2)


@dataclass
class SegmentInfo:
    name: str
    rows: int
    robots: dict[str, list[int]]  # robot id -> [first seq, last seq, rows]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "robots": self.robots}


def _damaged(path: Path | str, e: Exception) -> StorageError:
    why = (str(e).splitlines() or [""])[0][:200]
    return StorageError(f"buffer manifest {path} is damaged or not one this build reads "
                        f"({type(e).__name__}: {why}); the buffer was left as it is")


@dataclass
class Manifest:
    run_id: str
    spec: dict[str, Any] | None = None
    segments: list[SegmentInfo] = field(default_factory=list)
    hwm: dict[str, int] = field(default_factory=dict)  # robot id -> highest durable stream seq
    lost: list[dict[str, Any]] = field(default_factory=list)  # ranges robots reported damaged
    next_segment: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    robot_bytes: dict[str, int] | None = None  # robot id -> disk bytes of its rows (segment size, shared by rows)
    commits: int = 0  # log records this state includes (the snapshot's, plus those replayed)
    rows: int = field(default=0, compare=False)  # sum of the segments' rows, kept as they are added
    version: int = field(default=MANIFEST_VERSION, compare=False)  # the layout it was read in

    def __post_init__(self) -> None:
        self.rows = sum(s.rows for s in self.segments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION, "run_id": self.run_id, "spec": self.spec,
            "segments": [s.to_dict() for s in self.segments], "hwm": self.hwm, "lost": self.lost,
            "next_segment": self.next_segment, "extra": self.extra, "robot_bytes": self.robot_bytes,
            "commits": self.commits,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path | str = MANIFEST) -> "Manifest":
        """Parse a snapshot; StorageError naming ``path`` if it is damaged or of another version."""
        try:
            return cls._parse(json.loads(data))
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSON, UTF-8, missing or mistyped fields
            raise _damaged(path, e) from None

    @classmethod
    def _parse(cls, d: Any) -> "Manifest":
        if d.get("version") not in READ_VERSIONS:
            raise ValueError(f"unsupported manifest version {d.get('version')!r}")
        return cls(
            run_id=d["run_id"], spec=d.get("spec"),
            segments=[SegmentInfo(s["name"], s["rows"], s["robots"]) for s in d["segments"]],
            hwm={k: int(v) for k, v in d["hwm"].items()}, lost=list(d.get("lost", [])),
            next_segment=int(d["next_segment"]),
            extra=d.get("extra", {}),
            robot_bytes=None if d.get("robot_bytes") is None else {k: int(v) for k, v in d["robot_bytes"].items()},
            commits=int(d.get("commits", 0)), version=int(d["version"]),
        )

    # ------------------------------------------------------------ log records

    def charge(self, seg: SegmentInfo, size: int) -> None:
        """Add a segment's disk bytes to its robots, shared by their rows (what the disk quota counts)."""
        if self.robot_bytes is None:
            return  # an old manifest: the store charges every segment from its file once opened
        for rid, (_, _, rows) in seg.robots.items():
            share = size * rows // max(seg.rows, 1)
            self.robot_bytes[rid] = self.robot_bytes.get(rid, 0) + share

    def apply(self, rec: dict[str, Any]) -> None:
        """One commit (what :meth:`ManifestLog.append` wrote), live or replayed: the same code for both."""
        op = rec["op"]
        if op == "seg":
            if rec["seg"] is not None:
                s = rec["seg"]
                info = SegmentInfo(s["name"], int(s["rows"]), s["robots"])
                self.segments.append(info)
                self.rows += info.rows
                self.charge(info, int(rec["bytes"]))
            for rid, last in rec["hwm"].items():
                self.hwm[rid] = max(self.hwm.get(rid, 0), int(last))
            self.lost.extend(rec["lost"])
            self.next_segment = int(rec["next"])
        elif op == "spec":
            self.spec = rec["spec"]
        elif op == "extra":
            self.extra[rec["key"]] = rec["value"]
        else:
            raise ValueError(f"unknown manifest log record op {op!r}")
        self.commits = int(rec["n"])


def _line(rec: dict[str, Any]) -> bytes:
    body = json.dumps(rec, separators=(",", ":")).encode()
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def _parse_line(line: bytes) -> dict[str, Any] | None:
    if len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        rec = json.loads(body)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("n"), int) else None


def read_log(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, bytes of the whole good lines). A torn or bad last line is dropped; a bad line with
    good ones after it is damage (StorageError naming the file and line)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    lines = data.split(b"\n")
    recs: list[dict[str, Any]] = []
    good = 0
    for i, ln in enumerate(lines[:-1]):  # the piece after the last LF is torn (or empty)
        rec = _parse_line(ln)
        if rec is None:
            if any(x.strip(b"\0") for x in lines[i + 1:]):
                raise StorageError(f"buffer manifest log {path} is damaged at line {i + 1} (good lines follow it); "
                                   f"the buffer was left as it is")
            break  # the last line, torn (a power cut may leave zeros or garbage): never acked
        recs.append(rec)
        good += len(ln) + 1
    return recs, good


def replay(m: Manifest, recs: list[dict[str, Any]], path: Path | str) -> None:
    """Apply the records the snapshot does not include; a gap in commit numbers is StorageError."""
    for rec in recs:
        n = rec["n"]
        if n <= m.commits:
            continue  # in the snapshot already (a crash before the log was emptied)
        if n != m.commits + 1:
            raise StorageError(f"buffer manifest log {path} skips from commit {m.commits} to {n}: "
                               f"it does not belong to {MANIFEST}; the buffer was left as it is")
        try:
            m.apply(rec)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise _damaged(path, e) from None


def load(root: Path) -> Manifest | None:
    """Snapshot + log as on disk, or None where there is no snapshot; writes nothing (readers beside a live
    learner). A compaction between reading the two is seen as a gap and read again."""
    path = Path(root) / MANIFEST
    for attempt in range(3):
        if not path.is_file():
            return None
        m = Manifest.from_json(path.read_bytes(), path)
        recs, _ = read_log(Path(root) / LOG)
        try:
            replay(m, recs, Path(root) / LOG)
            return m
        except StorageError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class ManifestLog:
    """The open log of one store: appends fsynced lines; ``reset`` empties it after a snapshot."""

    def __init__(self, path: Path, size: int):
        self.path = Path(path)
        created = not self.path.exists()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, size)  # cut a torn last line: appends must start on a line of their own
        os.lseek(self.fd, size, os.SEEK_SET)
        self.size = size
        self._closer = weakref.finalize(self, os.close, self.fd)  # a store dropped without close() frees it too
        self._torn = False  # a failed append could not be cut back: cut it before the next one
        if created:
            fsync_dir(self.path.parent)

    def append(self, rec: dict[str, Any]) -> None:
        """Durable once this returns. On failure (disk full, I/O error) the log is cut back to where it was."""
        data = _line(rec)
        if self._torn:
            os.ftruncate(self.fd, self.size)
            os.lseek(self.fd, self.size, os.SEEK_SET)
            self._torn = False
        try:
            _write_all(self.fd, data)
            os.fdatasync(self.fd)
        except BaseException:
            try:
                os.ftruncate(self.fd, self.size)  # shrinking needs no space
                os.lseek(self.fd, self.size, os.SEEK_SET)
            except OSError:
                self._torn = True  # recovery drops a torn last line; the next append cuts it first
            raise
        self.size += len(data)

    def reset(self) -> None:
        """Empty the log (its records are in the snapshot just written)."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.fsync(self.fd)
        self.size = 0

    def close(self) -> None:
        self._closer()
