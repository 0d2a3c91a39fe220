"""The episode schema: what one recorded step looks like, as an Arrow schema.

Both sides build the schema from the same :class:`EpisodeSpec` (sent in the
robot's hello), so a chunk that does not match it is refused, not guessed at.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .errors import SchemaError

CODECS = ("raw", "png", "jpeg")
MAX_FIELD_ELEMENTS = 1 << 26  # 64 Mi values: a 4K RGB camera fits, an absurd spec does not
MAX_ACTION_DIM = 4096
SCHEMA_VERSION = 4  # 3: policy_action, human_reward and demo columns (humans in the loop); 4: chunk_index
FRAMES_ONCE_VERSION = 2  # from 2: camera frames stored once (next_obs image columns hold the chunk's last frame only)
STATE_ONLY_VERSIONS = (1,)  # older versions whose layout is identical to 2 for specs without image fields
READABLE_VERSIONS = (1, 2, 3, 4)
# Columns added by version 3, with the value a row of an older robot (or segment) gets: the action
# it executed was its policy's, no human reward, not a demonstration.
V3_COLUMNS = ("policy_action", "human_reward", "demo")
# Added by version 4: the step's position in the action chunk that planned it (null: not from a chunk, and
# every row of an older robot or segment).
V4_COLUMNS = ("chunk_index",)
OBS_PREFIX = "obs."
NEXT_PREFIX = "next_obs."


@dataclass(frozen=True)
class FieldSpec:
    """One observation field: a float vector, or a camera image.

    ``codec`` applies to images: ``raw`` (bytes under the chunk's zstd; lossless),
    ``png`` (lossless) or ``jpeg`` (at ``quality``): a per-camera choice made
    against the site's uplink.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"  # "float32" for state, "uint8" for images
    codec: str | None = None
    quality: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "uint8"):
            raise SchemaError(f"unsupported dtype {self.dtype!r}")
        if not 0 < len(self.shape) <= 4 or any(int(s) <= 0 for s in self.shape):
            raise SchemaError(f"bad shape {self.shape!r}")
        if math.prod(self.shape) > MAX_FIELD_ELEMENTS:
            raise SchemaError(f"field of shape {self.shape!r} is larger than {MAX_FIELD_ELEMENTS} values")
        if self.dtype == "uint8":
            if len(self.shape) != 3:
                raise SchemaError(f"image fields are HxWxC, got shape {self.shape!r}")
            if (self.codec or "raw") not in CODECS:
                raise SchemaError(f"unknown image codec {self.codec!r}; known: {', '.join(CODECS)}")

    @property
    def is_image(self) -> bool:
        return self.dtype == "uint8"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype}
        if self.codec is not None:
            d["codec"] = self.codec
        if self.quality is not None:
            d["quality"] = self.quality
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "FieldSpec":
        try:
            return cls(
                shape=tuple(int(x) for x in d["shape"]),
                dtype=str(d.get("dtype", "float32")),
                codec=None if d.get("codec") is None else str(d["codec"]),
                quality=None if d.get("quality") is None else int(d["quality"]),
            )
        except SchemaError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise SchemaError(f"bad field spec: {e}") from None

    def arrow_type(self) -> pa.DataType:
        if not self.is_image:
            return pa.list_(pa.float32(), self.size)
        if (self.codec or "raw") == "raw":
            return pa.binary(self.size)  # fixed-size binary: ~10x faster to write than list<uint8>
        return pa.binary()


