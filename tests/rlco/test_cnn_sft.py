"""Stage I with the camera policy (sft.policy = "cnn"): the alpha weighting of its loss is exact, the
datasets carry the frames the robot rendered, publishing keeps the function robots run, a cnn recipe
trains and is evaluated in process on twins with the same cameras, and Stage II is refused."""

import json

import numpy as np
import pytest
import torch

from cloud.learner.normalize import ObsNormalizer
from cloud.rlco.config import RLCoConfig, SFTConfig
from cloud.rlco.datasets import expert_episodes, open_version, write_version
from cloud.rlco.images import IMAGE_KEY, ImageDemos, image_demos
from cloud.rlco.losses import Demos, cotrain, mixed_batch
from cloud.rlco.sft import CNNSFTTrainer, make_trainer
from shared.errors import ConfigError

VIEWS = [("left", (16, 16, 3)), ("right", (16, 20, 3))]
CAMERA = {"name": "overhead", "view": "external_camera_0", "size": 16}


def _trainer(seed: int = 0) -> CNNSFTTrainer:
    cfg = SFTConfig(policy="cnn", hidden=[6], cnn_channels=[3, 3], cnn_latent=4)
    t = make_trainer(2, 2, cfg, ObsNormalizer(torch.zeros(2), torch.ones(2)), seed, views=VIEWS)
    assert isinstance(t, CNNSFTTrainer)
    return t


def _batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"obs": torch.randn(n, 2, generator=g), "action": torch.rand(n, 2, generator=g) * 1.8 - 0.9}
    for name, hwc in VIEWS:
        out[IMAGE_KEY + name] = torch.randint(0, 256, (n, *hwc), generator=g, dtype=torch.uint8)
    return out


def _nll_by_hand(action: torch.Tensor, mean: np.ndarray, log_std: np.ndarray) -> float:
    u = np.arctanh(action.numpy().astype(np.float64))
    return float((0.5 * ((u - mean) / np.exp(log_std)) ** 2 + log_std).sum(-1).mean())


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_cnn_cotrain_weighting_is_exact(alpha):
    """With the head's weights zeroed the actor outputs its bias whatever the frames: the per-dataset
    losses are then known by hand, and the total must be their alpha-weighted sum."""
    t = _trainer()
    mean, log_std = np.array([0.2, -0.4]), np.array([-0.5, 0.3])
    with torch.no_grad():
        t.cnn.head.weight.zero_()
        t.cnn.head.bias.copy_(torch.tensor([*mean, *log_std]))
    sim, real = _batch(8, 1), _batch(3, 2)  # sizes differ
    l_sim, l_real = _nll_by_hand(sim["action"], mean, log_std), _nll_by_hand(real["action"], mean, log_std)
    total, parts = cotrain(t.loss, alpha, sim if alpha > 0 else None, real if alpha < 1 else None)
    assert total.item() == pytest.approx(alpha * l_sim + (1 - alpha) * l_real, rel=1e-5)
    want = {k: v for k, v, w in (("sft_sim", l_sim, alpha), ("sft_real", l_real, 1 - alpha)) if w > 0}
    assert parts == pytest.approx(want, rel=1e-5)


def test_cnn_cotrain_gradient_is_the_weighted_sum_and_reaches_the_encoder():
    t = _trainer()
    sim, real = _batch(8, 3), _batch(4, 4)
    params = list(t.actor.parameters())

    def grad(loss):
        t.actor.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in params])

    g = grad(cotrain(t.loss, 0.3, sim, real)[0])
    assert torch.allclose(g, 0.3 * grad(t.loss(sim)) + 0.7 * grad(t.loss(real)), atol=1e-6)
    t.actor.zero_grad()
    t.loss(sim).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in t.cnn.encoder.parameters())


def test_image_demos_batches_carry_frames_of_their_rows_and_mix_in_ratio():
    rng = np.random.default_rng(0)
    n = 5
    frames = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 16, 16, 3), np.uint8)
    d = ImageDemos(np.arange(n * 2, dtype=np.float32).reshape(n, 2), np.zeros((n, 2), np.float32), {"left": frames})
    b = d.sample(16, rng)
    rows = (b["obs"][:, 0] / 2).long()
    assert torch.equal(b[IMAGE_KEY + "left"][:, 0, 0, 0].long(), rows)  # each row's own frame
    other = ImageDemos(np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32), {"left": frames[:2] + 100})
    m = mixed_batch(d, other, 10, 0.3, rng)
    assert int(m["from_sim"].sum()) == 3 and m[IMAGE_KEY + "left"].shape == (10, 16, 16, 3)
    assert torch.all((m[IMAGE_KEY + "left"][:, 0, 0, 0] >= 100) == ~m["from_sim"])
    with pytest.raises(ValueError, match="camera 'left': frames must be uint8"):
        ImageDemos(d.obs, d.action, {"left": frames[:3]})


def _image_demos(n: int, seed: int) -> ImageDemos:
    b = _batch(n, seed)
    return ImageDemos(b["obs"].numpy(), b["action"].numpy(),
                      {name: b[IMAGE_KEY + name].numpy() for name, _ in VIEWS})


