"""Fine-tuning a pretrained policy: ``learner.init_policy`` and ``learner.finetune = "full" | "lora"``.

A policy pretrained on one demonstrator's stored demos is fine-tuned through
LoRA adapters (peft) on another's: the loss falls, the base weights do not
move, the published blob is a plain policy a robot loads and acts like the
adapted model, and a checkpoint resumes exactly. Bad pretrained files and
settings LoRA cannot run with are refused, naming the key.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cloud.buffer import ReplayBuffer
from cloud.buffer.demos import MixedSource
from cloud.learner import algorithms, checkpoint, finetune
from cloud.learner.bc import BC, bc_loss
from cloud.learner.flow_sft import CHUNK, CHUNK_VALID, FlowSFT
from cloud.learner.lora import LoRA, lora_layers
from cloud.learner.normalize import ObsNormalizer
from cloud.learner.sac import SAC, SACConfig
from cloud.learner.trainer import Trainer
from harness import worker_idle
from shared.chunk import StepRecord, build_batch
from shared.config import LearnerAlgoConfig, LearnerConfig, validate
from shared.errors import ConfigError
from shared.observations import state_sizes
from shared.policy import FlowActor, GaussianActor
from shared.policy_runner import load_policy
from shared.schema import EpisodeSpec, FieldSpec
from shared.weights import WeightsBlob, decode_weights, encode_weights

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),  # peft is imported by the first test that wraps
              pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="the lora extra (the test extra has it)")]

SPEC = EpisodeSpec(observation={"pos": FieldSpec((3,)), "goal": FieldSpec((3,))}, action_dim=2,
                   action_low=(-2.0, -2.0), action_high=(2.0, 2.0))
STEPS, HORIZON, HIDDEN = 12, 4, [64, 64]
CPU = torch.device("cpu")
# Two demonstrators: the policy is pretrained on A's demos and fine-tuned on B's.
PROJ_A = np.random.default_rng(42).normal(size=(6, 2)).astype(np.float32) * 0.5
PROJ_B = np.random.default_rng(43).normal(size=(6, 2)).astype(np.float32) * 0.5


def _write(buf: ReplayBuffer, proj: np.ndarray, episodes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for s in range(1, episodes + 1):
        steps = []
        for i in range(STEPS):
            obs = {"pos": rng.normal(size=3).astype(np.float32) * 2 + 1, "goal": rng.normal(size=3).astype(np.float32)}
            action = (np.tanh(np.concatenate([obs["pos"], obs["goal"]]) @ proj) * 1.6).astype(np.float32)
            steps.append(StepRecord(obs, action, 0.0, obs, False, i == STEPS - 1, step=i, demo=True))
        buf.write([("arm", s, build_batch(SPEC, "arm", f"arm-{s}", steps))])


def _demos(root: Path, proj: np.ndarray, seed: int, episodes: int = 16) -> ReplayBuffer:
    buf = ReplayBuffer(root, memory_capacity=10_000, demo_capacity=10_000, chunk_horizon=HORIZON)
    buf.check_spec(SPEC)
    _write(buf, proj, episodes, seed)
    return buf


def _batch(buf: ReplayBuffer, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in buf.sample(n, rng, demo_fraction=1.0).items()}


def _cfg(kind: str, **over: Any) -> LearnerAlgoConfig:
    base: dict[str, Any] = {"algorithm": "bc", "policy": kind, "flow_horizon": HORIZON, "flow_steps": 6,
                            "hidden": HIDDEN, "lr": 3e-3, "batch_size": 64, "device": "cpu", "threads": 1}
    return LearnerAlgoConfig(**{**base, **over})


def _build(cfg: LearnerAlgoConfig, buf: ReplayBuffer, norm: ObsNormalizer | None = None) -> algorithms.Algorithm:
    """The learner the trainer builds for ``cfg`` (init_policy and adapters included)."""
    dims = buf.dims
    assert dims is not None
    algo = algorithms.build(cfg, dims, SACConfig(hidden=tuple(cfg.hidden), lr=cfg.lr), CPU)
    return finetune.prepare(algo, cfg, list(dims.obs_fields), norm)


def _pretrained(tmp_path: Path, kind: str, updates: int = 150) -> tuple[Path, ReplayBuffer]:
    """A policy trained on demonstrator A's stored demos, written as the weights file a robot loads."""
    buf = _demos(tmp_path / f"pretrain-{kind}", PROJ_A, seed=1)
    algo = _build(_cfg(kind), buf)
    rng = np.random.default_rng(0)
    for _ in range(updates):
        algo.update(_batch(buf, 64, rng))
    path = tmp_path / f"{kind}.safetensors"
    assert buf.dims is not None
    blob = encode_weights(algo.actor_state(), 7, {"actor": algo.actor.arch(), "obs_fields": list(buf.dims.obs_fields)})
    path.write_bytes(blob.data)
    return path, buf


