"""PolicyHolder with real Actors and real safetensors weights blobs."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from edge_agent.policy_holder import PolicyHolder
from shared.errors import WeightsError
from shared.policy import Actor, CNNActor
from shared.weights import decode_weights, encode_weights

FIELDS = {"observation": 10, "achieved_goal": 3, "desired_goal": 3}  # the Fetch reach robot
ACT = 4
ALL = list(FIELDS)


def _weights(version: int, actor: Actor | None = None, obs_fields=None, arch_actor=None, tensors=None, arch=None):
    torch.manual_seed(version)
    actor = actor or Actor(sum(FIELDS[f] for f in (obs_fields or ALL)), ACT, hidden=(32, 32))
    if arch is None:
        arch = {"actor": arch_actor or actor.arch(), "obs_fields": list(obs_fields or ALL)}
    blob = encode_weights(tensors if tensors is not None else actor.state_dict(), version, arch)
    return decode_weights(blob.data, blob.sha256, 1 << 30)


def _obs(rng) -> dict[str, np.ndarray]:
    return {k: rng.normal(size=n).astype(np.float32) * 3 for k, n in FIELDS.items()}


@pytest.fixture
def holder() -> PolicyHolder:
    h = PolicyHolder(dict(FIELDS), ACT)
    assert h.act(_obs(np.random.default_rng(0)), deterministic=True) is None  # no policy yet
    assert h.version == 0
    h.swap(h.prepare(_weights(1)))
    return h


def test_prepare_swap_act(holder):
    rng = np.random.default_rng(1)
    assert holder.version == 1
    assert holder.versions_used == [1]
    for det in (True, False):
        for _ in range(20):
            a, v = holder.act(_obs(rng), deterministic=det)
            assert v == 1
            assert a.shape == (ACT,)
            assert a.dtype == np.float32
            assert np.all(np.isfinite(a)) and np.all(a >= -1) and np.all(a <= 1)


def test_act_matches_the_loaded_network(holder):
    rng = np.random.default_rng(2)
    obs = _obs(rng)
    torch.manual_seed(1)
    ref = Actor(16, ACT, hidden=(32, 32))  # same seed as _weights(1): same parameters
    x = torch.from_numpy(np.concatenate([obs[f] for f in ALL]))[None]
    a, _ = holder.act(obs, deterministic=True)
    np.testing.assert_allclose(a, torch.tanh(ref(x)[0])[0].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_subset_and_order_of_obs_fields(holder):
    w = _weights(2, obs_fields=["desired_goal", "observation"])
    holder.swap(holder.prepare(w))
    a, v = holder.act(_obs(np.random.default_rng(3)), deterministic=True)
    assert v == 2 and a.shape == (ACT,)
    assert holder.current.obs_fields == ("desired_goal", "observation")


def test_newer_version_swaps_older_and_same_do_not(holder):
    assert holder.swap(holder.prepare(_weights(5)))
    assert holder.version == 5
    assert not holder.swap(holder.prepare(_weights(3)))
    assert not holder.swap(holder.prepare(_weights(5)))
    assert holder.version == 5
    assert holder.versions_used == [1, 5]
    assert holder.act(_obs(np.random.default_rng(0)), True)[1] == 5


def _assert_refused(holder: PolicyHolder, weights) -> None:
    before = holder.current
    with pytest.raises(WeightsError):
        holder.prepare(weights)
    assert holder.current is before
    assert holder.version == 1
    a, v = holder.act(_obs(np.random.default_rng(4)), deterministic=True)
    assert v == 1 and np.all(np.abs(a) <= 1)


def test_refuses_wrong_obs_dim(holder):
    actor = Actor(15, ACT, hidden=(32, 32))
    _assert_refused(holder, _weights(2, actor=actor))


def test_refuses_wrong_action_dim(holder):
    actor = Actor(16, ACT + 1, hidden=(32, 32))
    _assert_refused(holder, _weights(2, actor=actor))


def test_refuses_unknown_field(holder):
    actor = Actor(16 + 5, ACT, hidden=(32, 32))
    arch = {"actor": actor.arch(), "obs_fields": ALL + ["gripper_camera"]}
    _assert_refused(holder, _weights(2, actor=actor, arch=arch))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_refuses_non_finite_weights(holder, bad):
    actor = Actor(16, ACT, hidden=(32, 32))
    sd = {k: v.clone() for k, v in actor.state_dict().items()}
    sd["head.bias"][1] = bad
    _assert_refused(holder, _weights(2, actor=actor, tensors=sd))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda a: {**a, "kind": "transformer"},
        lambda a: {**a, "version": 99},
        lambda a: {**a, "hidden": [32, -1]},
        lambda a: {**a, "obs_dim": "16"},
        lambda a: {k: v for k, v in a.items() if k != "act_dim"},
        lambda a: None,
    ],
    ids=["kind", "arch_version", "hidden", "obs_dim_type", "missing_act_dim", "none"],
)
def test_refuses_wrong_arch(holder, mutate):
    actor = Actor(16, ACT, hidden=(32, 32))
    _assert_refused(holder, _weights(2, actor=actor, arch={"actor": mutate(actor.arch()), "obs_fields": ALL}))


@pytest.mark.parametrize("arch", [{"obs_fields": ALL}, {"actor": "x"}, {"actor": None, "obs_fields": 5}])
def test_refuses_malformed_arch_map(holder, arch):
    _assert_refused(holder, _weights(2, arch=arch))


def test_refuses_hidden_sizes_that_do_not_match_the_tensors(holder):
    big = Actor(16, ACT, hidden=(64, 64))
    small_arch = Actor(16, ACT, hidden=(32, 32)).arch()
    _assert_refused(holder, _weights(2, actor=big, arch_actor=small_arch))


def test_refuses_mismatched_tensor_names(holder):
    actor = Actor(16, ACT, hidden=(32, 32))
    sd = dict(actor.state_dict())
    sd["policy.head.weight"] = sd.pop("head.weight")
    _assert_refused(holder, _weights(2, actor=actor, tensors=sd))


def test_refuses_missing_and_extra_tensors(holder):
    actor = Actor(16, ACT, hidden=(32, 32))
    missing = {k: v for k, v in actor.state_dict().items() if k != "head.bias"}
    _assert_refused(holder, _weights(2, actor=actor, tensors=missing))
    extra = {**actor.state_dict(), "extra.weight": torch.zeros(3)}
    _assert_refused(holder, _weights(3, actor=actor, tensors=extra))


def test_decode_refuses_tampered_bytes():
    actor = Actor(16, ACT, hidden=(32, 32))
    blob = encode_weights(actor.state_dict(), 2, {"actor": actor.arch(), "obs_fields": ALL})
    data = bytearray(blob.data)
    data[-5] ^= 1
    with pytest.raises(WeightsError) as ei:
        decode_weights(bytes(data), blob.sha256, 1 << 30)
    assert ei.value.code == "bad_digest"
    with pytest.raises(WeightsError) as ei:
        decode_weights(blob.data, blob.sha256, len(blob.data) - 1)
    assert ei.value.code == "too_large"
    # the arch round-trips exactly
    w = decode_weights(blob.data, blob.sha256, 1 << 30)
    assert w.version == 2 and w.arch == json.loads(json.dumps({"actor": actor.arch(), "obs_fields": ALL}))


def test_swap_while_acting_from_another_thread(holder):
    """Ticks on one thread see a whole policy (old or new), versions never go back."""
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def tick():
        rng = np.random.default_rng(5)
        try:
            while not stop.is_set():
                a, v = holder.act(_obs(rng), deterministic=False)
                assert np.all(np.abs(a) <= 1)
                seen.append(v)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=tick)
    t.start()
    try:
        for v in range(2, 8):
            holder.swap(holder.prepare(_weights(v)))
    finally:
        stop.set()
        t.join(10)
    assert not errors
    assert seen == sorted(seen)
    assert holder.version == 7


# ---------------------------------------------------------------- pixel policies

CAMERAS = {"camera": (16, 16, 3), "external_camera_0": (16, 16, 3)}


def _cnn_weights(version: int, views=tuple(CAMERAS.items())):
    torch.manual_seed(version)
    actor = CNNActor(10, ACT, hidden=(16,), views=list(views), channels=(4, 4), latent=6)
    blob = encode_weights(actor.state_dict(), version, {"actor": actor.arch(), "obs_fields": ["observation"]})
    return actor, decode_weights(blob.data, blob.sha256, 1 << 30)


def _cam_obs(rng) -> dict[str, np.ndarray]:
    return {**_obs(rng), **{k: rng.integers(0, 256, s, dtype=np.uint8) for k, s in CAMERAS.items()}}


def test_a_robot_acts_with_a_cnn_policy_from_its_camera_frames():
    holder = PolicyHolder(dict(FIELDS), ACT, image_fields=CAMERAS)
    actor, w = _cnn_weights(2)
    assert holder.swap(holder.prepare(w))
    assert holder.current.image_fields == tuple(CAMERAS)
    obs = _cam_obs(np.random.default_rng(6))
    a, v = holder.act(obs, deterministic=True)
    assert v == 2 and a.shape == (ACT,)
    images = {k: torch.from_numpy(obs[k])[None] for k in CAMERAS}
    expect = actor.act(torch.from_numpy(obs["observation"])[None], deterministic=True, images=images)[0].numpy()
    np.testing.assert_allclose(a, expect, rtol=1e-5, atol=1e-6)
    # and a state policy still replaces it: kinds are per update, not per robot
    assert holder.swap(holder.prepare(_weights(3)))
    assert holder.act(obs, deterministic=True)[1] == 3


def test_a_robot_refuses_a_cnn_policy_for_cameras_it_lacks(holder):
    _assert_refused(holder, _cnn_weights(2)[1])  # holder has no cameras at all
    small = PolicyHolder(dict(FIELDS), ACT, image_fields={"camera": (16, 16, 3), "external_camera_0": (32, 32, 3)})
    with pytest.raises(WeightsError, match="external_camera_0"):
        small.prepare(_cnn_weights(2)[1])


# ---------------------------------------------------------------- control.policy_device

@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU on this machine (CPU build or no device)")
def test_a_robot_runs_its_policy_on_the_gpu_it_names():
    holder = PolicyHolder(dict(FIELDS), ACT, image_fields=CAMERAS, device=torch.device("cuda"))
    actor, w = _cnn_weights(2)
    loaded = holder.prepare(w)
    assert loaded.device.type == "cuda" and next(loaded.actor.parameters()).is_cuda
    obs = _cam_obs(np.random.default_rng(7))
    a = loaded.act(obs, deterministic=True)
    images = {k: torch.from_numpy(obs[k])[None] for k in CAMERAS}
    expect = actor.act(torch.from_numpy(obs["observation"])[None], deterministic=True, images=images)[0].numpy()
    assert isinstance(a, np.ndarray) and a.shape == (ACT,)
    np.testing.assert_allclose(a, expect, atol=1e-2)  # cuDNN may use TF32 convolutions


def test_a_robot_refuses_a_policy_device_it_does_not_have_before_opening_the_robot(tmp_path, monkeypatch):
    from edge_agent.daemon import Agent
    from hal_drivers import registry
    from shared.config import AgentConfig
    from shared.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: cuda:N beyond its count is the refusal then (see the learner tests)")
    opened: list[str] = []
    monkeypatch.setattr(registry, "create", lambda *a, **k: opened.append("robot"))  # must not be reached
    cfg = AgentConfig.model_validate({"robot_id": "r1", "control": {"policy_device": "cuda"},
                                      "spool": {"dir": str(tmp_path / "spool")}, "state_dir": str(tmp_path / "state")})
    with pytest.raises(ConfigError, match=r'control.policy_device = "cuda" but torch .* sees no CUDA GPU'):
        Agent(cfg)
    assert opened == []
    assert not (tmp_path / "spool").exists() and not (tmp_path / "state").exists(), "a refused config writes nothing"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int32])
def test_refuses_weights_that_are_not_float32(holder, dtype):
    """Loaded tensors become the network's own (no copy into float32 parameters): another dtype would
    make the first tick fail, so the update is refused and the old policy keeps acting."""
    actor = Actor(sum(FIELDS.values()), ACT, hidden=(32, 32))
    tensors = {k: v.to(dtype) for k, v in actor.state_dict().items()}
    with pytest.raises(WeightsError, match="float32"):
        holder.prepare(_weights(2, actor, tensors=tensors))
    assert holder.act(_obs(np.random.default_rng(2)), deterministic=True)[1] == 1


def test_a_loaded_policy_owns_the_blob_tensors_without_random_init(holder):
    w = _weights(5)
    loaded = holder.prepare(w)
    params = dict(loaded.actor.named_parameters())
    assert all(params[k].data_ptr() == t.data_ptr() for k, t in w.tensors.items())  # assigned, not copied
    assert not any(p.is_meta for p in loaded.actor.parameters())
