"""Stage I with the flow-matching head: the alpha weighting of the flow loss is exact, batches are action
chunks that never cross an episode's end, a flow policy is evaluated by playing its chunks as robots do,
and a flow config refuses Stage II."""

from pathlib import Path

import numpy as np
import pytest
import torch

from cloud.learner.normalize import ObsNormalizer
from cloud.rlco.config import RLCoConfig, SFTConfig
from cloud.rlco.losses import ChunkDemos, cotrain, mixed_batch
from cloud.rlco.sft import FlowSFTTrainer, make_trainer
from shared.errors import ConfigError

H = 3


def _trainer(seed: int = 0, **sft) -> FlowSFTTrainer:
    cfg = SFTConfig(policy="flow", flow_horizon=H, hidden=[4], **sft)
    t = make_trainer(2, 1, cfg, ObsNormalizer(torch.zeros(2), torch.ones(2)), seed)
    assert isinstance(t, FlowSFTTrainer)
    return t


def _zero_field(t: FlowSFTTrainer) -> FlowSFTTrainer:
    """The velocity field is 0 everywhere (its output layer zeroed): the loss is then mean((x1 - x0)^2)."""
    with torch.no_grad():
        t.flow.actor.head.weight.zero_()
        t.flow.actor.head.bias.zero_()
    return t


def _chunks(value: float, n: int, valid: list[int] | None = None) -> dict[str, torch.Tensor]:
    mask = torch.ones(n, H) if valid is None else torch.tensor([valid] * n, dtype=torch.float32)
    return {"obs": torch.zeros(n, 2), "action_chunk": torch.full((n, H, 1), value), "chunk_valid": mask}


def _by_hand(batch: dict[str, torch.Tensor], g: torch.Generator) -> float:
    """The flow-matching loss with a zero field, drawing noise and times as FlowActor.loss does."""
    x1 = batch["action_chunk"].numpy().astype(np.float64)
    x0 = torch.randn(batch["action_chunk"].shape, generator=g).numpy().astype(np.float64)
    torch.rand((x1.shape[0],), generator=g)  # the times: with a zero field the loss does not depend on them
    err = ((x1 - x0) ** 2).mean(-1)
    m = batch["chunk_valid"].numpy()
    return float((err * m).sum() / m.sum())


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_flow_cotrain_weighting_is_exact(alpha):
    t = _zero_field(_trainer())
    sim, real = _chunks(0.5, 8), _chunks(-0.25, 3, valid=[1, 1, 0])  # sizes differ; the real chunks are padded
    assert_weighting_is_exact(t, alpha, sim, real)


def assert_weighting_is_exact(t, alpha: float, sim: dict, real: dict) -> None:
    """``cotrain``'s total and parts against :func:`_by_hand` for a trainer whose velocity field is zero."""
    g = torch.Generator().manual_seed(0)
    g.set_state(t.flow.generator.get_state())
    l_sim = _by_hand(sim, g) if alpha > 0 else None
    l_real = _by_hand(real, g) if alpha < 1 else None
    total, parts = cotrain(t.loss, alpha, sim if alpha > 0 else None, real if alpha < 1 else None)
    want = (alpha * l_sim if l_sim is not None else 0.0) + ((1 - alpha) * l_real if l_real is not None else 0.0)
    assert total.item() == pytest.approx(want, rel=1e-5)
    assert parts == pytest.approx({k: v for k, v in (("sft_sim", l_sim), ("sft_real", l_real)) if v is not None},
                                  rel=1e-5)


def test_flow_cotrain_gradient_is_the_weighted_sum_of_gradients():
    torch.manual_seed(0)
    t = _trainer()
    sim = {"obs": torch.randn(16, 2), "action_chunk": torch.rand(16, H, 1) * 2 - 1, "chunk_valid": torch.ones(16, H)}
    real = {"obs": torch.randn(4, 2), "action_chunk": torch.rand(4, H, 1) * 2 - 1, "chunk_valid": torch.ones(4, H)}
    assert_gradient_is_the_weighted_sum(t, sim, real)


def assert_gradient_is_the_weighted_sum(t, sim: dict, real: dict) -> None:
    """The co-training loss's gradient (alpha 0.3) is 0.3 x sim's + 0.7 x real's, with the same noise."""
    params = list(t.actor.parameters())

    def grad(loss):
        t.actor.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in params])

    start = t.flow.generator.get_state()
    g = grad(cotrain(t.loss, 0.3, sim, real)[0])
    t.flow.generator.set_state(start)  # the same noise for the parts, drawn in the same order
    g_sim = grad(t.loss(sim))
    g_real = grad(t.loss(real))
    assert torch.allclose(g, 0.3 * g_sim + 0.7 * g_real, atol=1e-6)