def _eval_loss(algo: algorithms.Algorithm, batch: dict[str, torch.Tensor]) -> float:
    """The SFT loss on a fixed held-out batch (the flow's noise from a fixed generator): comparable across calls."""
    actor = algo.actor
    with torch.no_grad():
        if isinstance(actor, FlowActor):
            return float(actor.loss(batch["obs"], batch[CHUNK], torch.Generator().manual_seed(7), batch[CHUNK_VALID]))
        assert isinstance(actor, GaussianActor)
        return float(bc_loss(actor, batch, CPU))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _robot_policy(blob_tensors: dict[str, torch.Tensor], algo: algorithms.Algorithm, fields: list[str]) -> Any:
    blob = encode_weights(blob_tensors, 1, {"actor": algo.actor.arch(), "obs_fields": fields})
    return load_policy(decode_weights(blob.data, blob.sha256, len(blob.data)), state_sizes(SPEC), 2, 10**7)


def _observations(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"pos": rng.normal(size=3).astype(np.float32) * 2 + 1, "goal": rng.normal(size=3).astype(np.float32)}
            for _ in range(n)]


@pytest.mark.parametrize("kind", ["flow", "mlp_gaussian"])
def test_lora_sft_of_a_pretrained_policy_learns_the_new_demos_and_publishes_a_plain_policy(tmp_path: Path,
                                                                                          kind: str) -> None:
    path, _ = _pretrained(tmp_path, kind)
    new = _demos(tmp_path / "new", PROJ_B, seed=2)
    assert new.dims is not None
    fields = list(new.dims.obs_fields)
    algo = _build(_cfg(kind, init_policy=path, finetune="lora", lora_rank=4, lora_alpha=8), new)
    assert isinstance(algo, LoRA)
    pretrained = decode_weights(path.read_bytes(), None, 1 << 30).tensors
    start = algo.actor_state()  # B = 0: the wrapped actor is the pretrained policy, to the bit
    assert set(start) == set(pretrained) and all(torch.equal(start[k], pretrained[k]) for k in start)
    before = _snapshot(algo.actor)
    held_out = _batch(new, 1024, np.random.default_rng(99))
    loss0 = _eval_loss(algo, held_out)

    rng = np.random.default_rng(5)
    for _ in range(300):
        algo.update(_batch(new, 64, rng))
    loss1 = _eval_loss(algo, held_out)
    assert loss0 - loss1 > 0.3 * abs(loss0), (loss0, loss1)  # the Gaussian's NLL may end below zero

    after = _snapshot(algo.actor)
    base = [k for k in after if ".base_layer." in k]
    assert len(base) == 2 * len(lora_layers(algo.actor)) and len(base) == len(pretrained)
    assert all(torch.equal(after[k], before[k]) for k in base)  # frozen: bit-identical
    assert all(not torch.equal(after[k], before[k]) for k in after if ".lora_B." in k)  # every adapter moved
    trainable = {id(p) for p in algo.actor.parameters() if p.requires_grad}
    assert trainable == {id(p) for n, p in algo.actor.named_parameters() if ".lora_" in n}
    assert {id(p) for g in algo.inner.optim.param_groups for p in g["params"]} == trainable

    merged = algo.actor_state()
    assert all(torch.equal(v, after[k]) for k, v in _snapshot(algo.actor).items())  # merging left training alone
    assert set(merged) == set(pretrained) and not any(".lora_" in k or "base_layer" in k for k in merged)
    policy = _robot_policy(merged, algo, fields)  # what a robot runs: no peft, the plain arch
    assert type(policy.actor) is type(algo.actor)  # peft wrapped the layers in place, not the actor class
    assert not lora_layers(policy.actor)
    obs = _observations(64, 123)
    x = torch.from_numpy(np.stack([np.concatenate([o[f] for f in fields]) for o in obs]))
    got = policy.act_chunk_batch(obs, deterministic=True)
    actor = algo.actor
    want = actor.sample(x, deterministic=True) if isinstance(actor, FlowActor) else actor.act(x, True)[:, None]
    np.testing.assert_allclose(got, want.numpy(), atol=2e-5)
    assert not np.allclose(got, _robot_policy(pretrained, algo, fields).act_chunk_batch(obs, deterministic=True),
                           atol=1e-3)  # and it is not the pretrained policy any more


