"""A cloud chunk source on a robot with cameras: the first request carries every camera of the spec,
later ones only those the served policy said it read (none for a state policy), and a bad_observation
refusal (the served policy changed) sends them all again. Frames go as they are, uint8 HxWxC."""

from __future__ import annotations

import base64

import numpy as np

from edge_agent import chunk_source
from shared.config_inference import AgentPolicyConfig
from shared.protocol import inference

CAMS = ["front", "wrist"]
OBS = {"pos": np.arange(2, dtype=np.float32), "front": np.full((4, 3, 3), 9, np.uint8),
       "wrist": np.arange(12, dtype=np.uint8).reshape(2, 2, 3)}


def _source(sent: list) -> chunk_source.ChunkSource:
    cfg = AgentPolicyConfig(where="cloud", horizon=4, overlap=1, blend_steps=0, max_inflight=1)
    return chunk_source.build(cfg, 0.0, [-1.0, -1.0], [1.0, 1.0], lambda a: a, ["pos"],
                              lambda *req: sent.append(req), None, True, CAMS)  # type: ignore[arg-type]


def _answer(src: chunk_source.ChunkSource, sent: list, cameras: list[str] | None) -> None:
    rid, tick = sent[-1][0], sent[-1][1]
    src.chunk_arrived(rid, tick, 1, np.zeros((4, 2), np.float32), cameras)


def test_the_robot_sends_the_cameras_the_served_policy_reads():
    sent: list = []
    src = _source(sent)
    tick = 0

    def run_until_request() -> dict:
        nonlocal tick
        n = len(sent)
        while len(sent) == n:
            src.step(OBS, tick, float(tick), None)
            tick += 1
        return sent[-1][3]

    first = run_until_request()
    assert sorted(first) == CAMS  # before any answer: all the spec's cameras
    for name, (shape, b64) in first.items():
        assert shape == list(OBS[name].shape) and base64.b64decode(b64) == OBS[name].tobytes()
    assert set(sent[-1][2]) == {"pos"}
    _answer(src, sent, ["wrist"])
    assert list(run_until_request()) == ["wrist"]  # the served policy reads the wrist camera only
    _answer(src, sent, [])
    assert run_until_request() == {}  # a state policy: no frames at all
    src.refused(sent[-1][0], inference.BAD_OBSERVATION)  # the served policy changed and lacks a camera
    assert sorted(run_until_request()) == CAMS
    src.refused(sent[-1][0], inference.RATE_LIMITED)  # other refusals change nothing
    assert sorted(run_until_request()) == CAMS
