"""The RL-Co stage machine: datasets -> Stage I (sft) -> Stage II (rl) -> evaluation, resumable.

Everything lives under ``run_dir``: ``state.json`` (the config it runs and the stages done),
``ckpt/<stage>.ckpt`` (the stage in progress, written every ``checkpoint_every`` and atomically,
as the learner's checkpoints are), ``stages/<stage>/`` (a finished stage's actor, its published
weights and its evaluation) and ``events.jsonl`` (what started, resumed and finished, for people
and tests). A SIGKILL anywhere loses at most the work since the last checkpoint: ``--resume``
skips finished stages, continues the interrupted one from its checkpoint and never regenerates
datasets (they are versioned files, reused by their settings' hash).

Stage I trains the policy ``sft.policy`` names: the Gaussian actor, the flow-matching head
(on chunks of demo actions), the camera actor (``cnn_gaussian``, on each row's frames and state)
or the flow head over cameras (``cnn_flow``, on chunks with their first step's frames).
Stage II trains the state Gaussian actor only, so any other recipe is Stage I and its
evaluation; ``--stage rl`` with such a policy is refused (ConfigError) before anything is written.

Stage II's sim envs are seeded from the iteration they start at, so a resumed stage meets new
episodes, not the ones before the kill: a resumed Stage II is a valid continuation, not a bitwise
replay (Stage I, which has no env, replays exactly).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from cloud.learner import checkpoint
from cloud.learner.normalize import ObsNormalizer
from shared.errors import ConfigError
from shared.faults import crash_point
from shared.fsutil import atomic_write
from shared.policy import actor_images, build_gaussian
from shared.weights import WeightsBlob, encode_weights

from . import data, evaluate
from .config import FLOW_POLICIES, PIXEL_POLICIES, RLCoConfig
from .datasets import Dataset
from .losses import Demos, Sampler
from .ppo import PPO, set_log_std
from .sft import make_trainer

STAGES = ("sft", "rl", "eval")
WEIGHTS_VERSION = {"sft": 1, "rl": 2}  # the version a stage's policy is published as
Progress = Callable[[str, int, int, dict[str, float]], None]  # (what, done, total, metrics)


def _quiet(what: str, done: int, total: int, metrics: dict[str, float]) -> None:
    pass


class Recipe:
    """One run of the recipe on ``cfg.run_dir``."""

    def __init__(self, cfg: RLCoConfig, progress: Progress | None = None):
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.progress = progress or _quiet
        self.state: dict[str, Any] = {}
        self._datasets: dict[str, Dataset] | None = None
        self._demos: tuple[Demos, Demos] | None = None

    # ------------------------------------------------------------ state

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def _config_json(self) -> dict[str, Any]:
        return json.loads(self.cfg.model_dump_json())

    def open(self, resume: bool, stage: str | None = None) -> None:
        """Start a new run or continue one; ConfigError (nothing written) when that is not what the dir holds."""
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
            old, new = self.state.get("config"), self._config_json()
            if old != new:
                diff = _first_difference(old, new)
                raise ConfigError(f"{self.dir} holds a run with another config ({diff}); use another run_dir")
            busy = [s for s in STAGES if (self.dir / "ckpt" / f"{s}.ckpt").exists()]
            if not resume and stage is None:
                raise ConfigError(f"{self.dir} already holds a run (done: {', '.join(self.state['done']) or 'nothing'}); "
                                  f"--resume continues it, or choose another run_dir")
            if not resume and stage in busy:
                raise ConfigError(f"stage {stage} of {self.dir} was interrupted; --resume continues it")
        elif resume:
            raise ConfigError(f"--resume: {self.dir} holds no run to continue (no state.json)")
        else:
            self.state = {"config": self._config_json(), "done": [], "datasets": {}}
            self.dir.mkdir(parents=True, exist_ok=True)
            self._save_state()

    def _save_state(self) -> None:
        atomic_write(self.state_path, json.dumps(self.state, indent=1).encode())

    def event(self, **fields: Any) -> None:
        with open(self.dir / "events.jsonl", "a") as f:
            f.write(json.dumps({"t": round(time.time(), 3), **fields}) + "\n")

    def done(self, name: str) -> bool:
        return name in self.state["done"]

    def _finish(self, name: str) -> None:
        self.state["done"].append(name)
        self._save_state()
        (self.dir / "ckpt" / f"{name}.ckpt").unlink(missing_ok=True)
        self.event(event="stage_done", stage=name)
        crash_point("rlco_stage_done")

    # ------------------------------------------------------------ the recipe

    def run(self, stage: str | None = None, resume: bool = False) -> dict[str, Any]:
        """The whole recipe (or one stage); the summary of what has been evaluated so far."""
        if stage is not None and stage not in STAGES:
            raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if stage == "rl":
            self._check_rl()
        self.open(resume, stage)
        torch.set_num_threads(self.cfg.threads)
        if stage in (None, "sft"):
            self.stage_sft()
        if stage == "rl" or stage is None and self.cfg.sft.policy == "gaussian":
            self.stage_rl()
        if stage in (None, "eval"):
            self.stage_eval()
        return self.summary()

    def datasets(self) -> dict[str, Dataset]:
        """D_sim and D_real by name (made or reused; their versions are noted in the state)."""
        if self._datasets is None:
            got = {}
            for name, ds, made in data.datasets(self.cfg, self.progress):
                if self.state["datasets"].get(name) != str(ds.path):
                    self.state["datasets"][name] = str(ds.path)
                    self._save_state()
                self.event(event="dataset", name=name, path=str(ds.path), rows=ds.manifest["rows"],
                           episodes=ds.manifest["episodes"], made=made, seconds=ds.manifest.get("seconds"))
                got[name] = ds
            self._datasets = got
        return self._datasets

    def demos(self) -> tuple[Demos, Demos]:
        """D_sim and D_real as rows (the Gaussian actor's SFT)."""
        if self._demos is None:
            d = self.datasets()
            self._demos = (d["sim"].demos(data.obs_fields()), d["real"].demos(data.obs_fields()))
        return self._demos

    def training_sets(self) -> tuple[Sampler, Sampler]:
        """D_sim and D_real as Stage I's policy trains on them: rows, or action chunks for a flow head; with
        each row's (each chunk's first step's) frames for a camera policy."""
        sft, names = self.cfg.sft, [c.name for c in self.cfg.cameras]
        if sft.policy == "cnn_flow":
            from .images import image_chunks

            d = self.datasets()
            return (image_chunks(d["sim"].table(), data.obs_fields(), sft.flow_horizon, names),
                    image_chunks(d["real"].table(), data.obs_fields(), sft.flow_horizon, names))
        if sft.policy == "cnn":
            from .images import image_demos

            d = self.datasets()
            sim, real = self.demos()
            return image_demos(d["sim"].table(), sim, names), image_demos(d["real"].table(), real, names)
        if sft.policy != "flow":
            return self.demos()
        d = self.datasets()
        return (d["sim"].chunks(data.obs_fields(), sft.flow_horizon),
                d["real"].chunks(data.obs_fields(), sft.flow_horizon))

    def stage_sft(self) -> None:
        if self.done("sft"):
            return
        cfg = self.cfg
        sim, real = self.training_sets()
        ckpt = self.dir / "ckpt" / "sft.ckpt"
        ckpt.parent.mkdir(exist_ok=True)
        from .images import views
        from .sft import fit_normalizer

        trainer = make_trainer(sim.obs.shape[1], sim.act_dim, cfg.sft, fit_normalizer(sim, real), cfg.seed,
                               views=views(sim))
        if ckpt.exists():
            trainer.load_state_dict(checkpoint.load(ckpt))
        self.event(event="stage_start", stage="sft", start=trainer.updates, total=cfg.sft.updates)
        metrics: dict[str, float] = {}
        while trainer.updates < cfg.sft.updates:
            metrics = trainer.step(cfg.sft.alpha, sim, real)
            if trainer.updates % cfg.sft.checkpoint_every == 0 and trainer.updates < cfg.sft.updates:
                checkpoint.save(ckpt, trainer.state_dict())
                self.event(event="checkpoint", stage="sft", at=trainer.updates)
                crash_point("rlco_sft_checkpoint")
            if trainer.updates % 50 == 0 or trainer.updates == cfg.sft.updates:
                self.progress("Stage I: SFT", trainer.updates, cfg.sft.updates, metrics)
        self._write_stage("sft", trainer.actor.state_dict(), trainer.actor.arch(), trainer.norm, metrics)
        self._finish("sft")

    def _write_stage(self, name: str, actor: dict[str, torch.Tensor], arch: dict[str, Any], norm: ObsNormalizer,
                     metrics: dict[str, float]) -> None:
        out = self.dir / "stages" / name
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.save(out / "actor.ckpt", {"actor": actor, "arch": arch, "norm": norm.state_dict()})
        # cnn_gaussian and cnn_flow: only the state columns of the first layer that reads the state (the trunk's,
        # the flow head's encoder's), which reads [image features, state]
        folded = norm.fold(actor, int(arch.get("latent", 0)) * len(actor_images(arch)))
        blob = encode_weights(folded, WEIGHTS_VERSION[name], {"actor": arch, "obs_fields": list(data.obs_fields())})
        atomic_write(out / "policy.safetensors", blob.data)
        atomic_write(out / "train.json", json.dumps(metrics).encode())

    def stage_output(self, name: str) -> dict[str, Any]:
        path = self.dir / "stages" / name / "actor.ckpt"
        if not self.done(name) or not path.exists():
            raise ConfigError(f"stage {name} has not finished in {self.dir}; run --stage {name} first")
        out: dict[str, Any] = checkpoint.load(path)
        return out

    def blob(self, name: str) -> WeightsBlob:
        from shared.weights import sha256

        data_ = (self.dir / "stages" / name / "policy.safetensors").read_bytes()
        return WeightsBlob(WEIGHTS_VERSION[name], sha256(data_), data_)

    def _check_rl(self) -> None:
        policy = self.cfg.sft.policy
        if policy == "gaussian":
            return
        missing = [w for w, kinds in (("RL over rendered frames", PIXEL_POLICIES), ("flow-policy RL", FLOW_POLICIES))
                   if policy in kinds]
        raise ConfigError(f"sft.policy = \"{policy}\": Stage II (rl.algorithm ppo or sac) trains the state Gaussian "
                          f"actor only; {' and '.join(missing)} {'are' if len(missing) > 1 else 'is'} not implemented "
                          f"(docs/rlco.md). A {policy} recipe is Stage I and its evaluation (--stage sft, "
                          "--stage eval, eval.after = [\"sft\"])")

    def stage_rl(self) -> None:
        self._check_rl()
        if self.done("rl"):
            return
        cfg, rl = self.cfg, self.cfg.rl
        start = self.stage_output("sft")
        _, real = self.demos()
        norm = ObsNormalizer.from_state(start["norm"])
        actor = build_gaussian(start["arch"])
        actor.load_state_dict(start["actor"])
        ckpt = self.dir / "ckpt" / "rl.ckpt"
        ckpt.parent.mkdir(exist_ok=True)
        if rl.algorithm == "sac":
            from .sac_rl import run_sac

            run_sac(self, actor, norm, real, ckpt)
            return
        if rl.init_log_std is not None:
            set_log_std(actor, rl.init_log_std)
        ppo = PPO(actor, norm.mean, norm.std, rl, cfg.sft.hidden, seed=cfg.seed)
        if ckpt.exists():
            ppo.load_state_dict(checkpoint.load(ckpt))
        self.event(event="stage_start", stage="rl", start=ppo.iterations, total=rl.iterations)
        envs = data.sim_envs(cfg, first_seed=cfg.seed * 100_003 + ppo.iterations * rl.envs)
        metrics: dict[str, float] = {}
        t0, steps = time.monotonic(), 0
        try:
            while ppo.iterations < rl.iterations:
                ro = ppo.collect(envs, rl.steps)
                metrics = ppo.update(ro, real if rl.beta > 0 else None)
                steps += ro.reward.size
                metrics.update({"sim_success": ro.successes / max(1, ro.episodes), "reward": float(ro.reward.mean()),
                                "env_steps_per_s": steps / (time.monotonic() - t0)})
                if ppo.iterations % rl.checkpoint_every == 0 and ppo.iterations < rl.iterations:
                    checkpoint.save(ckpt, ppo.state_dict())
                    self.event(event="checkpoint", stage="rl", at=ppo.iterations)
                    crash_point("rlco_rl_checkpoint")
                self.progress("Stage II: RL", ppo.iterations, rl.iterations, metrics)
        finally:
            envs.close()
        self._write_stage("rl", actor.state_dict(), actor.arch(), norm, metrics)
        self._finish("rl")

    def stage_eval(self) -> None:
        cfg = self.cfg
        for name in cfg.eval.after:
            key = f"eval_{name}"
            if self.done(key):
                continue
            if not self.done(name):
                self.event(event="eval_skipped", stage=name, why="stage not finished")
                continue
            blob = self.blob(name)
            dyn = cfg.real.model_dump(mode="json")
            self.event(event="stage_start", stage=key, via=cfg.eval.via)
            self.progress(f"Eval after {name}", 0, cfg.eval.episodes, {})
            if cfg.eval.via == "real_path":
                res = evaluate.real_path(blob, cfg.eval, cfg.task, dyn, self.dir / "eval" / name,
                                         extra=cfg.robot_extra())
            else:
                what = f"Eval after {name}"

                def tick(d: int, n: int, what: str = what) -> None:
                    self.progress(what, d, n, {})

                res = evaluate.in_process(blob, cfg.eval, cfg.task, dyn, tick, extra=cfg.robot_extra())
            self.progress(f"Eval after {name}", cfg.eval.episodes, cfg.eval.episodes, {"real_success": res.success})
            atomic_write(self.dir / "stages" / name / "eval.json", json.dumps(res.to_dict()).encode())
            self._finish(key)

    def summary(self) -> dict[str, Any]:
        rows = []
        for name in ("sft", "rl"):
            path = self.dir / "stages" / name / "eval.json"
            train = self.dir / "stages" / name / "train.json"
            row: dict[str, Any] = {"stage": name, "done": self.done(name)}
            if path.exists():
                row.update(json.loads(path.read_text()))
            if train.exists():
                row["train"] = json.loads(train.read_text())
            rows.append(row)
        out = {"run_dir": str(self.dir), "done": self.state["done"], "datasets": self.state["datasets"], "stages": rows}
        atomic_write(self.dir / "summary.json", json.dumps(out, indent=1).encode())
        return out


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return f"{path or '(top level)'}: {a!r} there, {b!r} here"