@pytest.mark.parametrize("kind", ["flow", "mlp_gaussian"])
def test_a_lora_checkpoint_resumes_exactly_and_only_with_the_same_adapters(tmp_path: Path, kind: str) -> None:
    path, _ = _pretrained(tmp_path, kind, updates=20)
    new = _demos(tmp_path / "new", PROJ_B, seed=2, episodes=4)
    cfg = _cfg(kind, init_policy=path, finetune="lora", lora_rank=4, lora_alpha=8)
    rng = np.random.default_rng(3)
    batches = [_batch(new, 32, rng) for _ in range(12)]
    first = _build(cfg, new)
    for b in batches[:5]:
        first.update(b)
    checkpoint.save(tmp_path / "ckpt", {"sac": first.state_dict()})
    losses = [first.update(b) for b in batches[5:]]

    again = _build(cfg, new)
    again.load_state_dict(checkpoint.load(tmp_path / "ckpt")["sac"])
    assert again.updates == 5
    assert [again.update(b) for b in batches[5:]] == losses
    ours, theirs = _snapshot(first.actor), _snapshot(again.actor)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert isinstance(first, LoRA) and isinstance(again, LoRA)
    assert str(first.inner.optim.state_dict()) == str(again.inner.optim.state_dict())

    state = checkpoint.load(tmp_path / "ckpt")["sac"]
    with pytest.raises(ValueError, match="lora_rank"):
        _build(cfg.model_copy(update={"lora_rank": 2}), new).load_state_dict(state)
    with pytest.raises(ValueError, match='finetune = "full"'):
        _build(cfg.model_copy(update={"finetune": "full"}), new).load_state_dict(state)
    full = _build(cfg.model_copy(update={"finetune": "full"}), new)
    with pytest.raises(ValueError, match="this run trains adapters"):
        again.load_state_dict(full.state_dict())


def test_lora_targets_pick_layers_and_the_rest_stays_frozen(tmp_path: Path) -> None:
    path, _ = _pretrained(tmp_path, "flow", updates=5)
    new = _demos(tmp_path / "new", PROJ_B, seed=2, episodes=4)
    algo = _build(_cfg("flow", init_policy=path, finetune="lora", lora_targets=["velocity", "head"]), new)
    assert sorted(lora_layers(algo.actor)) == ["head", "velocity.0", "velocity.2"]
    before = _snapshot(algo.actor)
    rng = np.random.default_rng(0)
    for _ in range(5):
        algo.update(_batch(new, 32, rng))
    after = _snapshot(algo.actor)
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("encoder."))
    with pytest.raises(ConfigError, match=r"learner.lora_targets names \['critic'\]"):
        finetune.check_files(_cfg("flow", init_policy=path, finetune="lora", lora_targets=["critic"]))


