"""Teleop from a ROS 2 topic (``device = "ros2_joy"``): ``sensor_msgs/Joy`` or ``geometry_msgs/Twist``.

Anything that publishes Joy (the ``joy`` package's joy_node, a web joystick)
or Twist (teleop_twist_keyboard, teleop_twist_joy, a SpaceMouse node) can
drive the robot. Messages arrive on the backend's thread (rclpy where ROS 2
is installed, plain DDS otherwise) and update the latest input; ``read``
never waits. Input older than ``timeout_s`` is stale: no take-over and a
zero action, so a crashed publisher or a dropped network hands control back
to the policy instead of freezing the last command.

- Joy: axis sources are indices into ``axes`` ("0", "1"...), or ``b<N>`` for
  button N as an axis (1 while down); buttons are indices into ``buttons``.
  Defaults follow the ``joy`` package's game-controller layout (ROS 2 Humble+,
  up/left positive): left stick -> actions 0/1, right stick vertical -> 2;
  button 10 (right shoulder) takes over, 0 (A) success, 1 (B) failure,
  2 (X) reset, 3 (Y) reward. Check yours with ``ros2 topic echo /joy``.
- Twist / TwistStamped: sources ``linear.x`` ... ``angular.z`` (default
  linear x/y/z -> actions 0/1/2, in the publisher's units times ``scale``);
  the human takes over while messages keep arriving, so there are no buttons
  and no ``toggle`` mode.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal, Mapping

import numpy as np
from pydantic import Field, field_validator

from hal_drivers.base import UnitDescription, UnitKind
from hal_drivers.registry import register
from hal_drivers.ros2 import types
from hal_drivers.ros2.config import TWIST_AXES, QosConfig
from shared.errors import ConfigError

from .base import AxisMap, Teleop, TeleopCommand, TeleopOptions, check_axes
from .state import InputState

log = logging.getLogger("fleetrl.teleop")

DEVICE_NAME = "ros2_joy"
ROS_TYPES = {"Joy": "sensor_msgs/msg/Joy", "Twist": "geometry_msgs/msg/Twist",
             "TwistStamped": "geometry_msgs/msg/TwistStamped"}
BUTTON_OPTIONS = ("takeover_button", "success_button", "failure_button", "reset_button", "reward_button")
JOY_AXES = [AxisMap(source="1", action=0, deadzone=0.05), AxisMap(source="0", action=1, deadzone=0.05),
            AxisMap(source="3", action=2, deadzone=0.05)]
JOY_BUTTONS = {"takeover_button": "10", "success_button": "0", "failure_button": "1", "reset_button": "2",
               "reward_button": "3"}
TWIST_DEFAULT = [AxisMap(source=f"linear.{a}", action=i) for i, a in enumerate("xyz")]


class Ros2JoyOptions(TeleopOptions):
    """``[teleop.options]`` with ``device = "ros2_joy"``."""

    topic: str = Field("/joy", description="topic to subscribe to")
    type: Literal["Joy", "Twist", "TwistStamped"] = Field(
        "Joy", description="sensor_msgs/msg/Joy, geometry_msgs/msg/Twist or geometry_msgs/msg/TwistStamped")
    backend: Literal["auto", "dds", "rclpy"] = Field("auto", description="auto: rclpy if importable, else cyclonedds")
    domain_id: int = Field(0, ge=0, le=232, description="ROS_DOMAIN_ID of the publisher")
    localhost_only: bool = Field(True, description="DDS backend: only this computer's publishers (loopback)")
    timeout_s: float = Field(0.5, gt=0, le=10, description="input older than this is stale: no take-over, zero action")

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        try:
            return types.check_topic(v, key="")
        except ConfigError as e:
            raise ValueError(e.message.lstrip(": ")) from None

    @field_validator("type", mode="before")
    @classmethod
    def _short_type(cls, v: Any) -> Any:
        """``sensor_msgs/msg/Joy`` and ``sensor_msgs/Joy`` read as ``Joy``."""
        if isinstance(v, str) and "/" in v:
            pkg, name = v.split("/")[0], v.rsplit("/", 1)[-1]
            return name if ROS_TYPES.get(name) == f"{pkg}/msg/{name}" else v
        return v


def _index(v: str) -> int | None:
    return int(v) if v.isdecimal() else None


@register(DEVICE_NAME)
class Ros2Joy(Teleop):
    """Subscribes to one Joy or Twist topic; the latest message (while fresh) is the command."""

    config_class = Ros2JoyOptions

    def __init__(self, config: Ros2JoyOptions, name: str = "teleop"):
        self.config = config
        self.name = name
        self.ros_type = ROS_TYPES[config.type]
        joy = config.type == "Joy"
        self.axes = list(config.axes) or list(JOY_AXES if joy else TWIST_DEFAULT)
        for i, ax in enumerate(self.axes):
            ok = (_index(ax.source) is not None or ax.source[:1] == "b" and _index(ax.source[1:]) is not None) if joy \
                else ax.source in TWIST_AXES
            if not ok:
                want = 'an index into Joy.axes ("0", "1"...) or "b<N>" for button N' if joy else ", ".join(TWIST_AXES)
                raise ConfigError(f"teleop.options.axes[{i}].source: {ax.source!r} is not {want}")
        self.buttons: dict[int, str] = {}  # Joy button index -> option
        for opt in BUTTON_OPTIONS:
            value = getattr(config, opt)
            if not joy:
                if value is not None:
                    raise ConfigError(f"teleop.options.{opt}: a {config.type} topic has no buttons (take-over is "
                                      f"'messages keep arriving'); publish sensor_msgs/Joy for buttons")
                continue
            value = value if value is not None else JOY_BUTTONS[opt]
            idx = _index(value)
            if idx is None:
                raise ConfigError(f"teleop.options.{opt}: {value!r} is not an index into Joy.buttons (\"0\", \"1\"...)")
            if idx in self.buttons:
                raise ConfigError(f"teleop.options.{opt}: button {idx} is already the {self.buttons[idx]}")
            self.buttons[idx] = opt
        self._state = InputState()
        self._action_dim = 0
        self._prev: list[int] = []  # the last Joy message's buttons (edges make presses)
        self._backend: Any = None
        self.messages = 0  # received, for tests and status
        self.bad_messages = 0  # refused: not decodable as ros_type
        self._bad = False  # the last message was refused (its warning said once)

    def describe(self) -> UnitDescription:
        c = self.config
        return UnitDescription(name=self.name, kind=UnitKind.TELEOP, driver=DEVICE_NAME,
                               identity=f"ros2:{c.domain_id}:{c.topic}",
                               extra={"topic": c.topic, "type": self.ros_type, "timeout_s": c.timeout_s})

    def start(self, action_dim: int, takeover_mode: str = "hold") -> None:
        from hal_drivers.ros2.backend import open_backend

        check_axes(self.axes, action_dim)
        c = self.config
        if takeover_mode == "toggle" and c.type != "Joy":
            raise ConfigError(f"teleop.takeover: 'toggle' needs a button, and a {c.type} topic has none (it takes over "
                              f"while messages arrive); use 'hold', or publish sensor_msgs/Joy")
        try:
            types.typestore()  # the message codec, needed on the backend thread: fail here, not there
        except ConfigError:
            raise ConfigError("teleop.device: ros2_joy needs the ROS 2 message codec (rosbags) and cyclonedds or "
                              "rclpy: pip install 'fleetrl[ros2]'") from None
        self._action_dim = action_dim
        self._state = InputState(takeover_mode)
        self._state.alive_until(0.0)  # nothing heard yet: stale
        self._prev = []
        self._backend = open_backend(c.backend, c.domain_id, f"fleetrl_teleop_{self.name}", c.localhost_only,
                                     key="teleop.options.backend")
        try:
            self._backend.subscribe(c.topic, self.ros_type, QosConfig(depth=10), self._on_message)
        except BaseException:
            self.close()
            raise
        log.info("event=teleop_started device=ros2_joy topic=%s type=%s backend=%s domain=%d mode=%s", c.topic,
                 self.ros_type, self._backend.name, c.domain_id, takeover_mode)

    def _on_message(self, cdr: bytes, recv_ns: int) -> None:
        """On the backend's thread: one message -> the latest input, valid for timeout_s.

        A message that cannot be decoded (a foreign publisher on the topic) is dropped and said in one
        warning per run of bad ones, not a traceback per message at the publisher's rate."""
        try:
            msg = types.decode(cdr, self.ros_type)
        except Exception as e:  # noqa: BLE001 - rosbags raises several types on truncated or foreign data
            self.bad_messages += 1
            if not self._bad:
                self._bad = True
                log.warning("event=teleop_message_refused topic=%s type=%s error=%r (further ones not logged "
                            "until a good message)", self.config.topic, self.ros_type, e)
            return
        self._bad = False
        until = recv_ns / 1e9 + self.config.timeout_s
        st = self._state
        self.messages += 1
        if self.config.type == "Joy":
            self._joy(msg, until)
        else:
            twist = msg.twist if self.config.type == "TwistStamped" else msg
            for ax in self.axes:
                part, comp = ax.source.split(".")
                st.set_value(ax.source, float(getattr(getattr(twist, part), comp)), until)
            st.press_takeover(until)  # take-over while messages keep coming
        st.alive_until(until)

    def _joy(self, msg: Any, until: float) -> None:
        st = self._state
        axes, buttons = [float(a) for a in msg.axes], [int(b) for b in msg.buttons]
        for ax in self.axes:
            if ax.source[0] == "b":
                i = int(ax.source[1:])
                st.set_value(ax.source, 1.0 if i < len(buttons) and buttons[i] else 0.0, until)
            else:
                i = int(ax.source)
                st.set_value(ax.source, axes[i] if i < len(axes) else 0.0, until)
        for i, opt in self.buttons.items():
            down = i < len(buttons) and buttons[i] != 0
            rising = down and not (i < len(self._prev) and self._prev[i] != 0)
            if opt == "takeover_button":
                if st.mode == "toggle":
                    if rising:
                        st.press_takeover()
                elif down:
                    st.press_takeover(until)
                else:
                    st.release_takeover()
            elif rising and opt == "reward_button":
                st.add_reward(self.config.reward_value)
            elif rising:
                st.event(opt.removesuffix("_button"))
        self._prev = buttons

    def read(self, obs: Mapping[str, np.ndarray]) -> TeleopCommand:
        return self._state.command(self.axes, self._action_dim, time.monotonic())

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        self._state.lost()