@dataclass(frozen=True)
class EpisodeSpec:
    """Observation fields and action space of one robot; fixes the chunk schema."""

    observation: dict[str, FieldSpec]
    action_dim: int
    action_low: tuple[float, ...] = field(default=())
    action_high: tuple[float, ...] = field(default=())
    # The robot's wire layout. Chunks of an older version are upgraded to this one's layout on decode
    # (shared.chunk.upgrade), so two specs differing only here describe the same stored rows.
    version: int = field(default=SCHEMA_VERSION, compare=False)

    def __post_init__(self) -> None:
        if not self.observation:
            raise SchemaError("an episode spec needs at least one observation field")
        if not 0 < self.action_dim <= MAX_ACTION_DIM:
            raise SchemaError(f"action_dim must be in 1..{MAX_ACTION_DIM}, got {self.action_dim}")
        for name in self.observation:
            if not name or not all(c.isalnum() or c in "_-" for c in name):
                raise SchemaError(f"bad observation field name {name!r}")
        for name, bound in (("action_low", self.action_low), ("action_high", self.action_high)):
            if bound and len(bound) != self.action_dim:
                raise SchemaError("action bounds do not match action_dim")
            bad = [i for i, x in enumerate(bound) if not math.isfinite(x)]
            if bad:  # the run's first robot fixes the spec: NaN or inf would poison every normalised action
                raise SchemaError(f"{name}[{bad[0]}] is {bound[bad[0]]}: action bounds must be finite numbers")
        if self.action_low and self.action_high:
            flipped = [i for i, (lo, hi) in enumerate(zip(self.action_low, self.action_high)) if lo > hi]
            if flipped:
                i = flipped[0]
                raise SchemaError(f"action_low[{i}] ({self.action_low[i]}) is above action_high[{i}] ({self.action_high[i]})")

    @property
    def state_fields(self) -> list[str]:
        return [k for k, v in self.observation.items() if not v.is_image]

    @property
    def image_fields(self) -> list[str]:
        return [k for k, v in self.observation.items() if v.is_image]

    def state_dim(self, fields: list[str] | None = None) -> int:
        return sum(self.observation[k].size for k in (fields or self.state_fields))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "observation": {k: v.to_dict() for k, v in self.observation.items()},
            "action_dim": self.action_dim,
            "action_low": list(self.action_low),
            "action_high": list(self.action_high),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "EpisodeSpec":
        if not isinstance(d, dict):
            raise SchemaError("episode spec must be a map")
        version = d.get("version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise SchemaError(f"unsupported episode schema version {version!r}")
        obs = d.get("observation")
        if not isinstance(obs, dict):
            raise SchemaError("episode spec needs an observation map")
        try:
            spec = cls(
                observation={str(k): FieldSpec.from_dict(v) for k, v in obs.items()},
                action_dim=int(d["action_dim"]),
                action_low=tuple(float(x) for x in d.get("action_low", ())),
                action_high=tuple(float(x) for x in d.get("action_high", ())),
                version=version,
            )
        except SchemaError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise SchemaError(f"bad episode spec: {e}") from None
        if version < FRAMES_ONCE_VERSION and spec.image_fields:
            # v1 sent every camera frame twice (obs and next_obs on every row); its chunks do not fit v2 columns
            raise SchemaError(
                f"episode spec version {version} with camera fields {spec.image_fields} comes from an older "
                f"fleetrl (robot or run) that stored every frame twice; upgrade the robot's fleetrl, "
                f"or start a new run for data recorded by it")
        return spec

    def current(self) -> "EpisodeSpec":
        """This spec in this build's layout (what the cloud stores whatever version a robot sends)."""
        return dataclasses.replace(self, version=SCHEMA_VERSION)

    def arrow_schema(self) -> pa.Schema:
        """Schema of a chunk on the wire (in this spec's ``version``); the cloud adds ``stream_seq`` when it stores it.

        Version 3 adds ``policy_action`` (what the policy proposed; equal to ``action`` unless a
        human took over), ``human_reward`` (labels from people, kept apart from the driver's
        ``reward``) and ``demo`` (the step belongs to a recorded demonstration).

        Frames are stored once: ``next_obs.<camera>`` is nullable and holds a frame only on a
        chunk's last row (steps in a chunk are consecutive, so row i's next frame is row i+1's
        ``obs.<camera>``; see :mod:`shared.frames`). State fields keep ``next_obs`` on every row.
        """
        fields = [
            pa.field("robot_id", pa.string(), nullable=False),
            pa.field("episode_id", pa.string(), nullable=False),
            pa.field("step", pa.int32(), nullable=False),
            pa.field("t_ns", pa.int64(), nullable=False),
            pa.field("policy_version", pa.int32(), nullable=False),
        ]
        for prefix in (OBS_PREFIX, NEXT_PREFIX):
            for name, fs in self.observation.items():
                meta = {"shape": ",".join(map(str, fs.shape)), "dtype": fs.dtype}
                if fs.is_image:
                    meta["codec"] = fs.codec or "raw"
                # A camera's next frame: one per chunk, so variable binary (null slots cost no bytes,
                # where fixed-size binary would hold a zeroed frame in each)
                final_only = fs.is_image and prefix == NEXT_PREFIX
                typ = pa.binary() if final_only else fs.arrow_type()
                fields.append(pa.field(prefix + name, typ, nullable=final_only, metadata=meta))
        fields += [
            pa.field("action", pa.list_(pa.float32(), self.action_dim), nullable=False),
            pa.field("reward", pa.float32(), nullable=False),
            pa.field("terminated", pa.bool_(), nullable=False),
            pa.field("truncated", pa.bool_(), nullable=False),
            pa.field("success", pa.bool_(), nullable=False),
            pa.field("intervention", pa.bool_(), nullable=False),
        ]
        if self.version >= 3:
            fields += [
                pa.field("policy_action", pa.list_(pa.float32(), self.action_dim), nullable=False),
                pa.field("human_reward", pa.float32(), nullable=False),
                pa.field("demo", pa.bool_(), nullable=False),
            ]
        if self.version >= 4:
            fields.append(pa.field("chunk_index", pa.int32(), nullable=True))
        return pa.schema(fields, metadata={"fleetrl.schema_version": str(self.version)})