def test_a_published_policy_becomes_the_lora_base_with_adapters_reset(tmp_path: Path) -> None:
    """A restart without a checkpoint continues from the newest published policy (the trainer's rule): with
    LoRA its merged weights become the frozen base and the adapters start again from zero."""
    path, _ = _pretrained(tmp_path, "flow", updates=5)
    new = _demos(tmp_path / "new", PROJ_B, seed=2, episodes=4)
    algo = _build(_cfg("flow", init_policy=path, finetune="lora"), new)
    rng = np.random.default_rng(0)
    for _ in range(10):
        algo.update(_batch(new, 32, rng))
    published = algo.actor_state()  # v1, from adapters that have moved
    for _ in range(10):
        algo.update(_batch(new, 32, rng))
    assert any(not torch.equal(algo.actor_state()[k], published[k]) for k in published)
    finetune.load_actor(algo, published)
    state = algo.actor_state()
    assert all(torch.equal(state[k], published[k]) for k in published)
    assert all(not v.any() for k, v in algo.actor.state_dict().items() if ".lora_B." in k)


def test_init_policy_under_normalised_inputs_starts_from_the_same_function(tmp_path: Path) -> None:
    path, _ = _pretrained(tmp_path, "flow", updates=30)
    new = _demos(tmp_path / "new", PROJ_B, seed=2, episodes=4)
    norm = ObsNormalizer.fit(MixedSource(new, 1.0), seed=0)
    assert float(norm.std.min()) > 0.5 and float(norm.mean.abs().max()) > 0.5  # a real rescaling
    algo = _build(_cfg("flow", init_policy=path, finetune="lora"), new, norm)
    assert new.dims is not None
    pretrained = _robot_policy(decode_weights(path.read_bytes(), None, 1 << 30).tensors, algo,
                               list(new.dims.obs_fields))
    raw = torch.from_numpy(_batch(new, 64, np.random.default_rng(1))["obs"].numpy())
    want = pretrained.actor.sample(raw, deterministic=True)
    got = algo.actor.sample(norm({"obs": raw, "next_obs": raw})["obs"], deterministic=True)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4)
    published = norm.fold(algo.actor_state())  # what the trainer publishes: the first layer folds back
    for k, v in decode_weights(path.read_bytes(), None, 1 << 30).tensors.items():
        np.testing.assert_allclose(published[k].numpy(), v.numpy(), atol=1e-4)


def test_sac_starts_from_init_policy_with_full_finetuning(tmp_path: Path) -> None:
    path, buf = _pretrained(tmp_path, "mlp_gaussian", updates=5)
    algo = _build(_cfg("mlp_gaussian", algorithm="sac", init_policy=path), buf)
    assert isinstance(algo, SAC)
    pretrained = decode_weights(path.read_bytes(), None, 1 << 30).tensors
    assert all(torch.equal(algo.actor_state()[k], pretrained[k]) for k in pretrained)


# ------------------------------------------------------------------------------ refusals


def _weights_file(path: Path, arch: dict[str, Any], fields: list[str]) -> Path:
    from shared.policy import build_actor

    actor = build_actor(arch)
    path.write_bytes(encode_weights(actor.state_dict(), 1, {"actor": arch, "obs_fields": fields}).data)
    return path


