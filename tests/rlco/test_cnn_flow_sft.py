"""Stage I with the flow head over cameras (sft.policy = "cnn_flow"): the alpha weighting of its flow loss is
exact, the loss trains the conv encoder, each chunk carries the frames of its first observation as the robot
rendered them, a killed run resumes to the same weights, the published policy folds the normaliser in front
of the camera features, the config refuses what cannot run, and a tiny recipe trains, publishes and is
evaluated in process through the robots' chunk executor."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from cloud.learner.flow_sft import FlowSFT
from cloud.learner.normalize import ObsNormalizer
from cloud.rlco.config import RLCoConfig, SFTConfig
from cloud.rlco.datasets import episode_rows, expert_episodes, open_version, to_table, write_version
from cloud.rlco.images import IMAGE_KEY, ImageChunkDemos, image_chunks, views
from cloud.rlco.losses import mixed_batch
from cloud.rlco.sft import FlowSFTTrainer, make_trainer
from shared.errors import ConfigError
from shared.policy import CNNFlowActor

from .test_flow_sft import assert_gradient_is_the_weighted_sum, assert_weighting_is_exact, resume_matches_an_unbroken_run

H = 3
VIEWS = [("left", (16, 16, 3)), ("right", (16, 20, 3))]
CAMERA = {"name": "overhead", "view": "external_camera_0", "size": 16}


def _trainer(seed: int = 0, **sft) -> FlowSFTTrainer:
    cfg = SFTConfig(policy="cnn_flow", flow_horizon=H, hidden=[6], cnn_channels=[3, 3], cnn_latent=4, **sft)
    t = make_trainer(2, 1, cfg, ObsNormalizer(torch.zeros(2), torch.ones(2)), seed, views=VIEWS)
    assert isinstance(t, FlowSFTTrainer) and isinstance(t.flow.actor, CNNFlowActor)
    return t


def _batch(n: int, seed: int, value: float | None = None, valid: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Chunks with frames: random, or every action ``value``; ``valid``: one mask for every pair."""
    g = torch.Generator().manual_seed(seed)
    chunk = torch.rand(n, H, 1, generator=g) * 2 - 1 if value is None else torch.full((n, H, 1), value)
    mask = torch.ones(n, H) if valid is None else torch.tensor([valid] * n, dtype=torch.float32)
    out = {"obs": torch.randn(n, 2, generator=g), "action_chunk": chunk, "chunk_valid": mask}
    for name, hwc in VIEWS:
        out[IMAGE_KEY + name] = torch.randint(0, 256, (n, *hwc), generator=g, dtype=torch.uint8)
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_cnn_flow_cotrain_weighting_is_exact(alpha):
    t = _trainer()
    with torch.no_grad():
        t.flow.actor.head.weight.zero_()
        t.flow.actor.head.bias.zero_()
    sim, real = _batch(8, 1, 0.5), _batch(3, 2, -0.25, valid=[1, 1, 0])  # sizes differ; real is padded
    assert_weighting_is_exact(t, alpha, sim, real)  # frames change nothing through a zero field


def test_cnn_flow_gradient_is_the_weighted_sum_and_reaches_the_encoder():
    t = _trainer()
    sim, real = _batch(8, 3), _batch(4, 4)
    start = t.flow.generator.get_state()
    assert_gradient_is_the_weighted_sum(t, sim, real)
    t.actor.zero_grad()
    t.loss(sim).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in t.flow.actor.cameras.parameters())
    # the frames matter: other frames, same noise, another loss
    t.flow.generator.set_state(start)
    a = t.loss(sim).item()
    t.flow.generator.set_state(start)
    assert t.loss({**sim, IMAGE_KEY + "left": 255 - sim[IMAGE_KEY + "left"]}).item() != a
    with pytest.raises(ValueError, match=r"reads cameras \['left', 'right'\]: the batch has no \['images.right'\]"):
        t.loss({k: v for k, v in sim.items() if k != IMAGE_KEY + "right"})


def test_flow_sft_without_views_is_the_state_head_the_live_learner_trains():
    sft = FlowSFT(2, 1, horizon=H, hidden=(4,))
    assert type(sft.actor).__name__ == "FlowActor" and sft.image_fields == ()
    b = _batch(4, 5)
    assert torch.isfinite(sft.loss({k: b[k] for k in ("obs", "action_chunk", "chunk_valid")}))


