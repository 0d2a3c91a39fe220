"""The teleop device as the control loop sees it: one safe read per tick.

The device's own ``read`` must never block, but it may fail (unplugged
gamepad, a bug in a driver): a failure is logged once and reads as "no
take-over", so the robot keeps running under its policy instead of stopping
on a broken input device. What the human asked for is reduced to one
:class:`TickInput` the loop applies without knowing the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from hal_drivers import registry
from hal_drivers.teleop.base import EVENTS, Teleop
from shared.config import AgentConfig
from shared.errors import ConfigError, FleetError

log = logging.getLogger("fleetrl.teleop")


@dataclass(frozen=True)
class TickInput:
    takeover: bool = False
    action: np.ndarray | None = None  # normalised [-1, 1], set when takeover
    events: tuple[str, ...] = ()  # success | failure | reset
    reward: float = 0.0  # human reward label(s) for this step


NOTHING = TickInput()


class TeleopLost(FleetError):
    """The device failed while recording demonstrations: nobody drives, so the recording stops.

    Outside recording the policy keeps control; while recording, the robot must not run a policy or
    random exploration while a person believes they are demonstrating."""

    code = "teleop_failed"


class HumanInput:
    """Reads the device for the loop; counts take-overs for status.

    ``force_takeover`` (demonstration recording) makes every good read a
    take-over, whether or not the device's button is held, and a failed read
    a :class:`TeleopLost` that stops the loop."""

    def __init__(self, teleop: Teleop | None, action_dim: int, force_takeover: bool = False):
        self.teleop = teleop
        self.action_dim = action_dim
        self.force_takeover = force_takeover
        self.driving = False  # the human drove the last tick
        self.takeovers = 0  # times the human took control (a run of driven ticks counts once)
        self.interventions = 0  # ticks the human drove
        self.read_errors = 0
        self._failing = False

    def read(self, obs: Mapping[str, np.ndarray]) -> TickInput:
        if self.teleop is None:
            return NOTHING
        try:
            tick = self._read(self.teleop, obs)
        except Exception as e:  # noqa: BLE001 - never into the control loop
            self.read_errors += 1
            if self.force_takeover:
                raise TeleopLost(f"the teleop device failed while recording demonstrations ({type(e).__name__}: "
                                 f"{e}); recording stopped so the robot does not move on its own") from None
            if not self._failing:
                self._failing = True
                log.error("event=teleop_read_failed error=%r action=policy_keeps_control "
                          "(further failures not logged until it recovers)", e)
            tick = NOTHING
        else:
            if self._failing:
                self._failing = False
                log.info("event=teleop_read_recovered failed_reads=%d", self.read_errors)
        if tick.takeover:
            self.interventions += 1
            if not self.driving:
                self.takeovers += 1
                log.info("event=human_takeover count=%d", self.takeovers)
        elif self.driving:
            log.info("event=human_handback")
        self.driving = tick.takeover
        return tick

    def _read(self, teleop: Teleop, obs: Mapping[str, np.ndarray]) -> TickInput:
        cmd = teleop.read(obs)
        events = tuple(e for e in cmd.events if e in EVENTS)
        reward = float(cmd.reward)
        if not np.isfinite(reward):
            raise ValueError(f"teleop reward {cmd.reward!r} is not finite")
        if not (cmd.takeover or self.force_takeover):
            return TickInput(False, None, events, reward)
        action = np.asarray(cmd.action, np.float32).reshape(-1)
        if action.size != self.action_dim:
            raise ValueError(f"teleop action has {action.size} dimension(s), the robot {self.action_dim}")
        action = np.clip(np.nan_to_num(action, nan=0.0), -1.0, 1.0)
        return TickInput(True, action, events, reward)


def create_teleop(cfg: AgentConfig) -> Teleop | None:
    """The ``[teleop]`` device, built (options checked) but not started; None without the table."""
    tc = cfg.teleop
    if tc is None:
        return None
    try:
        unit = registry.create(tc.device, tc.options, section="teleop", name=tc.name)
    except ConfigError:
        raise
    except Exception as e:  # a device's constructor failing is a config finding, said in one line
        raise ConfigError(f"teleop.device: {tc.device!r} cannot be built: {type(e).__name__}: {e}") from None
    if not isinstance(unit, Teleop):
        unit.close()
        raise ConfigError(f"teleop.device: {tc.device!r} is not a teleop device")
    return unit


def open_teleop(cfg: AgentConfig, action_dim: int) -> Teleop | None:
    """The ``[teleop]`` device, started for a robot with ``action_dim`` action dimensions."""
    unit = create_teleop(cfg)
    if unit is None:
        return None
    assert cfg.teleop is not None
    try:
        unit.start(action_dim, cfg.teleop.takeover)
    except BaseException:
        unit.close()
        raise
    return unit