def test_a_pretrained_policy_that_does_not_fit_is_refused_naming_the_key(tmp_path: Path) -> None:
    buf = _demos(tmp_path / "demos", PROJ_B, seed=2, episodes=2)
    assert buf.dims is not None
    fields = list(buf.dims.obs_fields)
    flow = FlowActor(6, 2, HORIZON, HIDDEN, 6).arch()
    cases = {  # file -> what the message says, checked at start (config) or once the dims are known
        "missing": (tmp_path / "nope.safetensors", "no such file"),
        "garbage": (tmp_path / "garbage.safetensors", "not a policy weights file"),
        "kind": (_weights_file(tmp_path / "mlp.st", {"kind": "mlp_gaussian", "version": 1, "obs_dim": 6,
                                                     "act_dim": 2, "hidden": HIDDEN}, fields),
                 "kind: file 'mlp_gaussian', this run 'flow' (set by learner.policy)"),
        "hidden": (_weights_file(tmp_path / "wide.st", {**flow, "hidden": [32]}, fields),
                   "hidden: file [32], this run [64, 64] (set by learner.hidden)"),
        "horizon": (_weights_file(tmp_path / "h.st", {**flow, "horizon": 8}, fields), "learner.flow_horizon"),
        "obs_dim": (_weights_file(tmp_path / "obs.st", {**flow, "obs_dim": 5}, fields[:1]), "obs_dim: file 5"),
        "fields": (_weights_file(tmp_path / "fields.st", flow, fields[::-1]), "reads observation fields"),
    }
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b"x" * 30)
    for name, (path, says) in cases.items():
        cfg = _cfg("flow", init_policy=path)
        with pytest.raises(ConfigError) as e:
            finetune.check_files(cfg)
            _build(cfg, buf)  # dims and fields: once data has come
        assert f"learner.init_policy = {str(path)!r}" in str(e.value) and says in str(e.value), (name, str(e.value))


def test_a_trainer_with_a_bad_init_policy_refuses_to_start_and_writes_nothing(tmp_path: Path) -> None:
    buf = _demos(tmp_path / "demos", PROJ_B, seed=2, episodes=2)
    ckpt = tmp_path / "learner.ckpt"
    t = Trainer(buf, _cfg("flow", init_policy=tmp_path / "missing.safetensors"), lambda b: None, checkpoint_path=ckpt)
    with pytest.raises(ConfigError, match="learner.init_policy"):
        t.start()
    assert not t.is_alive() and not ckpt.exists()


def _learner_config(**learner: Any) -> LearnerConfig:
    return validate(LearnerConfig, {"learner": learner}, "run.toml")


def test_settings_lora_cannot_run_with_are_refused_by_the_config(tmp_path: Path) -> None:
    weights = str(tmp_path / "p.safetensors")
    ok = _learner_config(algorithm="bc", finetune="lora", init_policy=weights)
    assert ok.learner.finetune == "lora" and ok.learner.lora_rank == 8 and ok.learner.lora_targets is None
    for learner, says in [
        ({"algorithm": "sac", "finetune": "lora", "init_policy": weights}, 'algorithm = "sac" is not supported'),
        ({"algorithm": "rlpd", "finetune": "lora", "init_policy": weights}, 'algorithm = "rlpd" is not supported'),
        ({"algorithm": "bc", "finetune": "lora"}, "set init_policy"),
        ({"algorithm": "bc", "lora_targets": ["head"]}, 'finetune is "full"'),
        ({"algorithm": "bc", "finetune": "lora", "init_policy": weights, "lora_targets": []}, "lora_targets is empty"),
        ({"algorithm": "bc", "finetune": "lora", "init_policy": weights, "lora_rank": 0}, "lora_rank"),
        ({"algorithm": "bc", "finetune": "qlora"}, "finetune"),
    ]:
        with pytest.raises(ConfigError, match="run.toml: learner") as e:
            _learner_config(**learner)
        assert says in str(e.value), (learner, str(e.value))


