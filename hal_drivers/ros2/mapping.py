"""Messages -> observation arrays, action slices -> messages.

Decoders raise :class:`MappingError` for a message that cannot become the
configured field (missing joint, wrong image size, unknown encoding); the
driver then treats that field as stale and says why, instead of crashing.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from shared.schema import FieldSpec

from . import types
from .config import ActionTopic, ObservationTopic

_ENCODINGS = {"rgb8": (3, False), "bgr8": (3, True), "rgba8": (4, False), "bgra8": (4, True), "mono8": (1, False)}


class MappingError(ValueError):
    """A received message does not fit the configured observation field."""


def field_spec(cfg: ObservationTopic) -> FieldSpec:
    t = cfg.type
    if t == "sensor_msgs/msg/JointState":
        return FieldSpec((len(cfg.joints) * len(cfg.arrays),))
    if t in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"):
        assert cfg.height and cfg.width
        return FieldSpec((cfg.height, cfg.width, cfg.channels), "uint8", codec=cfg.codec,
                         quality=cfg.quality if cfg.codec == "jpeg" else None)
    if t == "geometry_msgs/msg/PoseStamped":
        return FieldSpec((7,))
    if t == "geometry_msgs/msg/WrenchStamped":
        return FieldSpec((6,))
    return FieldSpec((int(cfg.size or 0),))


def decode_observation(cfg: ObservationTopic, cdr: bytes) -> np.ndarray:
    """The observation field's value from one CDR message of the configured type."""
    try:
        msg = types.decode(cdr, cfg.type)
    except Exception as e:  # rosbags raises several types on truncated or foreign data
        raise MappingError(f"not a valid {cfg.type} CDR message: {e}") from None
    t = cfg.type
    if t == "sensor_msgs/msg/JointState":
        return _joint_state(cfg, msg)
    if t == "sensor_msgs/msg/Image":
        return _image(cfg, msg)
    if t == "sensor_msgs/msg/CompressedImage":
        return _compressed(cfg, msg)
    if t == "geometry_msgs/msg/PoseStamped":
        p, q = msg.pose.position, msg.pose.orientation
        return np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], np.float32)
    if t == "geometry_msgs/msg/WrenchStamped":
        f, tq = msg.wrench.force, msg.wrench.torque
        return np.array([f.x, f.y, f.z, tq.x, tq.y, tq.z], np.float32)
    data = np.asarray(msg.data, np.float32)
    if data.size != cfg.size:
        raise MappingError(f"Float64MultiArray has {data.size} values, expected {cfg.size}")
    return data


def _joint_state(cfg: ObservationTopic, msg: Any) -> np.ndarray:
    index = {n: i for i, n in enumerate(msg.name)}
    missing = [j for j in cfg.joints if j not in index]
    if missing:
        raise MappingError(f"JointState lacks joints {missing}")
    rows = []
    for arr in cfg.arrays:
        values = np.asarray(getattr(msg, arr), np.float64)
        if values.size != len(msg.name):
            raise MappingError(f"JointState.{arr} has {values.size} values for {len(msg.name)} joints")
        rows.append(values[[index[j] for j in cfg.joints]])
    return np.concatenate(rows).astype(np.float32)


def _fit(cfg: ObservationTopic, img: np.ndarray) -> np.ndarray:
    if img.shape[:2] != (cfg.height, cfg.width):
        raise MappingError(f"image is {img.shape[1]}x{img.shape[0]}, expected {cfg.width}x{cfg.height}")
    if img.shape[2] == cfg.channels:
        return np.ascontiguousarray(img)
    if cfg.channels == 1:  # colour -> grey (ITU-R 601 luma)
        grey = img[:, :, :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(grey + 0.5, 0, 255).astype(np.uint8)[:, :, None]
    return np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2) if img.shape[2] == 1 else img[:, :, :3])


def _image(cfg: ObservationTopic, msg: Any) -> np.ndarray:
    enc = str(msg.encoding).lower()
    if enc not in _ENCODINGS:
        raise MappingError(f"image encoding {msg.encoding!r} is not supported; use one of {', '.join(_ENCODINGS)}")
    ch, swap = _ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, np.uint8)
    if step < w * ch or data.size < h * step:
        raise MappingError(f"image data has {data.size} bytes for {w}x{h} {enc} with step {step}")
    img = data[: h * step].reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if swap:
        img = img[:, :, [2, 1, 0, 3][:ch]]
    return _fit(cfg, img)


def _compressed(cfg: ObservationTopic, msg: Any) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(np.asarray(msg.data, np.uint8).tobytes())) as pil:
            if pil.size[0] * pil.size[1] > 4 * (cfg.height or 1) * (cfg.width or 1):
                raise MappingError(f"compressed image is {pil.size}, far larger than configured")
            img = np.asarray(pil.convert("L" if cfg.channels == 1 else "RGB"))
    except MappingError:
        raise
    except Exception as e:  # PIL raises many types on corrupt input
        raise MappingError(f"compressed image ({msg.format!r}) does not decode: {e}") from None
    return _fit(cfg, img[:, :, None] if img.ndim == 2 else img)


def encode_action(cfg: ActionTopic, values: np.ndarray) -> bytes:
    """CDR bytes of the message that carries this slice of the action."""
    v = [float(x) for x in np.asarray(values, np.float64).ravel()]
    t = cfg.type
    if t == "trajectory_msgs/msg/JointTrajectory":
        sec = int(cfg.time_from_start_s)
        point = types.new(
            "trajectory_msgs/msg/JointTrajectoryPoint",
            positions=np.array(v if cfg.mode == "positions" else [], np.float64),
            velocities=np.array(v if cfg.mode == "velocities" else [], np.float64),
            accelerations=np.array([], np.float64),
            effort=np.array([], np.float64),
            time_from_start=types.new("builtin_interfaces/msg/Duration", sec=sec,
                                      nanosec=int(round((cfg.time_from_start_s - sec) * 1e9))),
        )
        # A zero stamp means "start now" to ros2_control's trajectory controllers.
        msg = types.new("trajectory_msgs/msg/JointTrajectory", header=types.header(0), joint_names=list(cfg.joints), points=[point])
        return types.encode(msg, t)
    if t == "geometry_msgs/msg/Twist":
        axes = dict(zip(cfg.axes, v))
        vec = {part: types.new("geometry_msgs/msg/Vector3", **{c: axes.get(f"{part}.{c}", 0.0) for c in "xyz"})
               for part in ("linear", "angular")}
        return types.encode(types.new(t, **vec), t)
    return types.encode(float64_array(v, "action"), t)


def float64_array(values: list[float], label: str) -> Any:
    """A Float64MultiArray with one labelled dimension."""
    dim = types.new("std_msgs/msg/MultiArrayDimension", label=label, size=len(values), stride=len(values))
    layout = types.new("std_msgs/msg/MultiArrayLayout", dim=[dim], data_offset=0)
    return types.new("std_msgs/msg/Float64MultiArray", layout=layout, data=np.array(values, np.float64))
