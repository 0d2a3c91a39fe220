"""``rlco.toml``: the RL-Co recipe (sim-real co-training in two stages, then evaluation on the real twin).

Stage I (``[sft]``): L = alpha * SFT(D_sim) + (1 - alpha) * SFT(D_real).
Stage II (``[rl]``): L = L_RL(sim) + beta * SFT(D_real), RL on the unperturbed simulator.
Evaluation (``[eval]``): success over a fixed set of seeded episodes on the "real" robot, the
Fetch twin with ``[real]`` dynamics (hal_drivers/mujoco_fetch/twin.py).

Every key is optional; the defaults are the run docs/rlco.md describes. Validation names the
bad field (``rlco.toml: sft.alpha: ...``) before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from hal_drivers.mujoco_fetch.config import CameraView
from hal_drivers.mujoco_fetch.twin import Dynamics

from shared.config_base import Strict
from shared.policy.flow import MAX_HORIZON, MAX_STEPS

PIXEL_POLICIES = ("cnn", "cnn_flow")  # sft.policy values that read the frames of `cameras`
FLOW_POLICIES = ("flow", "cnn_flow")  # sft.policy values that plan chunks of flow_horizon actions

# The twin of docs/drivers.md ("A sim/real twin"): the scripted push expert succeeds 100% in sim, ~61% here.
DEFAULT_REAL = {"object_mass_scale": 3.0, "friction_scale": 2.0, "damping_scale": 2.0, "action_gain": 0.7,
                "action_latency_steps": 2, "action_noise": 0.1, "obs_noise": 0.005, "seed": 0}


class DatasetsConfig(Strict):
    """Demonstrations from the scripted expert; versioned Parquet files reused across runs."""

    dir: Path = Field(Path("datasets"), description="where dataset versions live (shared by runs: reused when present)")
    sim_episodes: int = Field(1000, ge=1, le=100_000, description="D_sim: expert episodes on the unperturbed simulator")
    real_episodes: int = Field(40, ge=1, le=1000, description="D_real: expert episodes recorded on the real twin")
    real_via: Literal["real_path", "in_process"] = Field("real_path", description=(
        "real_path: edge-agent record with the scripted operator into a learner (spool, link, ingest), rows read "
        "back from its Parquet buffer; in_process: the twin env stepped here (fast; tests)"))
    success_only: bool = Field(True, description="keep only demonstrations that succeeded (the twin's expert fails ~40%)")
    noise: float = Field(0.1, ge=0, le=1, description="std of Gaussian noise on the expert's actions (varied demos)")
    seed: int = Field(7, description="seed of the expert's episodes and noise")


class SFTConfig(Strict):
    """Stage I: supervised co-training of the policy (Gaussian, flow head, CNN or CNN flow head) on both datasets."""

    policy: Literal["gaussian", "flow", "cnn", "cnn_flow"] = Field("gaussian", description=(
        "gaussian: the tanh-Gaussian MLP, SFT = NLL of the demo action; flow: the flow-matching action head "
        "(pi0.5's kind, shared/policy/flow.py), SFT = flow-matching loss on chunks of flow_horizon demo actions; "
        "cnn: the cnn_gaussian actor (a conv encoder per camera of `cameras`, fused with the state), SFT = NLL "
        "of the demo action; cnn_flow: the flow head over the same per-camera conv encoders and the state "
        "(shared/policy/cnn_flow.py), SFT = the flow-matching loss on chunks, each with its first step's frames. "
        "Stage II trains the state Gaussian only: with flow, cnn or cnn_flow, eval.after must not name rl"))
    flow_horizon: int = Field(4, ge=1, le=MAX_HORIZON, description=(
        "flow, cnn_flow: actions per chunk (a chunk never crosses an episode's end; padded steps are left out "
        "of the loss)"))
    flow_steps: int = Field(10, ge=1, le=MAX_STEPS,
                            description="flow, cnn_flow: Euler steps integrating a chunk from noise")
    cnn_channels: list[int] = Field(default_factory=lambda: [16, 16, 16, 16], min_length=1, max_length=8,
                                    description=("cnn, cnn_flow: conv channels per camera (3x3 kernels, the first "
                                                 "with stride 2)"))
    cnn_latent: int = Field(50, ge=1, le=1024,
                            description="cnn, cnn_flow: features per camera (Linear + LayerNorm + tanh)")

    alpha: float = Field(0.5, ge=0, le=1, description=(
        "weight of SFT(D_sim); 1 - alpha weighs SFT(D_real). 0: SFT on D_real only (the 'no Stage I' ablation); "
        "1: sim only (no real supervision)"))
    weighting: Literal["loss", "batch"] = Field("loss", description=(
        "loss: alpha weighs each dataset's mean loss, over a batch of each (exact); batch: one batch of "
        "2 * batch_size rows, round(alpha * n) of them from D_sim, one mean (alpha up to rounding)"))
    updates: int = Field(3000, ge=0, description="gradient steps")
    batch_size: int = Field(256, ge=1, description="rows from each dataset per step (the weighting is alpha's, not the batch's)")
    lr: float = Field(1e-3, gt=0)
    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1, description="actor MLP widths")
    checkpoint_every: int = Field(500, ge=1, description="updates between in-stage checkpoints")


class RLConfig(Strict):
    """Stage II: RL on the simulator, regularised by SFT on the real demonstrations."""

    algorithm: Literal["ppo", "sac"] = Field("ppo", description="ppo: on-policy with GAE; sac: off-policy")
    beta: float = Field(0.1, ge=0, description="weight of SFT(D_real) added to the RL actor loss")
    envs: int = Field(8, ge=1, le=256, description="simulated envs stepped in parallel")
    iterations: int = Field(20, ge=0, description="ppo: rollout+update rounds; sac: rounds of envs*steps env steps")
    steps: int = Field(50, ge=1, description="env steps per env per iteration (Fetch episodes are 50)")
    gamma: float = Field(0.98, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip: float = Field(0.2, gt=0, le=1, description="ppo: ratio clip")
    epochs: int = Field(4, ge=1, description="ppo: passes over each rollout")
    minibatch: int = Field(256, ge=1)
    lr: float = Field(3e-4, gt=0)
    value_coef: float = Field(0.5, ge=0)
    entropy_coef: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    init_log_std: float | None = Field(-1.0, description=(
        "ppo: exploration noise (pre-tanh log std) the Stage I actor starts Stage II with; SFT on near-deterministic "
        "demos shrinks it to ~e^-3, too little to explore (None: keep the actor's)"))
    critic_warmup: int = Field(2, ge=0, description=(
        "first iterations that train the critic(s) only: a fresh critic's advantages (ppo) or Q values (sac) are "
        "noise, and actor steps on them would undo Stage I before the critic knows anything"))
    sac_updates_per_step: float = Field(1.0, gt=0, description="sac: gradient steps per env step")
    checkpoint_every: int = Field(5, ge=1, description="iterations between in-stage checkpoints")


class EvalConfig(Strict):
    """Success on the real twin over a fixed set of seeded episodes."""

    episodes: int = Field(20, ge=1, le=10_000, description="episodes in the set (split over the robots)")
    robots: int = Field(2, ge=1, le=16, description="real_path: edge-agent processes evaluating in parallel")
    seed: int = Field(1000, description="robot i's env is seeded seed + i: the set is the same for every policy")
    via: Literal["real_path", "in_process"] = Field("real_path", description=(
        "real_path: a learner serves the stage's weights (training off) to edge-agents running the twin; "
        "in_process: the twin env stepped here with the policy's mean action (a flow or cnn_flow policy's chunks "
        "run through the robots' chunk executor, shared/chunk_exec.py, with the same settings)"))
    rate_hz: float = Field(25.0, gt=0, le=1000, description=(
        "real_path: the robots' control rate (the twin's own is 25 Hz, as a real arm's loop would run); an agent "
        "acts before its link is up, so it runs slack episodes for about link_up_s and those are skipped"))
    link_up_s: float = Field(6.0, gt=0, le=120, description="real_path: time allowed for an agent's link to come up")
    chunk_overlap: int = Field(2, ge=0, le=1023, description=(
        "flow, cnn_flow: the robots' policy.overlap: a new chunk is planned when this many actions of the current one are "
        "left (with flow_horizon 4: 2 of each chunk run, then it replans); must be below sft.flow_horizon"))
    chunk_blend_steps: int = Field(0, ge=0, le=1023, description=(
        "flow, cnn_flow: the robots' policy.blend_steps: ticks over which the old and the new chunk are crossfaded"))
    after: list[Literal["sft", "rl"]] = Field(default_factory=lambda: ["sft", "rl"],  # type: ignore[arg-type]
                                             description="stages evaluated (the summary table's columns)")

    def robot_policy(self, horizon: int) -> dict[str, Any] | None:
        """The ``[policy]`` table robots run a policy of ``horizon`` actions per chunk with (None: one action
        per inference, the agent's chunk settings are not used)."""
        if horizon <= 1:
            return None
        return {"where": "robot", "horizon": horizon, "overlap": self.chunk_overlap,
                "blend_steps": self.chunk_blend_steps}


class RLCoConfig(Strict):
    """The whole recipe: datasets, Stage I, Stage II, evaluation."""

    run_dir: Path = Field(Path("rlco-run"), description="checkpoints, stage outputs, logs, the summary")
    seed: int = Field(0, description="seeds the networks, batches and sim envs")
    task: Literal["push", "reach"] = "push"
    threads: int = Field(1, ge=1, le=256, description="torch CPU threads")
    cameras: list[CameraView] = Field(default_factory=list, description=(
        "cnn, cnn_flow: the views every Fetch robot of the recipe renders (D_sim, D_real, evaluation; the mujoco driver's "
        "[robot.options] cameras, e.g. {name = \"overhead\", view = \"external_camera_0\", size = 32}); "
        "empty for state policies"))
    camera_antialias: bool = Field(False, description="cnn, cnn_flow: multisample anti-aliasing of the views (off: ~3x faster)")
    real: Dynamics = Field(default_factory=lambda: Dynamics(**DEFAULT_REAL),
                           description="the real twin's dynamics ([robot.options.dynamics] of the mujoco driver)")
    datasets: DatasetsConfig = Field(default_factory=DatasetsConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _real_differs(self) -> "RLCoConfig":
        if self.task == "reach" and self.real.object_mass_scale != 1.0:
            raise ValueError("real.object_mass_scale: the reach task has no block (set it to 1 or use task = \"push\")")
        return self

    @model_validator(mode="after")
    def _cnn_fits(self) -> "RLCoConfig":
        policy = self.sft.policy
        if policy not in PIXEL_POLICIES:
            if self.cameras:
                raise ValueError(f"cameras: set, but sft.policy = \"{policy}\" reads no frames (every robot "
                                 "would render them for nothing); set sft.policy = \"cnn\" or \"cnn_flow\", "
                                 "or cameras = []")
            return self
        if not self.cameras:
            raise ValueError(f"sft.policy = \"{policy}\" needs cameras: at least one view, e.g. cameras = "
                             "[{name = \"overhead\", view = \"external_camera_0\", size = 32}]")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"cameras: names must differ, got {names}")
        from hal_drivers.mujoco_fetch.config import STATE_FIELDS

        clash = [n for n in names if n in STATE_FIELDS]
        if clash:
            raise ValueError(f"cameras: {clash} name state fields of the Fetch arm; pick other camera names")
        if "rl" in self.eval.after:
            raise ValueError(f"sft.policy = \"{policy}\" with eval.after naming rl: Stage II (PPO/SAC) trains the "
                             "state Gaussian actor only (RL over rendered frames is not implemented); set "
                             "eval.after = [\"sft\"]")
        from shared.policy.cnn import conv_out

        small = [c.name for c in self.cameras if conv_out(c.size, len(self.sft.cnn_channels)) < 1]
        if small:
            raise ValueError(f"cameras: {small} too small for {len(self.sft.cnn_channels)} conv layers "
                             "(sft.cnn_channels); use larger views or fewer layers")
        return self

    def robot_extra(self) -> dict[str, Any]:
        """The camera options every robot of the recipe gets (empty for state policies)."""
        if not self.cameras:
            return {}
        return {"cameras": [c.model_dump(mode="json", exclude_none=True) for c in self.cameras],
                "camera_antialias": self.camera_antialias}

    @model_validator(mode="after")
    def _flow_fits(self) -> "RLCoConfig":
        if self.sft.policy not in FLOW_POLICIES:
            return self
        if "rl" in self.eval.after:
            raise ValueError(f"sft.policy = \"{self.sft.policy}\" with eval.after naming rl: Stage II (PPO/SAC) "
                             "trains the Gaussian actor only (flow-policy RL is not implemented); set "
                             "eval.after = [\"sft\"]")
        h = self.sft.flow_horizon
        for name, value in (("chunk_overlap", self.eval.chunk_overlap), ("chunk_blend_steps", self.eval.chunk_blend_steps)):
            if h > 1 and value >= h:
                raise ValueError(f"eval.{name} ({value}) must be smaller than sft.flow_horizon ({h})")
        return self
