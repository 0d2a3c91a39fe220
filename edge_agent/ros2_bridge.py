"""The agent on ROS 2: its status, actions and episode boundaries out, commands in.

So existing ROS tooling (``ros2 topic echo``, rqt, Foxglove, a teleop node)
can watch and drive the agent. Topics live under ``<namespace>``
(default ``/fleetrl/<robot_id>``):

out  ``status``  std_msgs/String, JSON, transient-local (late joiners get the last one)
out  ``action``  std_msgs/Float64MultiArray, dim[0].label = "policy_version=<n>"
out  ``episode`` std_msgs/String, JSON {"episode_id", "event", "t_ns"}
in   ``cmd/episode``      std_msgs/String "start" | "stop"
in   ``cmd/reward``       std_msgs/Float64 (a human reward label, stored in ``human_reward``)
in   ``cmd/intervention`` std_msgs/Bool
in   ``cmd/pause``        std_msgs/Bool

Publishing never raises into the caller (the control loop): a failure is
logged once per kind. Commands reach ``on_command`` on a backend thread, one
at a time (serialised by a lock), so the callback needs only be thread-safe
against the agent's own threads.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from hal_drivers.ros2 import mapping, types
from hal_drivers.ros2.backend import Backend, Publisher, open_backend
from hal_drivers.ros2.config import QosConfig
from shared.errors import ConfigError

log = logging.getLogger("fleetrl.ros2_bridge")

EPISODE_EVENTS = ("start", "end", "truncated", "stopped")
_COMMANDS = {
    "cmd/episode": "std_msgs/msg/String",
    "cmd/reward": "std_msgs/msg/Float64",
    "cmd/intervention": "std_msgs/msg/Bool",
    "cmd/pause": "std_msgs/msg/Bool",
}


@dataclass(frozen=True)
class Command:
    """One command from ROS: ``kind`` is start_episode, stop_episode, reward, intervention or pause."""

    kind: str
    value: float | bool | None = None
    t_ns: int = field(default_factory=time.time_ns)


class Ros2Bridge:
    def __init__(
        self,
        robot_id: str,
        on_command: Callable[[Command], None],
        *,
        namespace: str | None = None,
        domain_id: int = 0,
        backend: str = "auto",
        localhost_only: bool = True,
        backend_impl: Backend | None = None,
    ):
        ns = namespace or "/fleetrl/" + re.sub(r"[^A-Za-z0-9_]", "_", robot_id)
        self.namespace = types.check_topic(ns, key="ros2.namespace").rstrip("/")
        self.robot_id, self.on_command = robot_id, on_command
        self._cfg = (backend, domain_id, localhost_only)
        self._backend = backend_impl
        self._pubs: dict[str, Publisher] = {}
        self._cmd_lock = threading.Lock()
        self._failed: set[str] = set()
        self.commands_received = 0
        self.commands_rejected = 0

    def topic(self, rel: str) -> str:
        return f"{self.namespace}/{rel}"

    def start(self) -> None:
        """Open the backend, advertise the outputs and subscribe to commands."""
        if self._backend is None:
            backend, domain_id, localhost_only = self._cfg
            self._backend = open_backend(backend, domain_id, "fleetrl_agent", localhost_only, key="ros2.backend")
        b = self._backend
        self._pubs = {
            "status": b.publisher(self.topic("status"), "std_msgs/msg/String",
                                  QosConfig(reliability="reliable", durability="transient_local", depth=1)),
            "action": b.publisher(self.topic("action"), "std_msgs/msg/Float64MultiArray", QosConfig(reliability="reliable", depth=10)),
            "episode": b.publisher(self.topic("episode"), "std_msgs/msg/String",
                                   QosConfig(reliability="reliable", durability="transient_local", depth=10)),
        }
        for rel, ros_type in _COMMANDS.items():
            b.subscribe(self.topic(rel), ros_type, QosConfig(reliability="reliable", depth=10), self._on_raw(rel, ros_type))
        log.info("event=ros2_bridge_started namespace=%s backend=%s", self.namespace, b.name)

    def close(self) -> None:
        backend, self._backend = self._backend, None
        self._pubs = {}
        if backend is not None:
            backend.close()

    # -- out ---------------------------------------------------------------

    def publish_status(self, status: dict[str, Any]) -> None:
        body = {"robot_id": self.robot_id, "t_ns": time.time_ns(), **status}
        self._send("status", "std_msgs/msg/String", lambda: types.new("std_msgs/msg/String", data=json.dumps(body, default=str)))

    def publish_action(self, action: np.ndarray, version: int) -> None:
        values = [float(x) for x in np.asarray(action, np.float64).ravel()]
        self._send("action", "std_msgs/msg/Float64MultiArray", lambda: mapping.float64_array(values, f"policy_version={int(version)}"))

    def publish_episode_boundary(self, episode_id: str, event: str) -> None:
        if event not in EPISODE_EVENTS:
            raise ConfigError(f"ros2 bridge: episode event {event!r} is not one of {', '.join(EPISODE_EVENTS)}")
        body = {"robot_id": self.robot_id, "episode_id": episode_id, "event": event, "t_ns": time.time_ns()}
        self._send("episode", "std_msgs/msg/String", lambda: types.new("std_msgs/msg/String", data=json.dumps(body)))

    def _send(self, kind: str, ros_type: str, build: Callable[[], Any]) -> None:
        pub = self._pubs.get(kind)
        if pub is None:
            return  # not started (or closed): the bridge is optional, the agent runs on
        try:
            pub.publish(types.encode(build(), ros_type))
        except Exception as e:  # noqa: BLE001 - never into the control loop
            if kind not in self._failed:
                self._failed.add(kind)
                log.error("event=ros2_publish_failed kind=%s error=%r (further failures not logged)", kind, e)

    # -- in ----------------------------------------------------------------

    def _on_raw(self, rel: str, ros_type: str) -> Callable[[bytes, int], None]:
        def handle(cdr: bytes, _recv_ns: int) -> None:
            cmd = self._parse(rel, ros_type, cdr)
            if cmd is None:
                self.commands_rejected += 1
                return
            with self._cmd_lock:
                self.commands_received += 1
                try:
                    self.on_command(cmd)
                except Exception:
                    log.exception("event=ros2_command_handler_failed command=%s", cmd.kind)

        return handle

    def _parse(self, rel: str, ros_type: str, cdr: bytes) -> Command | None:
        try:
            data = types.decode(cdr, ros_type).data
        except Exception as e:  # noqa: BLE001 - foreign bytes on our topic
            log.warning("event=ros2_command_refused topic=%s reason=%r", self.topic(rel), e)
            return None
        if rel == "cmd/episode":
            word = str(data).strip().lower()
            if word not in ("start", "stop"):
                log.warning("event=ros2_command_refused topic=%s reason='expected start or stop, got %r'", self.topic(rel), word)
                return None
            return Command(f"{word}_episode")
        if rel == "cmd/reward":
            value = float(data)
            if not np.isfinite(value):
                log.warning("event=ros2_command_refused topic=%s reason='reward is not finite'", self.topic(rel))
                return None
            return Command("reward", value)
        return Command(rel.split("/")[1], bool(data))


def bridged_recorder(bridge: Ros2Bridge, recorder: Any) -> Any:
    """Make a :class:`edge_agent.recorder.Recorder` also publish each step's action and episode boundaries.

    Wraps the instance's methods, so the control loop stays unaware of ROS.
    """
    start, add, cut = recorder.start_episode, recorder.add, recorder.cut

    def start_episode() -> str:
        eid = start()
        bridge.publish_episode_boundary(eid, "start")
        return eid

    def add_step(step: Any) -> None:
        bridge.publish_action(step.action, step.policy_version)
        add(step)
        if step.terminated or step.truncated:
            bridge.publish_episode_boundary(recorder.episode_id, "end" if step.terminated else "truncated")

    def cut_episode() -> None:
        if recorder.episode_id:
            bridge.publish_episode_boundary(recorder.episode_id, "stopped")
        cut()

    recorder.start_episode, recorder.add, recorder.cut = start_episode, add_step, cut_episode
    return recorder