def test_cnn_trainer_resumes_exactly_from_its_checkpoint(tmp_path):
    from cloud.learner import checkpoint

    sim, real = _image_demos(12, 6), _image_demos(5, 7)
    whole, killed = _trainer(seed=3), _trainer(seed=3)
    for _ in range(4):
        whole.step(0.5, sim, real)
    for _ in range(2):
        killed.step(0.5, sim, real)
    checkpoint.save(tmp_path / "sft.ckpt", killed.state_dict())
    resumed = _trainer(seed=3)
    resumed.load_state_dict(checkpoint.load(tmp_path / "sft.ckpt"))
    for _ in range(2):
        resumed.step(0.5, sim, real)
    a, b = whole.actor.state_dict(), resumed.actor.state_dict()
    assert resumed.updates == 4 and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.stacks.0.convs.0.weight"],
                           _trainer(seed=3).actor.state_dict()["encoder.stacks.0.convs.0.weight"])  # trained


def test_published_weights_fold_the_state_normalisation_exactly():
    t = _trainer()
    norm = ObsNormalizer(torch.tensor([3.0, -1.0]), torch.tensor([2.0, 0.5]))
    raw = torch.randn(4, 2) * 3
    images = {name: _batch(4, 5)[IMAGE_KEY + name] for name, _ in VIEWS}
    want = t.cnn.act((raw - norm.mean) / norm.std, deterministic=True, images=images)
    folded = _trainer(seed=1).cnn  # another init, given the folded tensors
    folded.load_state_dict(norm.fold(t.cnn.state_dict(), t.cnn.encoder.feature_dim))
    assert torch.allclose(folded.act(raw, deterministic=True, images=images), want, atol=1e-5)


def test_datasets_round_trip_the_frames_the_robot_rendered(tmp_path):
    from hal_drivers.mujoco_fetch import FetchRobot
    from hal_drivers.mujoco_fetch.config import FetchConfig
    from hal_drivers.teleop.scripted import reach_action
    from cloud.rlco.datasets import episode_rows, to_table

    robot = FetchRobot(FetchConfig(task="reach", seed=3, max_episode_steps=6, camera_antialias=False,
                                   cameras=[CAMERA]))
    try:
        spec = robot.describe().episode_spec()
        eps = [steps for steps, _ in expert_episodes(robot, reach_action, 2, 0.1, np.random.default_rng(0))]
    finally:
        robot.close()
    table = to_table(spec, [episode_rows(spec, "sim", f"e{i}", s) for i, s in enumerate(eps)])
    ds = open_version(write_version(tmp_path / "d_sim-x", "d_sim", {}, table, {}).path)
    got = image_demos(ds.table(), ds.demos(("observation", "desired_goal")), ["overhead"])
    seen = np.stack([obs["overhead"] for steps in eps for obs, *_ in steps])
    assert seen.shape == (12, 16, 16, 3) and seen.std() > 0  # rendered, not blank
    assert np.array_equal(got.images["overhead"], seen)
    assert got.obs.shape == (12, 13)
    with pytest.raises(ValueError, match="no frames of camera 'side'"):
        image_demos(ds.table(), Demos(got.obs, got.action), ["side"])


def test_cnn_config_is_checked():
    with pytest.raises(ValueError, match=r"sft.policy = \"cnn\" needs cameras"):
        RLCoConfig.model_validate({"sft": {"policy": "cnn"}, "eval": {"after": ["sft"]}})
    with pytest.raises(ValueError, match=r"cameras: set, but sft.policy = \"gaussian\""):
        RLCoConfig.model_validate({"cameras": [CAMERA]})
    with pytest.raises(ValueError, match=r"sft.policy = \"cnn\" with eval.after naming rl"):
        RLCoConfig.model_validate({"sft": {"policy": "cnn"}, "cameras": [CAMERA]})
    with pytest.raises(ValueError, match=r"too small for 6 conv layers"):
        RLCoConfig.model_validate({"sft": {"policy": "cnn", "cnn_channels": [4] * 6}, "cameras": [CAMERA],
                                   "eval": {"after": ["sft"]}})
    with pytest.raises(ValueError, match=r"name state fields"):
        RLCoConfig.model_validate({"sft": {"policy": "cnn"}, "cameras": [{**CAMERA, "name": "observation"}],
                                   "eval": {"after": ["sft"]}})


def test_a_cnn_recipe_trains_publishes_and_is_evaluated_in_process(tmp_path):
    from cloud.rlco.stages import Recipe
    from shared.weights import decode_weights

    cfg = RLCoConfig.model_validate({
        "run_dir": str(tmp_path / "run"), "task": "reach", "real": {"action_gain": 0.8}, "cameras": [CAMERA],
        "datasets": {"dir": str(tmp_path / "ds"), "sim_episodes": 2, "real_episodes": 1, "real_via": "in_process"},
        "sft": {"policy": "cnn", "updates": 4, "batch_size": 8, "hidden": [8], "cnn_channels": [4, 4],
                "cnn_latent": 4, "checkpoint_every": 2},
        "eval": {"via": "in_process", "episodes": 1, "robots": 1, "after": ["sft"]}})
    with pytest.raises(ConfigError, match=r"sft.policy = \"cnn\": Stage II"):
        Recipe(cfg).run(stage="rl")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    out = Recipe(cfg).run()
    assert out["done"] == ["sft", "eval_sft"]
    row = out["stages"][0]
    assert row["episodes"] == 1 and row["via"] == "in_process" and 0.0 <= row["success"] <= 1.0
    manifest = json.loads((tmp_path / "ds" / out["datasets"]["sim"].split("/")[-1] / "manifest.json").read_text())
    assert manifest["settings"]["cameras"]["cameras"][0]["name"] == "overhead"
    blob = (tmp_path / "run" / "stages" / "sft" / "policy.safetensors").read_bytes()
    arch = decode_weights(blob, None, 1 << 30).arch["actor"]
    assert arch["kind"] == "cnn_gaussian" and arch["images"] == [["overhead", 16, 16, 3]]
