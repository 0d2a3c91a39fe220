"""Embodiment groups: which group a robot joins (auto names, pins, fixed-mode refusals, a robot's
home group), groups re-opened from disk after a restart, and two embodiments through one real gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.groups import GroupRegistry
from cloud.groups.naming import FIRST, auto_name, driver_name
from cloud.buffer.specs import spec_key
from harness import stored_count
from shared.config import LearnerConfig
from shared.errors import SchemaError
from shared.protocol import Limits, Reject, Welcome
from shared.schema import EpisodeSpec, FieldSpec
from tests.cloud.test_cloud_gateway import Robot, _status, serve

FETCH = EpisodeSpec(observation={"observation": FieldSpec((10,)), "achieved_goal": FieldSpec((3,)),
                                 "desired_goal": FieldSpec((3,))}, action_dim=4,
                    action_low=(-1.0,) * 4, action_high=(1.0,) * 4)
POINT = EpisodeSpec(observation={"position": FieldSpec((3,)), "velocity": FieldSpec((3,)), "goal": FieldSpec((3,))},
                    action_dim=3, action_low=(-1.0,) * 3, action_high=(1.0,) * 3)
POINT_2D = EpisodeSpec(observation={"position": FieldSpec((2,)), "velocity": FieldSpec((3,)), "goal": FieldSpec((3,))},
                       action_dim=3, action_low=(-1.0,) * 3, action_high=(1.0,) * 3)
FETCH_UNITS = [{"name": "arm", "kind": "robot", "driver": "mujoco_fetch"}]
POINT_UNITS = [{"name": "pm", "kind": "robot", "driver": "point_mass"}]


def _cfg(tmp_path: Path, **groups) -> LearnerConfig:
    return LearnerConfig(data_dir=tmp_path / "run", learner={"hidden": [16, 16]}, groups=groups)


def _open(cfg: LearnerConfig) -> GroupRegistry:
    return GroupRegistry.open(cfg, Limits())


def test_auto_names_come_from_the_driver_and_the_spec_and_are_safe_folder_names() -> None:
    assert auto_name(FETCH_UNITS, FETCH) == f"mujoco_fetch-{spec_key(FETCH)}"
    assert spec_key(FETCH) == spec_key(EpisodeSpec.from_dict(FETCH.to_dict()))  # stable across processes
    assert spec_key(FETCH) != spec_key(POINT)
    assert driver_name([{"kind": "robot", "driver": "../../etc/passwd"}]) == "etc_passwd"
    assert driver_name([{"kind": "camera", "driver": "usb"}, {"kind": "robot", "driver": "ur5e"}]) == "ur5e"
    assert driver_name([{"driver": 7}]) == driver_name([]) == "robot"  # untrusted units: no driver, no name from it
    assert auto_name(POINT_UNITS, POINT, taken=[f"point_mass-{spec_key(POINT)}"]).endswith("-2")


async def test_auto_mode_starts_a_group_per_embodiment_and_a_restart_reopens_them(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, mode="auto")
    reg = _open(cfg)
    assert [g.name for g in reg] == [FIRST]
    arm = await reg.resolve("arm-1", FETCH, FETCH_UNITS)
    assert arm is reg.first and arm.root == cfg.data_dir  # the first group keeps a run's usual paths
    assert arm.name == f"mujoco_fetch-{spec_key(FETCH)}"  # named by its first robot
    pm = await reg.resolve("pm-1", POINT, POINT_UNITS)
    assert pm.name == f"point_mass-{spec_key(POINT)}" and pm.root == cfg.data_dir / "groups" / pm.name
    assert (pm.root / "buffer" / "manifest.json").exists() and pm.publisher.dir == pm.root / "policy"
    assert await reg.resolve("arm-2", FETCH, FETCH_UNITS) is arm  # same embodiment, same group
    assert await reg.resolve("pm-2", POINT, [{"driver": "spoofed"}]) is pm  # joined by spec, not by driver
    third = await reg.resolve("pm-3", POINT_2D, POINT_UNITS)
    assert third.name == f"point_mass-{spec_key(POINT_2D)}" and len(reg) == 3

    again = _open(cfg)  # a restart (or --resume): every group back from disk, under the same name
    assert [(g.name, g.root, g.buffer.spec) for g in again] == [(g.name, g.root, g.buffer.spec) for g in reg]
    assert (await again.resolve("pm-1", POINT, POINT_UNITS)).name == pm.name
    assert await again.resolve("arm-9", FETCH, FETCH_UNITS) is again.first


async def test_max_groups_bounds_auto_mode(tmp_path: Path) -> None:
    reg = _open(_cfg(tmp_path, mode="auto", max_groups=2))
    await reg.resolve("arm-1", FETCH, FETCH_UNITS)
    await reg.resolve("pm-1", POINT, POINT_UNITS)
    with pytest.raises(SchemaError) as e:
        await reg.resolve("pm-2", POINT_2D, POINT_UNITS)
    assert e.value.code == "spec_mismatch" and "groups.max_groups (2)" in e.value.message
    assert len(reg) == 2


async def test_fixed_mode_refuses_naming_the_closest_group_and_the_field_that_differs(tmp_path: Path) -> None:
    reg = _open(_cfg(tmp_path, mode="fixed", named=[{"name": "arms"}, {"name": "points"}]))
    assert [g.name for g in reg] == ["arms", "points"]
    assert (await reg.resolve("arm-1", FETCH, FETCH_UNITS)).name == "arms"
    assert (await reg.resolve("pm-1", POINT, POINT_UNITS)).name == "points"  # the next group without a spec
    with pytest.raises(SchemaError) as e:
        await reg.resolve("pm-2", POINT_2D, POINT_UNITS)
    assert e.value.code == "spec_mismatch"
    assert "group 'points'" in e.value.message and 'groups.mode = "fixed"' in e.value.message
    assert "observation.position: group points has {'shape': [3]" in e.value.message, e.value.message
    assert "robot has {'shape': [2]" in e.value.message


async def test_a_run_of_one_group_refuses_as_before(tmp_path: Path) -> None:
    reg = _open(_cfg(tmp_path))  # no [groups]: fixed, one group
    await reg.resolve("arm-1", FETCH, FETCH_UNITS)
    with pytest.raises(SchemaError) as e:
        await reg.resolve("pm-1", POINT, POINT_UNITS)
    assert e.value.message.startswith("robot's episode spec differs from this run's spec: observation.")
    assert len(reg) == 1 and not (tmp_path / "run" / "groups").exists()


async def test_pinned_robots_go_to_their_group_and_only_with_its_spec(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, mode="auto", named=[{"name": "arms"},
                                             {"name": "points", "robots": ["pm-*"], "learner": {"hidden": [8]}}])
    reg = _open(cfg)
    points = await reg.resolve("pm-1", POINT, POINT_UNITS)  # pinned, though the first group has no spec yet
    assert points.name == "points" and points.cfg.hidden == [8] and reg.first.buffer.spec is None
    assert reg.first.cfg.hidden == [16, 16]
    with pytest.raises(SchemaError) as e:
        await reg.resolve("pm-2", FETCH, FETCH_UNITS)
    assert "pinned to group 'points'" in e.value.message
    assert (await reg.resolve("other", POINT, POINT_UNITS)).name == "arms"  # unpinned: not into a pinned group


def test_group_config_is_checked_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a valid id"):
        _cfg(tmp_path, named=[{"name": "../up"}])
    with pytest.raises(ValueError, match=r"groups.named\[p\].learner"):
        _cfg(tmp_path, named=[{"name": "p", "learner": {"hiden": [8]}}])
    with pytest.raises(ValueError, match="used twice"):
        _cfg(tmp_path, named=[{"name": "p"}, {"name": "p"}])
    # a cluster serves several groups too (tests/cluster/test_cluster_ray.py, test_two_embodiments_on_one_shard_each_learn_in_their_own_group)
    assert LearnerConfig(data_dir=tmp_path, cluster={}, groups={"mode": "auto"}).groups.mode == "auto"


async def test_two_embodiments_through_one_gateway(tmp_path: Path) -> None:
    async with serve(tmp_path, groups={"mode": "auto"}) as (app, url, status_url):
        arm, pm = Robot(url, "arm-1", FETCH, units=FETCH_UNITS), Robot(url, "pm-1", POINT, units=POINT_UNITS)
        assert isinstance(await arm.open(), Welcome) and isinstance(await pm.open(), Welcome)
        for seq in (1, 2):
            await arm.send_chunk(seq)
            await pm.send_chunk(seq)
        assert await arm.acks(2) == [1, 2] and await pm.acks(2) == [1, 2]
        s = await _status(status_url)
        arm_group, pm_group = f"mujoco_fetch-{spec_key(FETCH)}", f"point_mass-{spec_key(POINT)}"
        assert s["robots"]["arm-1"]["group"] == arm_group and s["robots"]["pm-1"]["group"] == pm_group
        assert s["groups"][pm_group]["robots"] == ["pm-1"] and s["groups"][arm_group]["robots"] == ["arm-1"]
        assert s["groups"][pm_group]["spec"] == {"observation": {"position": [3], "velocity": [3], "goal": [3]},
                                                 "action_dim": 3}
        assert s["groups"][pm_group]["buffer_rows"] == s["groups"][arm_group]["buffer_rows"] == 10
        assert s["buffer_rows"] == 20 and s["rows_by_robot"] == {"arm-1": 10, "pm-1": 10}  # totals at the top
        data = tmp_path / "run"
        assert stored_count(data, "arm-1") == 10 and stored_count(data, "pm-1") == 0  # each in its own buffer
        assert stored_count(data / "groups" / pm_group, "pm-1") == 10
        await pm.close()
        moved = Robot(url, "pm-1", POINT_2D, units=POINT_UNITS)  # its data is in one group: not a new one
        msg = await moved.open()
        assert isinstance(msg, Reject) and msg.code == "spec_mismatch"
        assert f"stored stream is in group {pm_group!r}" in msg.message and "observation.position" in msg.message
        await moved.close()
        await arm.close()
