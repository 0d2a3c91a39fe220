"""Hostile weights from the learner's side: a tiny blob whose arch asks for a huge
network, tensors that disagree with their arch, a version that would pin the robot.
Each is refused; the link, the acks and the current policy carry on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent.policy_holder import PolicyHolder
from shared import auth
from shared.errors import FleetError, WeightsError
from shared.policy import Actor
from shared.weights import decode_weights, encode_weights
from tests.security.robot_link import ScriptedLearner, robot, run_until

FIELDS = {"observation": 10, "achieved_goal": 3, "desired_goal": 3}
OBS, ACT = 16, 4


def _arch(hidden: list[int], obs: int = OBS) -> dict:
    return {"actor": {"kind": "mlp_gaussian", "version": 1, "obs_dim": obs, "act_dim": ACT, "hidden": hidden},
            "obs_fields": list(FIELDS)}


def _honest(version: int, hidden: tuple[int, ...] = (8, 8)):
    actor = Actor(OBS, ACT, hidden)
    return encode_weights(actor.state_dict(), version, {"actor": actor.arch(), "obs_fields": list(FIELDS)})


def _bomb(version: int = 5):
    """A few hundred bytes: no tensors, an arch asking for a 2^40-wide layer (64 TiB of floats)."""
    return encode_weights({}, version, _arch([2**40, 2**40]))


def _decode(blob):
    return decode_weights(blob.data, blob.sha256, 1 << 30)


def test_a_tiny_blob_cannot_ask_for_a_huge_network() -> None:
    blob = _bomb()
    assert len(blob.data) < 400
    holder = PolicyHolder(dict(FIELDS), ACT)
    with pytest.raises(WeightsError) as e:
        holder.prepare(_decode(blob))
    assert e.value.code == "too_large"
    assert holder.version == 0


def test_arch_is_checked_against_the_tensors_before_building(monkeypatch) -> None:
    import shared.policy_runner as ph  # where the network is built (load_policy)

    def no_build(*a, **k):
        raise AssertionError("a network was built for weights that do not match their arch")

    monkeypatch.setattr(ph, "build_actor", no_build)
    small = Actor(OBS, ACT, (8, 8))
    holder = PolicyHolder(dict(FIELDS), ACT)
    for arch in (_arch([4096, 4096]), _arch([8]), _arch([8, 8, 8])):  # tensors say (8, 8)
        with pytest.raises(WeightsError, match="do not match the architecture"):
            holder.prepare(_decode(encode_weights(small.state_dict(), 1, arch)))
    with pytest.raises(WeightsError, match="hidden layers"):
        holder.prepare(_decode(encode_weights({}, 1, _arch([1] * 1000))))


def test_parameter_cap_is_a_setting() -> None:
    blob = _honest(1, (64, 64))  # 16*64+64 + 64*64+64 + 64*8+8 = 5704 parameters
    with pytest.raises(WeightsError, match="max_policy_params") as e:
        PolicyHolder(dict(FIELDS), ACT, max_params=5000).prepare(_decode(blob))
    assert e.value.code == "too_large"
    holder = PolicyHolder(dict(FIELDS), ACT, max_params=6000)
    assert holder.swap(holder.prepare(_decode(blob)))
    from shared.config import LinkConfig

    assert LinkConfig().max_policy_params >= 100_000_000  # bench/weights.py ships 100M-parameter policies


def test_version_jump_is_bounded() -> None:
    holder = PolicyHolder(dict(FIELDS), ACT, max_version_jump=1000)
    with pytest.raises(WeightsError, match="max_policy_version_jump") as e:
        holder.prepare(_decode(_honest(2**63 - 1)))
    assert e.value.code == "version_jump"
    assert holder.swap(holder.prepare(_decode(_honest(1000))))
    assert holder.swap(holder.prepare(_decode(_honest(2000))))
    with pytest.raises(WeightsError, match="jumps"):
        holder.prepare(_decode(_honest(3001)))
    assert holder.version == 2000


def test_a_fresh_agent_takes_the_version_its_learner_announced() -> None:
    """A restarted agent holds v0; its learner may be past max_policy_version_jump by then. The
    authenticated welcome names the learner's version, and the bound counts from there."""
    holder = PolicyHolder(dict(FIELDS), ACT, max_version_jump=1000)
    with pytest.raises(WeightsError, match="jumps"):
        holder.prepare(_decode(_honest(5_000_000)))
    holder.learner_announced(5_000_000)
    assert holder.swap(holder.prepare(_decode(_honest(5_000_000))))
    with pytest.raises(WeightsError, match="jumps"):
        holder.prepare(_decode(_honest(2**63 - 1)))


async def _parts(ws, conn, blob) -> None:
    await ws.send(conn.policy(blob.version, blob.sha256, len(blob.data), 0, blob.data))


def test_hostile_weights_keep_the_link_acks_and_policy(tmp_path: Path) -> None:
    """Over a real link: the bomb, then a pinning version, then an honest update. The robot
    keeps the same link, applies the ack sent after the bomb, and ends on the honest policy."""
    cred = auth.new_credential()
    holder = PolicyHolder(dict(FIELDS), ACT)
    outcomes: list[str] = []
    handled = asyncio.Event()

    async def on_policy(version: int, sha: str, data: bytes) -> None:  # what the agent daemon does
        try:
            loaded = await asyncio.to_thread(holder.prepare, decode_weights(data, sha, 1 << 30))
        except FleetError as e:
            outcomes.append(e.code)
            return
        finally:
            handled.set()
        outcomes.append("swapped" if holder.swap(loaded) else "stale")

    async def script(ws, conn) -> None:
        chunk = await learner.next_chunk(ws, conn)
        await _parts(ws, conn, _bomb(5))
        await ws.send(conn.ack(chunk.seq))
        await _parts(ws, conn, _honest(2**63 - 1))
        await _parts(ws, conn, _honest(2))
        await ws.wait_closed()

    async def main() -> None:
        nonlocal learner
        async with ScriptedLearner(cred, script) as learner:
            up = robot(tmp_path, learner.url, cred, on_policy)

            async def done() -> None:
                await up.wait_drained()
                while holder.version != 2:
                    handled.clear()
                    await handled.wait()

            await run_until(up, done)
            assert learner.links == 1 and up.reconnects == 0, up.last_error

    learner = None
    asyncio.run(main())
    assert outcomes == ["too_large", "version_jump", "swapped"]
    assert holder.versions_used == [2]


def test_any_exception_from_loading_keeps_the_link(tmp_path: Path) -> None:
    """The boundary catches everything: a loader bug (RuntimeError, MemoryError) is logged, not fatal."""
    cred = auth.new_credential()
    calls: list[int] = []

    async def on_policy(version: int, sha: str, data: bytes) -> None:
        calls.append(version)
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:114] DefaultCPUAllocator: not enough memory")

    async def script(ws, conn) -> None:
        chunk = await learner.next_chunk(ws, conn)
        await _parts(ws, conn, _honest(3))
        await ws.send(conn.ack(chunk.seq))
        await ws.wait_closed()

    async def main() -> None:
        nonlocal learner
        async with ScriptedLearner(cred, script) as learner:
            up = robot(tmp_path, learner.url, cred, on_policy)
            await run_until(up, up.wait_drained)
            assert learner.links == 1 and up.reconnects == 0, up.last_error

    learner = None
    asyncio.run(main())
    assert calls == [3]