def _episodes(n_eps: int, length: int, action: float, obs: float) -> ChunkDemos:
    from cloud.learner.chunks import build_chunks

    episode = np.repeat(np.arange(n_eps), length)
    step = np.tile(np.arange(length), n_eps)
    acts = (action + 0.01 * step).astype(np.float32)[:, None]
    c = build_chunks(np.full((len(step), 2), obs, np.float32), acts, episode, step, H)
    return ChunkDemos(c.obs, c.actions, c.valid)


def test_chunk_demos_batches_and_mixed_batches_keep_datasets_and_episodes_apart():
    sim, real = _episodes(4, 5, 0.5, 0.0), _episodes(2, 5, -0.5, 1.0)
    assert sim.act_dim == 1 and len(sim) == 20
    # a chunk never crosses an episode's end: the last step of each episode has 1 valid action of H
    assert sim.valid[4].tolist() == [True, False, False] and sim.valid[0].tolist() == [True] * H
    b = mixed_batch(sim, real, 10, 0.7, np.random.default_rng(0))
    assert b["action_chunk"].shape == (10, H, 1) and int(b["from_sim"].sum()) == 7
    assert torch.all(b["action_chunk"][b["from_sim"]] >= 0.5) and torch.all(b["action_chunk"][~b["from_sim"]] < 0)
    t = _trainer(weighting="batch", batch_size=8)
    out = t.step(0.5, sim, real)
    assert np.isfinite(out["loss"]) and t.updates == 1


def test_flow_trainer_resumes_exactly_from_its_checkpoint(tmp_path):
    sim, real = _episodes(4, 6, 0.5, 0.0), _episodes(2, 6, -0.5, 1.0)
    resume_matches_an_unbroken_run(lambda: _trainer(seed=3, batch_size=8), sim, real, 6, tmp_path)


def resume_matches_an_unbroken_run(make, sim, real, steps: int, tmp: Path) -> dict:
    """``steps`` updates in one go, and half of them, a checkpoint file, a fresh trainer and the rest, give
    bit-identical weights; the unbroken run's weights."""
    from cloud.learner import checkpoint

    whole, killed = make(), make()
    for _ in range(steps):
        whole.step(0.5, sim, real)
    for _ in range(steps // 2):
        killed.step(0.5, sim, real)
    checkpoint.save(tmp / "sft.ckpt", killed.state_dict())
    resumed = make()
    resumed.load_state_dict(checkpoint.load(tmp / "sft.ckpt"))
    for _ in range(steps - steps // 2):
        resumed.step(0.5, sim, real)
    a, b = whole.actor.state_dict(), resumed.actor.state_dict()
    assert resumed.updates == steps and all(torch.equal(a[k], b[k]) for k in a)
    return a


def test_a_flow_config_refuses_stage_two(tmp_path):
    with pytest.raises(ValueError, match=r"sft.policy = \"flow\".*eval.after"):
        RLCoConfig.model_validate({"sft": {"policy": "flow"}})
    with pytest.raises(ValueError, match=r"eval.chunk_overlap \(4\) must be smaller than sft.flow_horizon \(4\)"):
        RLCoConfig.model_validate({"sft": {"policy": "flow"}, "eval": {"after": ["sft"], "chunk_overlap": 4}})
    from cloud.rlco.stages import Recipe

    cfg = RLCoConfig.model_validate({"run_dir": str(tmp_path / "run"), "sft": {"policy": "flow"},
                                     "eval": {"after": ["sft"]}})
    with pytest.raises(ConfigError, match=r"sft.policy = \"flow\": Stage II"):
        Recipe(cfg).run(stage="rl")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_in_process_evaluation_plays_flow_chunks_as_robots_do():
    """horizon 4, overlap 2, no blending: each chunk's first 2 actions run, then the policy replans."""
    from cloud.rlco.config import EvalConfig
    from cloud.rlco.evaluate import Acting
    from shared.policy import FlowActor
    from shared.policy_runner import LoadedPolicy

    torch.manual_seed(0)
    policy = LoadedPolicy(1, FlowActor(2, 1, horizon=4, hidden=[8], steps=3).eval(), ("x",))
    act = Acting(policy, EvalConfig(chunk_overlap=2, chunk_blend_steps=0), action_dim=1)
    obs = [{"x": np.array([np.sin(i), np.cos(3 * i)], np.float32)} for i in range(8)]
    got = [act(o, tick) for tick, o in enumerate(obs)]
    plans = {t: policy.act_chunk_batch([obs[t]], deterministic=True)[0] for t in (0, 2, 4, 6)}
    want = [plans[t - t % 2][t % 2] for t in range(8)]
    assert np.allclose(np.stack(got), np.stack(want), atol=1e-6)
    assert act.executor is not None and act.executor.counters.requests == 4
    # a Gaussian actor acts with its mean action every tick, no executor
    from shared.policy import build_gaussian
    from shared.policy.mlp import arch as actor_arch

    g = LoadedPolicy(1, build_gaussian(actor_arch(2, 1, [8])).eval(), ("x",))
    assert Acting(g, EvalConfig(), action_dim=1).executor is None
