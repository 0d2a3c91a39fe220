"""A scripted operator for the Fetch tasks: an oracle controller standing in for a human.

Tests and ``python -m bench hil`` need an operator who records demonstrations
and corrects a learning policy the same way every run, without a person. It is
a pure function of the observation plus a little per-episode state, so it
needs no thread and never blocks the control loop.

Controllers (normalised Fetch actions: dx, dy, dz, gripper; 1 ~ 5 cm a step):

- ``reach``: move the gripper to ``desired_goal``.
- ``push``: rise above the block, go behind it on the far side from the goal,
  lower to the block's height and push it toward the goal (gripper closed;
  FetchPush keeps it closed anyway). Observation layout (FetchPush):
  ``observation[0:3]`` gripper position, ``[3:6]`` block position.

Modes: ``always`` takes over every step (demonstrations), ``correct`` takes
over when the task stalls or drifts (see :class:`ScriptedFetchOptions`) and
hands back after ``hold_steps``, ``never`` only proposes (takeover false).

Episode starts are detected from the observation: Fetch samples a new
``desired_goal`` at every reset and never moves it within an episode, so a
changed goal means a new episode. As a fallback (a reset that happened to keep
the goal), ``episode_steps`` reads after a start also begin a new episode; the
control loop reads the operator exactly once per tick, so reads count steps.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal, Mapping

import numpy as np
from pydantic import Field, field_validator

from hal_drivers.base import UnitDescription, UnitKind
from hal_drivers.registry import register
from shared.errors import ConfigError

from .base import Teleop, TeleopCommand, TeleopOptions

DEVICE_NAME = "scripted_fetch"
# Push geometry (metres): the block is a 5 cm cube; the closed fingers are ~1 cm thick.
BEHIND_M = 0.055  # where the gripper lines up, behind the block's centre on the far side from the goal
CONTACT_M = 0.04  # gripper-to-block-centre distance while pushing
LIFT_M = 0.07  # clearance above the block's centre when moving around it
ALIGN_M = 0.02  # lateral/xy tolerance for "lined up behind the block"
NEAR_BLOCK_M = 0.08  # a way to the start point passing this close to the block: rise first
DONE_M = 0.02  # block this close to the goal: stop pushing
SLIDE_M = 0.01  # the block slides on about this far once the push stops
PUSH_SPEED = 0.7  # at most 3.5 cm a step while pushing: a faster block slides on past the goal


class ScriptedFetchOptions(TeleopOptions):
    """The scripted operator's options (``[teleop.options]`` with ``device = "scripted_fetch"``)."""

    task: Literal["reach", "push"] = Field("push", description="which Fetch task the oracle solves")
    mode: Literal["always", "correct", "never"] = Field(
        "always", description="always: drives every step (demos); correct: takes over when the task stalls or "
        "drifts; never: proposes only")
    noise: float = Field(0.0, ge=0, le=1, description="std of Gaussian noise added to each action (varied demos)")
    seed: int = Field(0, description="seed of the noise")
    gain: float = Field(10.0, gt=0, le=100, description="normalised action per metre of position error")
    success_m: float = Field(0.05, gt=0, description="goal distance counted as done (Fetch: 5 cm); no take-over inside it")
    progress_m: float = Field(0.01, ge=0, description="correct: the goal distance must improve this much ...")
    patience: int = Field(20, gt=0, description="correct: ... over this many steps, or the operator takes over")
    drift_m: float = Field(0.03, gt=0, description="correct: take over when the goal distance grew this much since the episode start")
    hold_steps: int = Field(20, gt=0, description="correct: steps the operator drives once it took over")
    episode_steps: int = Field(50, ge=0, description="reads per episode at most (fallback episode-start detection; 0: off)")

    @field_validator("axes", "takeover_button", "success_button", "failure_button", "reset_button", "reward_button")
    @classmethod
    def _no_inputs(cls, v: Any) -> Any:
        if v:
            raise ValueError("scripted_fetch reads no device: axes and buttons do not apply")
        return v


def _toward(target: np.ndarray, pos: np.ndarray, gain: float) -> np.ndarray:
    return np.clip((target - pos) * gain, -1.0, 1.0)


