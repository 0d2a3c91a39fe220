"""Episodes as MCAP files with ROS 2 (CDR) messages, for Foxglove and ``ros2 bag``.

One file per episode, ``<out>/<robot_id>/<episode_id>.mcap``; each step's
values are stamped with the step's ``t_ns``:

``/fleetrl/obs/<field>``  std_msgs/Float32MultiArray (state), sensor_msgs/Image
                           (raw camera fields) or sensor_msgs/CompressedImage
                           (png/jpeg fields, bytes passed through); one message
                           per step plus the episode's final next observation
                           (camera frames are stored once: the final frame is
                           ``next_obs`` of the episode's last row, which always
                           ends a chunk; other rows' next frames are the
                           following step's frames, already written)
``/fleetrl/action``       std_msgs/Float32MultiArray
``/fleetrl/reward``       std_msgs/Float32
``/fleetrl/policy_action`` std_msgs/Float32MultiArray: what the policy proposed (differs from
                           ``action`` where a human took over)
``/fleetrl/step``         std_msgs/String, JSON: step, policy_version, stream_seq, the flags
                           (terminated, truncated, success, intervention, demo) and human_reward

Messages are encoded by rosbags (the codec the ROS 2 driver uses) and the
schemas are the ``ros2msg`` definitions rosbag2's MCAP plugin writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hal_drivers.ros2 import types
from shared.errors import ConfigError
from shared.ids import check_id
from shared.schema import NEXT_PREFIX, OBS_PREFIX, EpisodeSpec, FieldSpec

from .episodes import Episode

F32_ARRAY = "std_msgs/msg/Float32MultiArray"


@dataclass
class ExportReport:
    files: list[Path] = field(default_factory=list)
    episodes: int = 0
    steps: int = 0


def _f32_array(values: np.ndarray, label: str) -> Any:
    v = np.asarray(values, np.float32).ravel()
    dim = types.new("std_msgs/msg/MultiArrayDimension", label=label, size=v.size, stride=v.size)
    return types.new(F32_ARRAY, layout=types.new("std_msgs/msg/MultiArrayLayout", dim=[dim], data_offset=0), data=v)


def _image(value: Any, spec: FieldSpec, name: str, t_ns: int) -> tuple[str, Any]:
    codec = spec.codec or "raw"
    data = np.frombuffer(value, np.uint8)
    if codec != "raw":
        return "sensor_msgs/msg/CompressedImage", types.new(
            "sensor_msgs/msg/CompressedImage", header=types.header(t_ns, name), format=codec, data=data)
    h, w, c = spec.shape
    return "sensor_msgs/msg/Image", types.new(
        "sensor_msgs/msg/Image", header=types.header(t_ns, name), height=h, width=w,
        encoding="mono8" if c == 1 else "rgb8", is_bigendian=0, step=w * c, data=data)


class _File:
    """One MCAP file: schemas and channels registered on first use."""

    def __init__(self, path: Path):
        from mcap.writer import Writer

        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "wb")
        self._w = Writer(self._fh)
        self._w.start(profile="ros2", library="fleetrl-export")
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, tuple[int, str]] = {}
        self._seq: dict[str, int] = {}

    def write(self, topic: str, ros_type: str, msg: Any, t_ns: int) -> None:
        if ros_type not in self._schemas:
            self._schemas[ros_type] = self._w.register_schema(ros_type, "ros2msg", types.msgdef(ros_type).encode())
        if topic not in self._channels:
            self._channels[topic] = (self._w.register_channel(topic, "cdr", self._schemas[ros_type]), ros_type)
        channel, declared = self._channels[topic]
        assert declared == ros_type, f"{topic} carries {declared}, not {ros_type}"
        seq = self._seq.get(topic, 0)
        self._seq[topic] = seq + 1
        self._w.add_message(channel, log_time=t_ns, data=types.encode(msg, ros_type), publish_time=t_ns, sequence=seq)

    def close(self) -> None:
        self._w.finish()
        self._fh.close()


def _observation(f: _File, spec: EpisodeSpec, row: dict[str, Any], prefix: str, t_ns: int) -> None:
    for name, fs in spec.observation.items():
        value = row[prefix + name]
        if value is None:  # a next_obs camera frame off a chunk's last row: stored once, as the next step's obs
            continue
        if fs.is_image:
            ros_type, msg = _image(value, fs, name, t_ns)
        else:
            ros_type, msg = F32_ARRAY, _f32_array(np.asarray(value, np.float32), name)
        f.write(f"/fleetrl/obs/{name}", ros_type, msg, t_ns)


def episode_path(out_dir: Path, robot_id: str, episode_id: str) -> Path:
    """``<out>/<robot_id>/<episode_id>.mcap``; ConfigError unless both are safe ids and the path stays under out."""
    for kind, value in (("robot id", robot_id), ("episode id", episode_id)):
        try:
            check_id(kind, value)
        except ValueError as e:
            raise ConfigError(f"export: {e}") from None
    path = Path(out_dir) / robot_id / f"{episode_id}.mcap"
    root, real = Path(out_dir).resolve(), path.resolve()
    if not real.is_relative_to(root) or real.parent.parent != root:
        raise ConfigError(f"export: {robot_id}/{episode_id}.mcap would land outside {root}")
    return path


def write_episode(ep: Episode, spec: EpisodeSpec, out_dir: Path) -> Path:
    path = episode_path(out_dir, ep.robot_id, ep.episode_id)
    f = _File(path)
    try:
        rows = ep.table.to_pylist()
        for row in rows:
            t = int(row["t_ns"])
            _observation(f, spec, row, OBS_PREFIX, t)
            f.write("/fleetrl/action", F32_ARRAY, _f32_array(np.asarray(row["action"]), "action"), t)
            f.write("/fleetrl/reward", "std_msgs/msg/Float32", types.new("std_msgs/msg/Float32", data=float(row["reward"])), t)
            proposed = row.get("policy_action", row["action"])
            f.write("/fleetrl/policy_action", F32_ARRAY, _f32_array(np.asarray(proposed), "policy_action"), t)
            info = {k: row[k] for k in ("step", "policy_version", "terminated", "truncated", "success", "intervention")}
            info["demo"] = bool(row.get("demo", False))
            info["human_reward"] = float(row.get("human_reward", 0.0))
            info["stream_seq"] = int(row["stream_seq"]) if "stream_seq" in row else None
            f.write("/fleetrl/step", "std_msgs/msg/String", types.new("std_msgs/msg/String", data=json.dumps(info)), t)
        if rows:  # the final next observation, one mean step period after the last step
            t_first, t_last = int(rows[0]["t_ns"]), int(rows[-1]["t_ns"])
            t_end = t_last + max(1, (t_last - t_first) // max(1, len(rows) - 1))
            _observation(f, spec, rows[-1], NEXT_PREFIX, t_end)
    finally:
        f.close()
    return path


def export_mcap(episodes: list[Episode] | Any, spec: EpisodeSpec, out_dir: Path) -> ExportReport:
    report = ExportReport()
    for ep in episodes:
        report.files.append(write_episode(ep, spec, out_dir))
        report.episodes += 1
        report.steps += ep.table.num_rows
    return report


__all__ = ["ExportReport", "episode_path", "export_mcap", "write_episode"]
