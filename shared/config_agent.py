"""The edge agent's config (``edge-agent run --config agent.toml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from .config_base import Strict as _Strict, device_setting, is_loopback
from .config_inference import AgentPolicyConfig
from .ids import PATTERN as ID_PATTERN, RULE as ID_RULE

# ---------------------------------------------------------------- edge agent


class LinkConfig(_Strict):
    url: str = Field("ws://127.0.0.1:8765/ws", description="learner websocket endpoint (ws:// or wss://)")
    fallback_urls: list[str] = Field(default_factory=list, description="other endpoints, tried in turn when one fails")
    reconnect_min_s: float = Field(0.2, gt=0, description="first reconnect delay; doubles up to the max")
    reconnect_max_s: float = Field(10.0, gt=0, description="longest delay between reconnect attempts")
    status_interval_s: float = Field(2.0, gt=0, description="how often the agent reports its status")
    connect_timeout_s: float = Field(10.0, gt=0, description="give up one connection attempt after this long")
    credential_file: Path | None = Field(
        None, description="robot credential from `edge-agent enroll` (default: <state_dir>/credential if present)"
    )
    ca_file: Path | None = Field(None, description="CA bundle that signs the learner's certificate (wss://)")
    pin_sha256: str | None = Field(
        None, description="pin the learner's certificate: hex SHA-256 of its DER bytes (enroll records it)"
    )
    allow_insecure: bool = Field(False, description="allow plain ws:// to a host other than this computer")
    allow_unauthenticated: bool = Field(
        False, description="take weights and commands from a learner that did not prove itself (no credential); "
        "only for a learner on this computer: the demo, tests",
    )
    tunnel_allow: list[int] = Field(
        default_factory=list, description="local TCP ports the cloud may reach through the reverse tunnel (e.g. [22])"
    )
    tunnel_max_streams: int = Field(16, gt=0, le=4096, description="tunnelled streams open at once; more are refused")
    max_policy_params: int = Field(
        200_000_000, gt=0, description="refuse a policy with more parameters (checked before the network is built)"
    )
    max_policy_version_jump: int = Field(
        1_000_000, gt=0, description="refuse a policy whose version is more than this above the current one"
    )
    ping_interval_s: float = Field(5.0, gt=0, description="keepalive ping period")
    ping_timeout_s: float = Field(10.0, gt=0, description="a peer silent this long after a ping is dead: reconnect")

    @field_validator("url", "fallback_urls")
    @classmethod
    def _ws(cls, v: str | list[str]) -> str | list[str]:
        for u in [v] if isinstance(v, str) else v:
            if not u.startswith(("ws://", "wss://")):
                raise ValueError(f"{u!r} must start with ws:// or wss://")
        return v

    @property
    def urls(self) -> list[str]:
        return [self.url, *self.fallback_urls]

    @model_validator(mode="after")
    def _plain_only_locally(self) -> "LinkConfig":
        for u in self.urls:
            if u.startswith("ws://") and not is_loopback(urlsplit(u).hostname or "") and not self.allow_insecure:
                raise ValueError(f"{u}: plain ws:// leaves this computer unencrypted; use wss:// or set allow_insecure")
        if self.allow_unauthenticated:
            for u in self.urls:
                if not is_loopback(urlsplit(u).hostname or ""):
                    raise ValueError(f"allow_unauthenticated: {u} is not on this computer; enroll the robot instead")
        if self.pin_sha256 is not None and len(self.pin_sha256.replace(":", "")) != 64:
            raise ValueError("pin_sha256 must be 64 hex digits")
        for port in self.tunnel_allow:
            if not 0 < port < 65536:
                raise ValueError(f"tunnel_allow: {port} is not a TCP port")
        return self


class TeleopConfig(_Strict):
    device: str = Field(..., description="registered teleop device: keyboard, gamepad, spacemouse, ros2_joy, scripted_fetch")
    name: str = Field("teleop", description="unit name on this robot computer")
    options: dict[str, Any] = Field(default_factory=dict, description="device options (axes, buttons, scale), checked by the device")
    takeover: Literal["hold", "toggle"] = Field(
        "hold", description="hold: the human drives while the take-over button is held; toggle: each press switches"
    )


class RobotConfig(_Strict):
    driver: str = Field("mujoco_fetch", description="registered driver name")
    name: str = Field("arm", description="unit name on this robot computer")
    options: dict[str, Any] = Field(default_factory=dict, description="driver options, checked by the driver")


class ControlConfig(_Strict):
    rate_hz: float = Field(25.0, ge=0, description="control loop rate; 0 runs as fast as the robot steps (simulation)")
    chunk_steps: int = Field(
        50, gt=0, le=10_000, description="most steps per uploaded chunk; episode ends, chunk_bytes and "
        "chunk_seconds also cut one (on a fast link, raise it with chunk_bytes set: fewer, bigger chunks)",
    )
    chunk_bytes: int = Field(
        32 << 20, ge=0, description="cut a chunk once its steps hold this many raw bytes (observations and "
        "actions, before compression; 0: no cut by size); keeps camera chunks well under the learner's "
        "limits.max_decompressed_bytes",
    )
    chunk_seconds: float = Field(
        0.0, ge=0, description="cut a chunk this long after its first step (0: no cut by age); bounds how "
        "late a slow robot's steps reach the learner",
    )
    realtime_priority: int = Field(
        0, ge=0, le=99, description="run the control loop's thread SCHED_FIFO at this priority (1-99) so a due "
        "tick never waits for another task's time slice; needs CAP_SYS_NICE or an RLIMIT_RTPRIO (the installed "
        "unit: a drop-in with RestrictRealtime=no and LimitRTPRIO=<priority>); not granted, the loop runs as before "
        "and logs event=realtime_unavailable. 0: normal scheduling. Ignored with rate_hz = 0 (a loop that never sleeps must not hold a core)",
    )
    max_episodes: int = Field(0, ge=0, description="stop after this many episodes (0: run forever)")
    random_steps: int = Field(0, ge=0, description="uniform random actions for this many steps before any policy arrives")
    deterministic: bool = Field(False, description="act with the policy mean instead of sampling (evaluation)")
    seed: int = Field(0, description="seed for action sampling")
    sync: bool = Field(
        False, description="synchronous baseline: after each episode, wait for a policy newer than the one that acted"
    )
    sync_timeout_s: float = Field(30.0, gt=0, description="with sync, give up waiting for a new policy after this long")
    remote_commands: bool = Field(
        True, description="take operator commands from the learner (pause/resume, start/stop episode, success/failure "
        "labels, rewards: `cloud-learner robots command`, the dashboard); false: the robot does not offer them in its "
        "hello, so the learner answers 409, and any that arrive are logged (event=remote_command_refused), not applied. "
        "Needs a learner this robot can verify (a credential, or link.allow_unauthenticated)",
    )
    policy_device: str = Field(
        "cpu", description='where the robot runs its policy: "cpu", "auto" (a GPU if torch sees one), "cuda" or '
        '"cuda:N"; independent of the learner\'s device',
    )

    @field_validator("policy_device")
    @classmethod
    def _policy_device(cls, v: str) -> str:
        return device_setting(v)


class SpoolConfig(_Strict):
    dir: Path = Field(Path("spool"), description="spool directory (relative paths are from the config file)")
    fsync: Literal["always", "interval", "never"] = Field(
        "always", description="always: fsync every chunk; interval: at most every fsync_interval_ms; never: leave it to the OS"
    )
    fsync_interval_ms: int = Field(100, gt=0, description="with fsync = interval, the longest a chunk stays unsynced")
    segment_bytes: int = Field(64 << 20, gt=0, description="roll to a new spool segment past this size")
    quota_mb: float | None = Field(
        None, ge=0, description="spool size at which no new episode starts until the cloud acks "
        "(unset: half the disk space free when the agent starts, counting what the spool holds; 0: no quota)",
    )


class Ros2BridgeConfig(_Strict):
    namespace: str | None = Field(None, description="topic namespace (default /fleetrl/<robot_id>)")
    domain_id: int = Field(0, ge=0, le=232, description="ROS_DOMAIN_ID to join")
    backend: Literal["auto", "dds", "rclpy"] = Field("auto", description="rclpy if importable, else plain DDS")
    localhost_only: bool = Field(
        True, description="keep DDS traffic on this computer; false takes commands from any host on the network (docs/ros2.md)"
    )
    status_interval_s: float = Field(1.0, gt=0, description="how often status is published")


class AgentServiceConfig(_Strict):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="log level (reloadable with SIGHUP); `edge-agent run --log-level` overrides it"
    )
    status_interval_s: float = Field(
        2.0, gt=0, description="how often <state_dir>/status.json, the metrics and systemd's STATUS= line are refreshed"
    )
    metrics: bool = Field(True, description="serve Prometheus metrics at http://<metrics_host>:<metrics_port>/metrics")
    metrics_host: str = Field("127.0.0.1", description="metrics listen address; keep it on localhost")
    metrics_port: int = Field(9184, ge=0, le=65535, description="metrics port; 0 picks a free one (written to status.json)")


# Keys SIGHUP may change in a running agent. Anything else (robot_id, driver,
# spool, state_dir, control, link URLs, metrics listener) needs a restart: the
# running value is kept and the refusal is logged.
AGENT_RELOADABLE = frozenset({
    "service.log_level", "service.status_interval_s",
    "link.reconnect_min_s", "link.reconnect_max_s", "link.status_interval_s",
    "link.connect_timeout_s", "link.ping_interval_s", "link.ping_timeout_s",
})


class AgentConfig(_Strict):
    robot_id: str = Field(..., min_length=1, max_length=128, pattern=ID_PATTERN, description="this robot's id (" + ID_RULE + ")")
    link: LinkConfig = Field(default_factory=LinkConfig)
    robot: RobotConfig = Field(default_factory=RobotConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    state_dir: Path = Field(Path("state"), description="ledger and status files")
    ros2: Ros2BridgeConfig | None = Field(None, description="publish status/actions on ROS 2 and take commands from it")
    teleop: TeleopConfig | None = Field(None, description="a human's device: take over the arm, label rewards, record demos")
    service: AgentServiceConfig = Field(default_factory=AgentServiceConfig, description="daemon: logs, status file, metrics")
    policy: AgentPolicyConfig = Field(
        default_factory=AgentPolicyConfig, description="where the policy runs (robot or cloud) and how action chunks are "
        "executed (docs/cloud_inference.md)",
    )