def _passes_near(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> float:
    """Distance from ``p`` to the segment a-b (does the straight way from a to b sweep past p?)."""
    ab = b - a
    t = float(np.clip((p - a) @ ab / max(float(ab @ ab), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(a + t * ab - p))


def reach_action(obs: Mapping[str, np.ndarray], gain: float = 10.0) -> np.ndarray:
    """FetchReach: straight to the goal."""
    grip = np.asarray(obs["observation"], np.float64)[0:3]
    goal = np.asarray(obs["desired_goal"], np.float64)
    return np.array([*_toward(goal, grip, gain), 0.0], np.float32)


def push_action(obs: Mapping[str, np.ndarray], gain: float = 10.0) -> np.ndarray:
    """FetchPush: line up behind the block (passing above it), lower, push toward the goal."""
    o = np.asarray(obs["observation"], np.float64)
    grip, block = o[0:3], o[3:6]
    goal = np.asarray(obs["desired_goal"], np.float64)
    to_goal = goal[:2] - block[:2]
    dist = float(np.linalg.norm(to_goal))
    if dist < DONE_M:
        return np.array([0.0, 0.0, 0.0, -1.0], np.float32)
    u = to_goal / dist
    rel = grip[:2] - block[:2]
    along = float(rel @ u)  # negative: behind the block
    lateral = float(np.linalg.norm(rel - along * u))
    low = abs(grip[2] - block[2]) < 0.02
    if along < -0.02 and lateral < ALIGN_M and low:  # in contact position: push through to the goal
        target = np.array([*(goal[:2] - u * (CONTACT_M + SLIDE_M)), block[2]])
        v = (target - grip) * gain
        v *= min(1.0, PUSH_SPEED / max(float(np.abs(v).max()), 1e-9))
        return np.array([*v, -1.0], np.float32)
    behind = block[:2] - u * BEHIND_M
    if np.linalg.norm(grip[:2] - behind) < ALIGN_M:  # above (or at) the start point: go down
        target = np.array([*behind, block[2]])
    elif grip[2] < block[2] + LIFT_M - 0.02 and _passes_near(grip[:2], behind, block[:2]) < NEAR_BLOCK_M:
        target = np.array([*grip[:2], block[2] + LIFT_M])  # the way there passes the block: up first
    else:
        target = np.array([*behind, block[2] + LIFT_M])
    return np.array([*_toward(target, grip, gain), -1.0], np.float32)


CONTROLLERS = {"reach": reach_action, "push": push_action}


@register(DEVICE_NAME)
class ScriptedFetch(Teleop):
    """The oracle operator; ``read`` decides from the observation and its own per-episode state."""

    config_class = ScriptedFetchOptions

    def __init__(self, config: ScriptedFetchOptions, name: str = "teleop"):
        self.config = config
        self.name = name
        self._rng = np.random.default_rng(config.seed)
        self._act_dim = 0
        self._goal: np.ndarray | None = None
        self._reads = 0  # reads since the episode started
        self._start_dist = 0.0
        self._dists: deque[float] = deque(maxlen=config.patience + 1)
        self._hold = 0  # steps left of the current take-over
        self.takeovers = 0  # take-overs started (correct mode), for tests and benchmarks
        self.episodes = 0

    def describe(self) -> UnitDescription:
        c = self.config
        return UnitDescription(name=self.name, kind=UnitKind.TELEOP, driver=DEVICE_NAME,
                               identity=f"scripted-fetch-{c.task}-{c.seed}",
                               extra={"task": c.task, "mode": c.mode})

    def start(self, action_dim: int, takeover_mode: str = "hold") -> None:
        """``takeover_mode`` does not apply: the script decides each tick whether it drives."""
        if action_dim != 4:
            raise ConfigError(f"teleop.device: scripted_fetch drives a Fetch arm (4 action dimensions: dx, dy, dz, "
                              f"gripper); this robot has {action_dim}")
        self._act_dim = action_dim

    def read(self, obs: Mapping[str, np.ndarray]) -> TeleopCommand:
        c = self.config
        for key in ("observation", "desired_goal", "achieved_goal"):
            if key not in obs:
                raise ConfigError(f"teleop.device: scripted_fetch needs the Fetch observation field {key!r}; "
                                  f"this robot has {', '.join(sorted(obs))}")
        goal = np.asarray(obs["desired_goal"], np.float64)
        dist = float(np.linalg.norm(np.asarray(obs["achieved_goal"], np.float64) - goal))
        if self._new_episode(goal):
            self._begin(goal, dist)
        self._reads += 1
        action = CONTROLLERS[c.task](obs, c.gain)
        if c.noise > 0:
            action = np.clip(action + self._rng.normal(0.0, c.noise, action.shape), -1.0, 1.0).astype(np.float32)
        return TeleopCommand(action=action, takeover=self._takeover(dist), extra={"goal_distance": dist})

    # -- episode state -------------------------------------------------------

    def _new_episode(self, goal: np.ndarray) -> bool:
        if self._goal is None or not np.allclose(goal, self._goal, atol=1e-6):
            return True
        return self.config.episode_steps > 0 and self._reads >= self.config.episode_steps

    def _begin(self, goal: np.ndarray, dist: float) -> None:
        self._goal = goal.copy()
        self._reads = 0
        self._start_dist = dist
        self._dists.clear()
        self._hold = 0
        self.episodes += 1

    def _takeover(self, dist: float) -> bool:
        c = self.config
        if c.mode != "correct":
            return c.mode == "always"
        self._dists.append(dist)
        if self._hold > 0:
            self._hold -= 1
            if self._hold == 0:
                self._dists.clear()  # hand back: the policy gets a fresh patience window
            return True
        if dist < c.success_m:
            return False
        stalled = len(self._dists) > c.patience and self._dists[0] - dist < c.progress_m
        drifted = dist - self._start_dist > c.drift_m
        if not (stalled or drifted):
            return False
        self.takeovers += 1
        self._hold = c.hold_steps - 1
        if self._hold == 0:
            self._dists.clear()
        return True
