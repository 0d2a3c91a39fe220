"""Where a robot's policy runs, and the learner's policy server: ``[policy]`` in the agent config,
``[inference]`` in the learner's. Kept apart from config_agent/config_learner so the two grow
independently; docs/cloud_inference.md explains every knob."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from .config_base import Strict as _Strict


class AgentPolicyConfig(_Strict):
    where: Literal["robot", "cloud"] = Field(
        "robot", description='robot: weights are pushed and the robot runs the policy itself (as before); cloud: the '
        "robot sends its observations over its link and executes action chunks from the learner's policy server "
        "(needs an authenticated link and a learner with [inference] enabled)",
    )
    horizon: int = Field(
        10, ge=1, le=1024, description="actions the robot plans to execute from one chunk; a chunk that holds more "
        "is cut to this, one that holds fewer is played as it is",
    )
    overlap: int = Field(
        2, ge=0, le=1023, description="ask for the next chunk when this many actions of the current one are left "
        "(at least; the measured round trip and blend_steps raise it)",
    )
    blend_steps: int = Field(
        2, ge=0, le=1023, description="ticks over which the old and the new chunk are crossfaded at the seam "
        "(0: switch at once)",
    )
    on_late: Literal["hold", "zero", "finish"] = Field(
        "hold", description="when a tick has no action from a chunk (late) or a request is lost: hold takes the "
        "driver's hold action for that tick (a position-controlled robot holds at its measured position, a velocity- "
        "or force-controlled one sends zero), or repeats the last executed action with a driver that has none; zero "
        "sends zero velocity (the robot's clamp of 0 in its units; on a position-controlled robot use hold); finish "
        "plays the current chunk to its end on a lost request, then holds",
    )
    max_inflight: int = Field(
        3, ge=1, le=64, description="requests out at once, awaiting their chunks: the next goes out on schedule "
        "without waiting for the previous answer, so a round trip up to about horizon - 2 ticks is hidden (one at "
        "a time: horizon / 2) and a slow answer is covered by the next; keep it at most the learner's "
        "inference.max_in_flight (more are refused: too_many_inflight)",
    )
    request_timeout_ms: float = Field(
        250.0, gt=0, le=60_000, description="a request unanswered for this long counts as lost (chunks.lost) and is "
        "asked again",
    )

    camera_codec: Literal["raw", "zstd"] = Field(
        "raw", description="how camera frames travel in a cloud request (only those the served policy reads): raw "
        "uint8, or zstd (level 1: smaller on the link, some CPU on both ends); docs/cloud_inference.md has sizes",
    )

    @model_validator(mode="after")
    def _fits(self) -> "AgentPolicyConfig":
        if self.horizon > 1 and self.overlap >= self.horizon:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than horizon ({self.horizon})")
        if self.horizon > 1 and self.blend_steps >= self.horizon:
            raise ValueError(f"blend_steps ({self.blend_steps}) must be smaller than horizon ({self.horizon})")
        return self


class InferenceConfig(_Strict):
    enabled: bool = Field(
        False, description="serve robots with policy.where = \"cloud\": answer their observations with action chunks "
        "(refused with inference_disabled otherwise)",
    )
    max_batch: int = Field(64, ge=1, le=4096, description="most requests run through the policy at once")
    batch_window_ms: float = Field(
        2.0, ge=0, le=1000, description="after the first request of a batch, wait this long for others (robots "
        "ticking together share one forward pass)",
    )
    latency_budget_ms: float = Field(
        100.0, gt=0, le=60_000, description="a request not answered within this long after it arrived is refused "
        "(latency_budget) rather than served late",
    )
    max_requests_per_s: float = Field(
        60.0, gt=0, description="requests one robot may make per second (burst: 2 s worth); more are refused "
        "(rate_limited), other robots unaffected",
    )
    max_in_flight: int = Field(
        4, ge=1, le=1024, description="requests of one robot waiting for an answer; more are refused (too_many_inflight)",
    )
    deterministic: bool = Field(True, description="act with the policy's deterministic output (flow: from zero noise)")
    weights: Path | None = Field(
        None, description="serve this policy file (safetensors, e.g. a pretrained flow policy) instead of each group's "
        "latest published weights; nothing is downloaded",
    )

    @model_validator(mode="after")
    def _batch(self) -> "InferenceConfig":
        if self.batch_window_ms >= self.latency_budget_ms:
            raise ValueError(f"batch_window_ms ({self.batch_window_ms}) must be below latency_budget_ms "
                             f"({self.latency_budget_ms})")
        return self
