"""Robot and episode ids become file names (the MCAP export): one safe alphabet
everywhere, and an export never writes outside ``--out``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from shared.chunk import StepRecord, build_batch
from shared.errors import ConfigError, ProtocolError
from shared.ids import is_safe_id
from shared.protocol import Chunk, Hello, decode_frame, encode_frame
from shared.protocol.messages import MsgType
from shared.schema import EpisodeSpec, FieldSpec

GOOD = ["arm-01", "arm_1.a", "a", "A9", "x" * 128, "-x", "a..b"]
BAD = [".", "..", "../x", "a/b", "/etc", ".hidden", "", "x" * 129, "arm 1", "ärm", "a\\b", "a\x00"]


def test_one_id_rule() -> None:
    assert all(is_safe_id(i) for i in GOOD)
    assert not any(is_safe_id(i) for i in BAD)


def _parse(typ: MsgType, meta: dict) -> object:
    from shared.protocol import Limits
    from shared.protocol.messages import PARSERS

    return PARSERS[typ].parse(decode_frame(encode_frame(typ, meta, b""), Limits()))


@pytest.mark.parametrize("bad", ["..", "../../x", "a/b", ".x"])
def test_wire_refuses_path_like_ids(bad: str) -> None:
    with pytest.raises(ProtocolError, match="episode_id") as e:
        _parse(MsgType.CHUNK, {"seq": 1, "episode_id": bad, "rows": 1, "raw_size": 1, "crc32": 0})
    assert e.value.code == "bad_meta"
    with pytest.raises(ProtocolError, match="robot_id"):
        _parse(MsgType.HELLO, {"robot_id": bad, "versions": [1], "spec": {}})
    assert isinstance(_parse(MsgType.CHUNK, {"seq": 1, "episode_id": "arm_1.a", "rows": 1, "raw_size": 1, "crc32": 0}), Chunk)
    assert isinstance(_parse(MsgType.HELLO, {"robot_id": "arm_1.a", "versions": [1], "spec": {}}), Hello)


@pytest.mark.parametrize("bad", ["..", ".", ".arm", "a/b"])
def test_config_and_registry_refuse_path_like_robot_ids(tmp_path: Path, bad: str) -> None:
    from cloud.robots import RobotRegistry
    from shared.config import AgentConfig, validate

    with pytest.raises(ConfigError, match="robot_id"):
        validate(AgentConfig, {"robot_id": bad})
    reg = RobotRegistry(tmp_path / "robots.json")
    with pytest.raises(ConfigError, match="robot name"):
        reg.add(bad)
    assert not (tmp_path / "robots.json").exists()
    validate(AgentConfig, {"robot_id": "arm_1.a"})


SPEC = EpisodeSpec(observation={"q": FieldSpec((2,))}, action_dim=1, action_low=(-1.0,), action_high=(1.0,))


def _steps(n: int) -> list[StepRecord]:
    obs = {"q": np.zeros(2, np.float32)}
    return [StepRecord(obs, np.zeros(1, np.float32), 0.0, obs, i == n - 1, False, step=i, t_ns=1_000 + i) for i in range(n)]


def _export(run_dir: Path, out: Path, *extra: str):
    from cloud.export.cli import export

    app = typer.Typer()
    app.command()(export)
    return CliRunner().invoke(app, [str(run_dir), "--out", str(out), *extra])


def test_export_never_writes_outside_out(tmp_path: Path) -> None:
    """Rows stored before ids were checked (or written by hand) cannot steer the export's paths."""
    from cloud.buffer.replay import ReplayBuffer

    run = tmp_path / "run"
    buf = ReplayBuffer(run / "buffer", memory_capacity=100)
    buf.check_spec(SPEC)
    buf.write([("ok-robot", 1, build_batch(SPEC, "ok-robot", "ep1", _steps(3)))])
    buf.write([("..", 1, build_batch(SPEC, "..", "../../escaped", _steps(3)))])
    out = tmp_path / "a" / "b" / "out"
    res = _export(run, out)
    assert res.exit_code == 2, res.output
    assert "not a safe id" in res.output and "'..'" in res.output
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.mcap"))
    assert written == [], f"a refused export wrote {written}"
    # The safe episodes can still be exported by selecting them.
    res = _export(run, out, "--robot", "ok-robot")
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(out) for p in out.rglob("*.mcap")) == [Path("ok-robot/ep1.mcap")]


def test_episode_path_stays_under_out(tmp_path: Path) -> None:
    from cloud.export.mcap_export import episode_path

    assert episode_path(tmp_path, "arm_1.a", "ep-1") == tmp_path / "arm_1.a" / "ep-1.mcap"
    for rid, eid in (("..", "x"), ("r", "../../x"), ("r/..", "x"), ("r", "/abs"), (".", "x")):
        with pytest.raises(ConfigError, match="export"):
            episode_path(tmp_path, rid, eid)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "linked").symlink_to(tmp_path / "elsewhere")  # a planted symlink is not followed out
    with pytest.raises(ConfigError, match="outside"):
        episode_path(tmp_path / "out", "linked", "ep")