def _render(episodes: int, steps: int) -> tuple[pa.Table, list[list]]:
    from hal_drivers.mujoco_fetch import FetchRobot
    from hal_drivers.mujoco_fetch.config import FetchConfig
    from hal_drivers.teleop.scripted import reach_action

    robot = FetchRobot(FetchConfig(task="reach", seed=3, max_episode_steps=steps, camera_antialias=False,
                                   cameras=[CAMERA]))
    try:
        spec = robot.describe().episode_spec()
        eps = [s for s, _ in expert_episodes(robot, reach_action, episodes, 0.1, np.random.default_rng(0))]
    finally:
        robot.close()
    return to_table(spec, [episode_rows(spec, "sim", f"e{i}", s) for i, s in enumerate(eps)]), eps


def test_chunks_carry_the_frame_of_their_first_observation_as_rendered(tmp_path):
    table, eps = _render(2, 5)
    shuffled = table.take(pa.array(np.random.default_rng(1).permutation(table.num_rows)))  # any stored order
    ds = open_version(write_version(tmp_path / "d_sim-x", "d_sim", {}, shuffled, {}).path)
    fields = ("observation", "desired_goal")
    got = image_chunks(ds.table(), fields, H, ["overhead"])
    assert isinstance(got, ImageChunkDemos) and views(got) == [("overhead", (16, 16, 3))]
    seen = [(np.concatenate([obs["observation"], obs["desired_goal"]]), obs["overhead"], [s[1] for s in steps[i:]])
            for steps in eps for i, (obs, *_) in enumerate(steps)]
    assert len(got) == 10 and len({f.tobytes() for _, f, _ in seen}) > 1  # rendered, frames differ
    for k in range(len(got)):  # pair k: its observation, that observation's frame, the actions from it on
        obs, frame, actions = next(s for s in seen if np.array_equal(s[0], got.obs[k]))
        assert np.array_equal(got.images["overhead"][k], frame)
        n = min(H, len(actions))
        assert np.array_equal(got.actions[k, :n], np.stack(actions[:n])) and got.valid[k].sum() == n
    # batches (and mixed batches) keep each pair's frame with its pair
    b = got.sample(32, np.random.default_rng(2))
    for o, f in zip(b["obs"].numpy(), b[IMAGE_KEY + "overhead"].numpy()):
        assert np.array_equal(f, next(s[1] for s in seen if np.array_equal(s[0], o)))
    m = mixed_batch(got, got, 10, 0.3, np.random.default_rng(3))
    assert m[IMAGE_KEY + "overhead"].shape == (10, 16, 16, 3) and m["action_chunk"].shape == (10, H, 4)
    with pytest.raises(ValueError, match="no frames of camera 'side'"):
        image_chunks(ds.table(), fields, H, ["side"])
    with pytest.raises(ValueError, match="camera 'overhead': frames must be uint8"):
        ImageChunkDemos(got.obs, got.actions, got.valid, {"overhead": got.images["overhead"][:3]})


def _demos(n: int, seed: int) -> ImageChunkDemos:
    b = _batch(n, seed)
    return ImageChunkDemos(b["obs"].numpy(), b["action_chunk"].numpy(), b["chunk_valid"].numpy() > 0,
                           {name: b[IMAGE_KEY + name].numpy() for name, _ in VIEWS})


def test_cnn_flow_trainer_resumes_exactly_from_its_checkpoint(tmp_path):
    sim, real = _demos(12, 6), _demos(5, 7)
    a = resume_matches_an_unbroken_run(lambda: _trainer(seed=3, batch_size=8), sim, real, 4, tmp_path)
    conv = "cameras.stacks.0.convs.0.weight"
    assert not torch.equal(a[conv], _trainer(seed=3).actor.state_dict()[conv])  # the encoder trained


def test_published_weights_fold_the_state_normalisation_behind_the_camera_features():
    t = _trainer()
    actor = t.flow.actor
    norm = ObsNormalizer(torch.tensor([3.0, -1.0]), torch.tensor([2.0, 0.5]))
    raw = torch.randn(4, 2) * 3
    images = {name: _batch(4, 5)[IMAGE_KEY + name] for name, _ in VIEWS}
    want = actor.sample((raw - norm.mean) / norm.std, deterministic=True, images=images)
    folded = _trainer(seed=1).flow.actor  # another init, given the folded tensors
    state = norm.fold(actor.state_dict(), actor.cameras.feature_dim)
    assert torch.equal(state["encoder.0.weight"][:, :8], actor.state_dict()["encoder.0.weight"][:, :8])
    folded.load_state_dict(state)
    assert torch.allclose(folded.sample(raw, deterministic=True, images=images), want, atol=1e-5)


