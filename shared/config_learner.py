"""The cloud learner's config (``cloud-learner serve --config run.toml``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .config_base import Strict as _Strict, device_setting, is_loopback
from .config_groups import GroupsConfig, NamedGroup
from .config_inference import InferenceConfig

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
    max_act_camera_bytes: int = Field(
        16 << 20, ge=1024, description="camera frames of one cloud-inference request, decompressed (and as sent); "
        "more is refused (observation_too_large), the link stays up",
    )
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
    algorithm: Literal["sac", "rlpd", "bc", "hg_dagger"] = Field(
        "sac", description="sac; rlpd (SAC with demo_fraction of each batch from demonstrations, LayerNorm critic "
        "ensemble); bc (behaviour cloning of demos and interventions); hg_dagger (the policy drives, BC on human "
        "corrections)",
    )
    reward: Literal["env", "human", "classifier"] = Field(
        "env", description="what the learner trains on: env (the driver's reward), human (labels from people), "
        "classifier (a success classifier on camera frames; the driver's reward is not read)",
    )
    demo_fraction: float = Field(0.5, ge=0, lt=1, description="rlpd: share of each batch drawn from demonstrations")
    demo_capacity: int = Field(200_000, gt=0, description="demonstration and intervention rows kept for sampling")
    demo_paths: list[Path] = Field(
        default_factory=list, description="demonstrations to import at start: run dirs or Parquet segment files"
    )
    critics: int = Field(2, ge=2, le=32, description="critic ensemble size (rlpd: 10)")
    critic_subset: int = Field(2, ge=1, le=32, description="critics whose minimum makes the target (random subset)")
    critic_layer_norm: bool = Field(False, description="LayerNorm in the critics (rlpd: true)")
    normalize_observations: bool = Field(
        False, description="train on standardised state observations (statistics fitted when training starts); "
        "published policies read raw observations (the scaling is folded into their first layer); state policies only",
    )
    bc_pretrain_updates: int = Field(0, ge=0, description="behaviour-cloning updates on demonstrations before RL starts")
    critic_warmup_updates: int = Field(
        0, ge=0, description="sac/rlpd: the first this many updates train the critics only (the actor, e.g. a "
        "bc_pretrain_updates warm start, stays as it is while the critics learn its values). 0: off",
    )
    bc_weight: float = Field(
        0.0, ge=0, description="sac/rlpd: weight of a behaviour-cloning term in the actor loss, the squared error "
        "between the policy's mean action and the action on each batch row a person drove (demos, interventions), "
        "keeping the policy near them while the critics learn (TD3+BC). 0: off",
    )
    bc_decay_updates: int = Field(
        0, ge=0, description="bc_weight falls linearly to 0 over this many actor updates (after "
        "critic_warmup_updates). 0: bc_weight stays constant",
    )
    classifier: Path | None = Field(None, description="reward = classifier: the trained success classifier (safetensors)")
    classifier_threshold: float = Field(0.5, gt=0, lt=1, description="probability above which a frame counts as success")
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
    sync_robots: int = Field(
        0, ge=0, description="synchronous rounds across robots (with their [control] sync = true): publish only once "
        "this many robots have each finished an episode since the last publish and training has caught up with "
        "the data; publish_every does not apply. 0: off",
    )
    observation_fields: list[str] | None = Field(None, description="state fields fed to the policy (default: all)")
    memory_capacity: int = Field(1_000_000, gt=0, description="transitions kept in memory for sampling")
    checkpoint_every: int = Field(5000, gt=0, description="checkpoint the learner every this many updates")
    tensorboard: bool = Field(
        False, description="write TensorBoard scalars (every loss, updates/s, buffer rows, episodes, success rate, "
        "policy version, ingest rows/s) to <data_dir>/tb: tensorboard --logdir <data_dir>/tb; needs the tensorboard "
        "package (pip install 'fleetrl[tensorboard]')",
    )
    tensorboard_every: int = Field(100, gt=0, description="updates between two TensorBoard points (tensorboard = true)")
    seed: int = Field(0, description="seed for the learner (nets, sampling)")
    threads: int = Field(1, gt=0, description="torch CPU threads for training")
    device: str = Field(
        "auto", description='where the learner trains: "auto" (a GPU if torch sees one, else the CPU), "cpu", '
        '"cuda" or "cuda:N"; checkpoints resume on any device',
    )
    policy: Literal["auto", "mlp_gaussian", "cnn_gaussian", "flow"] = Field(
        "auto", description="policy architecture; auto: cnn_gaussian when image_fields names cameras, else "
        "mlp_gaussian; flow: a flow-matching head emitting chunks of flow_horizon actions over the state vector, "
        'trained by SFT (algorithm = "bc" or "hg_dagger")',
    )
    flow_horizon: int = Field(
        10, ge=1, le=256, description='policy = "flow": actions per chunk (each observation is trained on the next '
        "flow_horizon actions of its episode; robots may execute the first few of each chunk, then replan)",
    )
    flow_steps: int = Field(
        10, ge=1, le=100, description='policy = "flow": Euler integration steps per sampled chunk on the robot '
        "(more: closer to the learned flow, slower inference)",
    )
    init_policy: Path | None = Field(
        None, description="start from this pretrained policy instead of fresh weights: a local weights file in the "
        "format robots load (one an earlier run published); its policy arch (kind, dims, hidden, flow_horizon, "
        "flow_steps) and obs_fields must be this run's; with normalize_observations its first layer is rewritten for "
        "normalised inputs (the same function of raw ones). A checkpoint (--resume) or a newer published policy "
        "takes precedence. Nothing is downloaded",
    )
    finetune: Literal["full", "lora"] = Field(
        "full", description="full: train every weight of the policy; lora: train low-rank adapters on its Linear "
        'layers, the rest frozen (needs init_policy, algorithm = "bc" or "hg_dagger" and the peft package: '
        "pip install 'fleetrl[lora]'); robots receive plain weights either way (adapters merged)",
    )
    lora_rank: int = Field(8, ge=1, le=4096, description='finetune = "lora": the rank r of each adapter')
    lora_alpha: int = Field(16, ge=1, le=1 << 20, description='finetune = "lora": adapters are scaled by lora_alpha / lora_rank')
    lora_targets: list[str] | None = Field(
        None, description='finetune = "lora": the Linear layers to adapt, by module name or prefix (flow: '
        '"encoder", "velocity", "head"; mlp_gaussian: "trunk", "head"; or one layer, e.g. "velocity.0"); '
        "not set: every Linear layer",
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
        if self.policy == "flow":
            if self.algorithm not in ("bc", "hg_dagger"):
                raise ValueError(f'policy = "flow" trains by supervised flow matching: algorithm = '
                                 f'"{self.algorithm}" needs a Gaussian policy (its log-probabilities); use '
                                 'algorithm = "bc" or "hg_dagger" with policy = "flow", or policy = "mlp_gaussian"')
            if self.image_fields:
                raise ValueError('policy = "flow" reads state only (the live learner keeps demonstrations for '
                                 'state-only runs); a flow head over cameras, cnn_flow, is trained offline by the '
                                 'RL-Co recipe (cloud-learner rlco, [sft] policy = "cnn_flow") and served with '
                                 '[inference]; drop image_fields or use "cnn_gaussian"')
            if self.bc_pretrain_updates:
                raise ValueError(f'policy = "flow" with bc_pretrain_updates = {self.bc_pretrain_updates}: the warm '
                                 'start is for SAC and RLPD; set bc_pretrain_updates = 0')
        if not self.encoder_channels or len(self.encoder_channels) > 8 or not all(0 < c <= 1024 for c in self.encoder_channels):
            raise ValueError("encoder_channels: 1 to 8 layers of 1..1024 channels")
        if self.algorithm in ("bc", "hg_dagger"):
            for key in ("critic_warmup_updates", "bc_weight", "bc_decay_updates"):
                if getattr(self, key):
                    raise ValueError(f'{key} = {getattr(self, key)} shapes the RL actor update of algorithm = "sac" '
                                     f'or "rlpd"; algorithm = "{self.algorithm}" is behaviour cloning already: '
                                     f"set {key} = 0")
        if self.bc_weight and self.image_fields:
            raise ValueError(f"bc_weight = {self.bc_weight}: the behaviour-cloning term is for state policies "
                             "(camera runs keep no demonstrations); set bc_weight = 0 or drop image_fields")
        if self.bc_decay_updates and not self.bc_weight:
            raise ValueError(f"bc_decay_updates = {self.bc_decay_updates} decays bc_weight, which is 0: set bc_weight "
                             "or bc_decay_updates = 0")
        if self.critic_subset > self.critics:
            raise ValueError(f"critic_subset ({self.critic_subset}) is larger than critics ({self.critics})")
        if self.reward == "classifier" and self.classifier is None:
            raise ValueError('reward = "classifier" needs classifier (the trained classifier file, '
                             "from `cloud-learner classifier train`)")
        return self

    @model_validator(mode="after")
    def _finetune_fits(self) -> "LearnerAlgoConfig":
        """LoRA is refused where it cannot run, here rather than once training starts: no peft, nothing
        pretrained to adapt, or an RL algorithm (its critics and temperature are not adapters)."""
        if self.finetune == "full":
            if self.lora_targets is not None:
                raise ValueError('lora_targets chooses the layers finetune = "lora" adapts; finetune is "full": '
                                 'set finetune = "lora" or drop lora_targets')
            return self
        if self.algorithm not in ("bc", "hg_dagger"):
            raise ValueError(f'finetune = "lora" trains adapters by supervised fine-tuning: algorithm = '
                             f'"{self.algorithm}" is not supported with it; use algorithm = "bc" or "hg_dagger", '
                             'or finetune = "full"')
        if self.init_policy is None:
            raise ValueError('finetune = "lora" adapts a pretrained policy: set init_policy (a local weights '
                             'file), or use finetune = "full" to train from fresh weights')
        if self.lora_targets is not None and not self.lora_targets:
            raise ValueError("lora_targets is empty: name at least one Linear layer, or leave it out (all of them)")
        if importlib.util.find_spec("peft") is None:
            raise ValueError("finetune = \"lora\" needs the peft package, which is not installed here: "
                             "pip install 'fleetrl[lora]'")
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
    groups: GroupsConfig = Field(
        default_factory=GroupsConfig, description="embodiment groups: robots of another episode spec get their own "
        "buffer, policy and checkpoints (mixed fleets)",
    )
    inference: InferenceConfig = Field(
        default_factory=InferenceConfig, description="policy server for robots with policy.where = \"cloud\" "
        "(docs/cloud_inference.md)",
    )
    cluster: dict[str, Any] | None = Field(
        None, description="multi-node run on Ray: nodes, groups, placement (checked by cloud.cluster.config)"
    )

    @model_validator(mode="after")
    def _group_learners(self) -> "LearnerConfig":
        for g in self.groups.named:
            try:
                self.group_learner(g)
            except ValueError as e:
                raise ValueError(f"groups.named[{g.name}].learner: {e}") from None
        return self

    def group_learner(self, group: NamedGroup | None) -> LearnerAlgoConfig:
        """The [learner] settings a group trains with: the run's, with the group's own keys over them."""
        if group is None or not group.learner:
            return self.learner
        return LearnerAlgoConfig.model_validate({**self.learner.model_dump(), **group.learner})
