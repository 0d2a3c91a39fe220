"""Config models for both daemons: one TOML file each, strict.

Unknown keys and bad values are errors that name the key, so a typo in a
config on a robot in a far-away lab fails loudly at start, not silently later.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Ubuntu 22.04, ROS 2 Humble robot computers)
    import tomli as tomllib
from .ids import PATTERN as ID_PATTERN, RULE as ID_RULE


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def device_setting(v: str) -> str:
    """A torch device a setting may name (whether this machine has it is checked where it is used)."""
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ValueError(f'{v!r}: use "auto", "cpu", "cuda" or "cuda:N"')


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


class RobotConfig(_Strict):
    driver: str = Field("mujoco_fetch", description="registered driver name")
    name: str = Field("arm", description="unit name on this robot computer")
    options: dict[str, Any] = Field(default_factory=dict, description="driver options, checked by the driver")


class ControlConfig(_Strict):
    rate_hz: float = Field(25.0, ge=0, description="control loop rate; 0 runs as fast as the robot steps (simulation)")
    chunk_steps: int = Field(50, gt=0, le=10_000, description="steps per uploaded chunk; episode ends also cut a chunk")
    max_episodes: int = Field(0, ge=0, description="stop after this many episodes (0: run forever)")
    random_steps: int = Field(0, ge=0, description="uniform random actions for this many steps before any policy arrives")
    deterministic: bool = Field(False, description="act with the policy mean instead of sampling (evaluation)")
    seed: int = Field(0, description="seed for action sampling")
    sync: bool = Field(
        False, description="synchronous baseline: after each episode, wait for a policy newer than the one that acted"
    )
    sync_timeout_s: float = Field(30.0, gt=0, description="with sync, give up waiting for a new policy after this long")
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
    service: AgentServiceConfig = Field(default_factory=AgentServiceConfig, description="daemon: logs, status file, metrics")


# ---------------------------------------------------------------- cloud learner


class ServerConfig(_Strict):
    host: str = Field("127.0.0.1", description="address the gateway listens on")
    port: int = Field(8765, ge=0, le=65535, description="port; 0 picks a free one (written to <data_dir>/endpoint.json)")
    heartbeat_s: float = Field(10.0, gt=0, description="ping robots this often; one silent for a period is dropped")
    auth: Literal["required", "open"] = Field(
        "required",
        description="required: every robot proves its enrolled credential, whatever its address; "
        "open: unenrolled robots are let in too (loopback host only: the demo, tests)",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate (chain) for wss://")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert")
    allow_insecure: bool = Field(False, description="serve plain ws:// on an address other than loopback")
    handshake_timeout_s: float = Field(10.0, gt=0, description="a link that has not said hello by then is closed")
    max_connections: int = Field(256, gt=0, description="robot links open at once; more are refused")
    max_pending_handshakes: int = Field(
        32, gt=0, description="links between upgrade and authenticated hello, in total; more are refused (too_many_handshakes)"
    )
    max_pending_per_source: int = Field(8, gt=0, description="such unauthenticated links from one source address")
    max_sockets: int = Field(1024, gt=0, description="TCP connections to the robot port at once; more are closed at accept")
    max_sockets_per_source: int = Field(
        128, gt=0, description="TCP connections from one source address (a site behind one NAT address shares it)"
    )
    header_timeout_s: float = Field(10.0, gt=0, description="a connection must send its HTTP request headers (and finish TLS) within this")

    @field_validator("auth", mode="before")
    @classmethod
    def _no_auto(cls, v: Any) -> Any:
        if v == "auto":  # it let any loopback client in: behind a proxy or port-forward, that is everyone
            raise ValueError('"auto" was removed: use "required" (every robot proves a credential) '
                             'or "open" (unenrolled robots allowed; loopback host only)')
        return v

    @model_validator(mode="after")
    def _tls(self) -> "ServerConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_cert is None and not is_loopback(self.host) and not self.allow_insecure:
            raise ValueError(f"host {self.host}: serving plain ws:// beyond loopback needs tls_cert/tls_key or allow_insecure")
        if self.auth == "open" and not is_loopback(self.host):
            raise ValueError(f'server.auth = "open" needs a loopback server.host, not {self.host}; use "required"')
        return self

    @property
    def open(self) -> bool:
        """Unenrolled robots may link (and get weights): only ever on a loopback-bound learner."""
        return self.auth == "open"


class LimitsConfig(_Strict):
    max_frame_bytes: int = Field(64 << 20, gt=1024, description="largest websocket message accepted")
    max_decompressed_bytes: int = Field(256 << 20, gt=1024, description="largest chunk after decompression")
    max_chunk_rows: int = Field(10_000, gt=0, description="most steps in one chunk")
    max_inflight_chunks: int = Field(16, gt=0, description="chunks a robot may send before an ack (credit)")
    max_messages_per_s: float = Field(500.0, gt=0, description="messages one link may send per second (burst: 2 s worth)")
    max_hello_bytes: int = Field(64 << 10, ge=1024, description="largest hello (before the robot is authenticated)")
    robot_disk_bytes: int = Field(
        1 << 40, ge=0, description="disk one robot's stored data may use (0: no quota); over it the robot holds its data (quota_exceeded)"
    )
    robot_segments_per_min: int = Field(
        6000, ge=0, description="segments holding one robot's data sealed per minute (0: no quota); more: quota_exceeded"
    )
    robot_loss_reports_per_min: int = Field(
        60, ge=0, description="lost-range reports one robot may file per minute (0: no quota); more: quota_exceeded"
    )


class LearnerAlgoConfig(_Strict):
    algorithm: Literal["sac"] = Field("sac", description="training algorithm")
    batch_size: int = Field(256, gt=0, description="transitions per gradient update")
    hidden: list[int] = Field(default_factory=lambda: [256, 256], description="MLP hidden layer widths")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (actor, critics, temperature)")
    gamma: float = Field(0.98, gt=0, le=1, description="discount factor")
    tau: float = Field(0.005, gt=0, le=1, description="target network soft-update rate")
    init_alpha: float = Field(0.02, gt=0, description="initial SAC entropy temperature")
    learning_starts: int = Field(1000, ge=1, description="transitions in the buffer before training starts")
    utd_ratio: float = Field(1.0, gt=0, description="most gradient updates per transition received")
    publish_every: int = Field(250, gt=0, description="publish new weights every this many updates")
    publish_when_idle: bool = Field(
        False, description="also publish whenever training catches up with the data (for synchronous runs)"
    )
    observation_fields: list[str] | None = Field(None, description="state fields fed to the policy (default: all)")
    memory_capacity: int = Field(1_000_000, gt=0, description="transitions kept in memory for sampling")
    checkpoint_every: int = Field(5000, gt=0, description="checkpoint the learner every this many updates")
    seed: int = Field(0, description="seed for the learner (nets, sampling)")
    threads: int = Field(1, gt=0, description="torch CPU threads for training")
    device: str = Field(
        "auto", description='where the learner trains: "auto" (a GPU if torch sees one, else the CPU), "cpu", '
        '"cuda" or "cuda:N"; checkpoints resume on any device',
    )
    policy: Literal["auto", "mlp_gaussian", "cnn_gaussian"] = Field(
        "auto", description="policy architecture; auto: cnn_gaussian when image_fields names cameras, else mlp_gaussian"
    )
    image_fields: list[str] = Field(
        default_factory=list, description="camera fields the policy sees (each through its own conv encoder); "
        "empty: state only",
    )
    encoder_channels: list[int] = Field(
        default_factory=lambda: [32, 32, 32, 32], description="conv encoder: output channels per 3x3 layer "
        "(the first has stride 2), one encoder per camera",
    )
    encoder_latent: int = Field(64, gt=0, le=4096, description="per-camera feature size after LayerNorm + tanh")
    encoder_weights: Path | None = Field(
        None, description="initial encoder weights: a local safetensors file (nothing is downloaded)"
    )
    augment_pad: int = Field(4, ge=0, le=32, description="random-shift augmentation of camera frames, in pixels (0: off)")
    image_memory_mb: float = Field(
        2048.0, gt=0, description="memory for recent camera frames; older frames are sampled from the Parquet segments"
    )
    history_fraction: float = Field(
        0.0, ge=0, le=1, description="share of each batch drawn from rows on disk that memory no longer holds"
    )
    prefetch_batches: int = Field(
        2, ge=0, le=64, description="batches a background thread prepares ahead of the trainer (0: sample inline)"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return device_setting(v)

    @model_validator(mode="after")
    def _policy_fits_images(self) -> "LearnerAlgoConfig":
        if self.policy == "cnn_gaussian" and not self.image_fields:
            raise ValueError('policy = "cnn_gaussian" needs image_fields (the cameras it sees)')
        if self.policy == "mlp_gaussian" and self.image_fields:
            raise ValueError('policy = "mlp_gaussian" reads state only; drop image_fields or use "cnn_gaussian"')
        if not self.encoder_channels or len(self.encoder_channels) > 8 or not all(0 < c <= 1024 for c in self.encoder_channels):
            raise ValueError("encoder_channels: 1 to 8 layers of 1..1024 channels")
        return self

    @property
    def policy_kind(self) -> str:
        """The architecture this config trains."""
        if self.policy != "auto":
            return self.policy
        return "cnn_gaussian" if self.image_fields else "mlp_gaussian"


class MetricsConfig(_Strict):
    enabled: bool = Field(True, description="serve Prometheus metrics at http://<host>:<port>/metrics")
    host: str = Field("127.0.0.1", description="metrics listen address; keep it on localhost")
    port: int = Field(9185, ge=0, le=65535, description="metrics port; 0 picks a free one (written to <data_dir>/endpoint.json)")


class AdminConfig(_Strict):
    host: str = Field("127.0.0.1", description="admin listener (/status, /admin/*; token required); loopback only")
    port: int = Field(0, ge=0, le=65535, description="admin port; 0 picks a free one (written to <data_dir>/endpoint.json)")

    @field_validator("host")
    @classmethod
    def _loopback(cls, v: str) -> str:
        if not is_loopback(v):
            raise ValueError(f"{v}: the admin listener stays on loopback (127.0.0.1 or ::1)")
        return v


class LearnerConfig(_Strict):
    data_dir: Path = Field(Path("run"), description="buffer, checkpoints and logs (relative to the config file)")
    server: ServerConfig = Field(default_factory=ServerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    learner: LearnerAlgoConfig = Field(default_factory=LearnerAlgoConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig, description="admin listener for the CLI on the learner host")
    cluster: dict[str, Any] | None = Field(
        None, description="multi-node run on Ray: nodes, groups, placement (checked by cloud.cluster.config)"
    )


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{source}: {key}: {msg}{more}") from None


def read_toml(text: str) -> dict[str, Any]:
    """TOML text as a dict (tomllib, or tomli on Python 3.10)."""
    data: dict[str, Any] = tomllib.loads(text)
    return data


def load(model: type[M], path: str | Path) -> M:
    """Read a TOML file into ``model``; relative paths inside resolve against the file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    cfg = validate(model, data, str(p))
    return _resolve_paths(cfg, p.parent.resolve())


def _resolve_paths(cfg: M, base: Path) -> M:
    updates: dict[str, Any] = {}
    for name, value in cfg:
        if isinstance(value, Path) and not value.is_absolute():
            updates[name] = base / value
        elif isinstance(value, BaseModel):
            updates[name] = _resolve_paths(value, base)
    return cfg.model_copy(update=updates) if updates else cfg