def test_cnn_flow_config_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"sft.policy = \"cnn_flow\" needs cameras"):
        RLCoConfig.model_validate({"sft": {"policy": "cnn_flow"}, "eval": {"after": ["sft"]}})
    with pytest.raises(ValueError, match=r"sft.policy = \"cnn_flow\" with eval.after naming rl"):
        RLCoConfig.model_validate({"sft": {"policy": "cnn_flow"}, "cameras": [CAMERA]})
    with pytest.raises(ValueError, match=r"eval.chunk_overlap \(2\) must be smaller than sft.flow_horizon \(2\)"):
        RLCoConfig.model_validate({"sft": {"policy": "cnn_flow", "flow_horizon": 2}, "cameras": [CAMERA],
                                   "eval": {"after": ["sft"]}})
    with pytest.raises(ValueError, match=r"too small for 6 conv layers"):
        RLCoConfig.model_validate({"sft": {"policy": "cnn_flow", "cnn_channels": [4] * 6}, "cameras": [CAMERA],
                                   "eval": {"after": ["sft"]}})
    with pytest.raises(ValueError, match=r"cameras: set, but sft.policy = \"flow\".*\"cnn_flow\""):
        RLCoConfig.model_validate({"sft": {"policy": "flow"}, "cameras": [CAMERA], "eval": {"after": ["sft"]}})
    with pytest.raises(ValueError, match="reads cameras, given views"):
        make_trainer(2, 1, SFTConfig(policy="cnn_flow"), ObsNormalizer(torch.zeros(2), torch.ones(2)))
    from cloud.rlco.stages import Recipe

    cfg = RLCoConfig.model_validate({"run_dir": str(tmp_path / "run"), "sft": {"policy": "cnn_flow"},
                                     "cameras": [CAMERA], "eval": {"after": ["sft"]}})
    with pytest.raises(ConfigError, match=r"sft.policy = \"cnn_flow\": Stage II .* RL over rendered frames and "
                                          r"flow-policy RL are not implemented"):
        Recipe(cfg).run(stage="rl")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_cnn_flow_recipe_trains_publishes_and_is_evaluated_in_process(tmp_path):
    from cloud.rlco import evaluate
    from cloud.rlco.stages import Recipe
    from hal_drivers.mujoco_fetch import FetchRobot
    from hal_drivers.mujoco_fetch.config import FetchConfig
    from shared.policy import build_actor

    cfg = RLCoConfig.model_validate({
        "run_dir": str(tmp_path / "run"), "task": "reach", "real": {"action_gain": 0.8}, "cameras": [CAMERA],
        "datasets": {"dir": str(tmp_path / "ds"), "sim_episodes": 2, "real_episodes": 1, "real_via": "in_process"},
        "sft": {"policy": "cnn_flow", "updates": 4, "batch_size": 8, "hidden": [8], "cnn_channels": [4, 4],
                "cnn_latent": 4, "checkpoint_every": 2, "flow_steps": 3},
        "eval": {"via": "in_process", "episodes": 1, "robots": 1, "after": ["sft"]}})
    out = Recipe(cfg).run()
    assert out["done"] == ["sft", "eval_sft"]
    row = out["stages"][0]
    assert row["episodes"] == 1 and row["via"] == "in_process" and 0.0 <= row["success"] <= 1.0
    recipe = Recipe(cfg)
    recipe.open(resume=True)
    blob = recipe.blob("sft")
    robot = FetchRobot(FetchConfig(**evaluate.robot_options("reach", 5, cfg.real.model_dump(mode="json"),
                                                            cfg.robot_extra())))
    try:
        policy = evaluate._loaded(blob, robot)  # as a robot loads it: verified, a plain cnn_flow blob
        obs = [robot.reset()] + [robot.step(np.zeros(4, np.float32)).observation for _ in range(3)]
    finally:
        robot.close()
    assert policy.actor.arch()["kind"] == "cnn_flow" and policy.image_fields == ("overhead",)
    assert evaluate.Acting(policy, cfg.eval, 4).executor is not None  # robots play its chunks
    # the published (folded) policy on raw observations acts as the trained one on normalised ones
    saved = recipe.stage_output("sft")
    trained = build_actor(saved["arch"])
    trained.load_state_dict(saved["actor"])
    norm = ObsNormalizer.from_state(saved["norm"])
    x = torch.from_numpy(np.stack([np.concatenate([o[f] for f in policy.obs_fields]) for o in obs]))
    images = {"overhead": torch.from_numpy(np.stack([o["overhead"] for o in obs]))}
    want = trained.sample((x - norm.mean) / norm.std, deterministic=True, images=images).numpy()
    assert np.allclose(policy.act_chunk_batch(obs, deterministic=True), want, atol=1e-5)
    assert not torch.allclose(norm.std, torch.ones_like(norm.std))  # the fold did something
