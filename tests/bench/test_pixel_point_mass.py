"""The benchmarks' pixel point mass (harness/pixel_mass.py): the point mass's contract plus a camera frame
that shows where the goal and the mass are, new every step. (Its process, ``python -m harness.pixel_mass
run``, is the real edge agent: the inference benchmark's camera fleet runs it, tests/bench/test_bench_smoke.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from hal_drivers import registry
from harness.pixel_mass import BACKGROUND, CAMERA, GOAL, MASS, PixelPointMass


def make(**opts: object) -> PixelPointMass:
    robot = registry.create("pixel_point_mass", {"seed": 2, **opts})
    assert isinstance(robot, PixelPointMass)
    return robot


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_observations_match_the_description(dims: int) -> None:
    robot = make(dims=dims, camera_size=20)
    d = robot.describe()
    assert d.driver == "pixel_point_mass" and d.observation[CAMERA].shape == (20, 20, 3)
    spec = d.episode_spec()
    obs = robot.reset()
    for o in (obs, robot.step(np.ones(dims, np.float32)).observation):
        assert set(o) == set(spec.observation)
        for k, f in spec.observation.items():
            assert o[k].shape == f.shape and o[k].dtype == np.dtype(f.dtype), k


def test_the_frame_shows_the_goal_and_the_mass_where_they_are() -> None:
    robot = make(dims=2, camera_size=32, tolerance=0.05)
    obs = robot.reset()
    frames = [obs[CAMERA]]
    for _ in range(5):
        obs = robot.step(np.array([1.0, -1.0], np.float32)).observation
        frames.append(obs[CAMERA])
        assert tuple(obs[CAMERA][robot.pixel(obs["position"])]) == MASS
        goal = robot.pixel(obs["goal"])
        if max(abs(a - b) for a, b in zip(goal, robot.pixel(obs["position"]))) > 2:  # not under the mass
            assert tuple(obs[CAMERA][goal]) == GOAL
        colours = [tuple(c) for c in obs[CAMERA].reshape(-1, 3)]
        assert set(colours) <= {BACKGROUND, GOAL, MASS} and 4 <= colours.count(MASS) <= 9  # a 3x3 square
    assert not np.array_equal(frames[0], frames[-1])  # the mass moved, and the frame with it
    assert len({id(f) for f in frames}) == len(frames)  # fresh arrays: the recorder keeps them