def test_lora_without_peft_is_a_config_error_at_check_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloud.cli import app

    run = tmp_path / "run.toml"
    run.write_text('[learner]\nalgorithm = "bc"\nfinetune = "lora"\ninit_policy = "pre.safetensors"\n')
    assert CliRunner().invoke(app, ["check-config", str(run)]).exit_code == 0
    monkeypatch.setitem(sys.modules, "peft", None)  # as if it were not installed: import peft fails
    res = CliRunner().invoke(app, ["check-config", str(run)])
    assert res.exit_code == 2
    assert "finetune" in res.output and "pip install 'fleetrl[lora]'" in res.output, res.output
    run.write_text('[learner]\nalgorithm = "bc"\n')  # full fine-tuning needs no peft
    assert CliRunner().invoke(app, ["check-config", str(run)]).exit_code == 0


def test_lora_fetches_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """peft is handed a module, not a hub name: wrapping, training and merging open no connection."""
    path, _ = _pretrained(tmp_path, "flow", updates=2)
    new = _demos(tmp_path / "new", PROJ_B, seed=2, episodes=2)

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError(f"a network connection was attempted: {a[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    algo = _build(_cfg("flow", init_policy=path, finetune="lora"), new)
    algo.update(_batch(new, 32, np.random.default_rng(0)))
    assert algo.actor_state()


# ------------------------------------------------------------------------------ the live learner


def test_the_live_learner_fine_tunes_with_lora_and_robots_load_the_merged_policy(tmp_path: Path, trainers) -> None:
    path, _ = _pretrained(tmp_path, "flow", updates=100)
    buf = _demos(tmp_path / "buffer", PROJ_B, seed=2, episodes=16)  # 192 demo rows
    cfg = _cfg("flow", init_policy=path, finetune="lora", lora_rank=4, lora_alpha=8, normalize_observations=True,
               utd_ratio=1.0, publish_every=96, checkpoint_every=10**6, prefetch_batches=0)
    published: list[WeightsBlob] = []
    ckpt = tmp_path / "learner.ckpt"
    t = Trainer(buf, cfg, published.append, checkpoint_path=ckpt)
    trainers.append(t)
    t.start()
    worker_idle(t, 192)
    assert t.error is None and [b.version for b in published] == [1, 2]
    algo, norm = t._sac, t._norm
    assert isinstance(algo, LoRA) and norm is not None

    w = decode_weights(published[-1].data, published[-1].sha256, 1 << 30)
    assert w.arch["actor"] == algo.actor.arch() and not any("lora" in k or "base_layer" in k for k in w.tensors)
    policy = load_policy(w, state_sizes(SPEC), 2, max_params=10**7)  # raw observations, as a robot reads them
    assert buf.dims is not None
    fields = list(buf.dims.obs_fields)
    obs = _observations(32, 7)
    raw = torch.from_numpy(np.stack([np.concatenate([o[f] for f in fields]) for o in obs]))
    want = algo.actor.sample(norm({"obs": raw, "next_obs": raw})["obs"], deterministic=True)
    np.testing.assert_allclose(policy.act_chunk_batch(obs, deterministic=True), want.numpy(), atol=1e-4)

    pretrained = decode_weights(path.read_bytes(), None, 1 << 30).tensors
    state = algo.actor.state_dict()
    for k, v in pretrained.items():  # frozen: the pretrained weights (the first layer rewritten for normalised inputs)
        layer, _, leaf = k.rpartition(".")
        if layer != "encoder.0":
            assert torch.equal(state[f"{layer}.base_layer.{leaf}"], v), k

    t.stop()  # the final checkpoint: a restart continues from it
    t.join(10)
    again = Trainer(buf, cfg.model_copy(update={"utd_ratio": 1.5}), published.append, checkpoint_path=ckpt,
                    resume=True, start_version=published[-1].version)
    trainers.append(again)
    again.start()
    worker_idle(again, 288)
    assert again.resumed_from == 192 and isinstance(again._sac, LoRA)
    assert isinstance(again._sac.inner, FlowSFT) and not isinstance(again._sac.inner, BC)
