"""MCAP export read back with the mcap reader and decoded by mcap-ros2-support."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cloud.buffer.replay import ReplayBuffer
from shared.chunk import StepRecord, build_batch
from shared.schema import EpisodeSpec, FieldSpec

SPEC = EpisodeSpec(
    observation={
        "q": FieldSpec((3,)),
        "cam": FieldSpec((6, 8, 3), "uint8", codec="raw"),
        "wrist": FieldSpec((6, 8, 1), "uint8", codec="png"),
    },
    action_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0),
)


def _obs(rng, k):
    return {
        "q": rng.standard_normal(3).astype(np.float32),
        "cam": rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
        "wrist": np.full((6, 8, 1), k, np.uint8),
    }


def _episode(rng, n, version):
    steps, obs = [], _obs(rng, 0)
    for i in range(n):
        nxt = _obs(rng, i + 1)
        steps.append(StepRecord(obs=obs, action=rng.uniform(-1, 1, 2).astype(np.float32), reward=float(i) / 10,
                                next_obs=nxt, terminated=i == n - 1, truncated=False, success=i == n - 1,
                                policy_version=version, step=i, t_ns=1_700_000_000_000_000_000 + i * 40_000_000))
        obs = nxt
    return steps


@pytest.fixture
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(tmp_path / "buffer", memory_capacity=1000)
    buf.check_spec(SPEC)
    a, b = _episode(rng, 7, 1), _episode(rng, 4, 2)
    # episode A spans two chunks in two segments, as a real upload does
    buf.write([("arm-1", 1, build_batch(SPEC, "arm-1", "epA", a[:5])), ("arm-2", 1, build_batch(SPEC, "arm-2", "epB", b))])
    buf.write([("arm-1", 2, build_batch(SPEC, "arm-1", "epA", a[5:]))])
    return tmp_path


def _read(path: Path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(path, "rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        out: dict[str, list] = {}
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            assert channel.message_encoding == "cdr" and schema.encoding == "ros2msg"
            out.setdefault(channel.topic, []).append((schema.name, message.log_time, decoded))
        return out


def _buffer_rows(root: Path):
    rows = []
    for seg in sorted((root / "buffer" / "segments").glob("*.parquet")):
        rows += pq.read_table(seg).to_pylist()
    return rows


def test_mcap_export_matches_the_buffer(run_dir, tmp_path):
    from cloud.export.cli import export

    app_runner = CliRunner()
    import typer

    app = typer.Typer()
    app.command()(export)
    before = sorted(p.name for p in (run_dir / "buffer" / "segments").iterdir())
    res = app_runner.invoke(app, [str(run_dir), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "exported 2 episodes (11 steps)" in res.output
    assert sorted(p.name for p in (run_dir / "buffer" / "segments").iterdir()) == before  # read-only
    rows = _buffer_rows(run_dir)
    for rid, eid in (("arm-1", "epA"), ("arm-2", "epB")):
        mine = sorted((r for r in rows if r["episode_id"] == eid), key=lambda r: r["step"])
        n = len(mine)
        got = _read(tmp_path / "out" / rid / f"{eid}.mcap")
        assert {k: len(v) for k, v in got.items()} == {
            "/fleetrl/obs/q": n + 1, "/fleetrl/obs/cam": n + 1, "/fleetrl/obs/wrist": n + 1,
            "/fleetrl/action": n, "/fleetrl/reward": n, "/fleetrl/step": n, "/fleetrl/policy_action": n,
        }
        for i, r in enumerate(mine):
            assert got["/fleetrl/action"][i][1] == r["t_ns"]
            assert got["/fleetrl/action"][i][2].data == pytest.approx(r["action"])
            assert got["/fleetrl/reward"][i][2].data == pytest.approx(r["reward"])
            assert got["/fleetrl/obs/q"][i][0] == "std_msgs/msg/Float32MultiArray"
            assert list(got["/fleetrl/obs/q"][i][2].data) == pytest.approx(r["obs.q"])
            img = got["/fleetrl/obs/cam"][i]
            assert img[0] == "sensor_msgs/msg/Image" and img[2].encoding == "rgb8" and (img[2].height, img[2].width) == (6, 8)
            assert bytes(img[2].data) == r["obs.cam"]
            wrist = got["/fleetrl/obs/wrist"][i]
            assert wrist[0] == "sensor_msgs/msg/CompressedImage" and wrist[2].format == "png"
            assert bytes(wrist[2].data) == r["obs.wrist"]
            info = json.loads(got["/fleetrl/step"][i][2].data)
            assert info == {k: r[k] for k in ("step", "policy_version", "terminated", "truncated", "success", "intervention",
                                              "stream_seq", "demo", "human_reward")}
            assert got["/fleetrl/policy_action"][i][2].data == pytest.approx(r["policy_action"])
        assert list(got["/fleetrl/obs/q"][n][2].data) == pytest.approx(mine[-1]["next_obs.q"])
        assert bytes(got["/fleetrl/obs/cam"][n][2].data) == mine[-1]["next_obs.cam"]
        assert got["/fleetrl/obs/q"][n][1] > mine[-1]["t_ns"]


def test_export_selects_and_reports_clearly(run_dir, tmp_path):
    import typer

    from cloud.export.cli import export

    app = typer.Typer()
    app.command()(export)
    runner = CliRunner()
    res = runner.invoke(app, [str(run_dir), "-o", str(tmp_path / "o"), "--robot", "arm-2"])
    assert res.exit_code == 0 and "exported 1 episodes (4 steps)" in res.output
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["arm-2"]
    res = runner.invoke(app, [str(run_dir), "-o", str(tmp_path / "o2"), "--episode", "nope"])
    assert res.exit_code == 1 and "no episode matched" in res.output
    res = runner.invoke(app, [str(tmp_path / "empty"), "-o", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "no buffer manifest" in res.output
    res = runner.invoke(app, [str(run_dir), "-o", str(tmp_path / "o4"), "--format", "lerobot"])
    assert res.exit_code == 2 and "lerobot is not supported" in res.output and not (tmp_path / "o4").exists()
    res = runner.invoke(app, [str(run_dir), "-o", str(tmp_path / "o5"), "--format", "csv"])
    assert res.exit_code == 2 and "--format must be one of" in res.output


def test_mcap_frames_follow_the_frames_stored_once_rule(run_dir, tmp_path):
    """Each step's next frame in the buffer (rebuilt by shared.frames) is the frame MCAP shows one step later."""
    import pyarrow as pa

    from cloud.export.cli import export
    from shared.frames import table_frames

    import typer

    app = typer.Typer()
    app.command()(export)
    assert CliRunner().invoke(app, [str(run_dir), "--out", str(tmp_path / "out")]).exit_code == 0
    segs = sorted((run_dir / "buffer" / "segments").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(s) for s in segs])
    ep = table.filter(pa.compute.equal(table.column("episode_id"), "epA"))
    assert ep.column("next_obs.cam").null_count == ep.num_rows - 2  # two chunks, a frame on each one's last row
    obs, nxt = table_frames(ep, "cam", SPEC.observation["cam"])
    got = [np.frombuffer(bytes(m[2].data), np.uint8).reshape(6, 8, 3) for m in _read(tmp_path / "out" / "arm-1" / "epA.mcap")["/fleetrl/obs/cam"]]
    np.testing.assert_array_equal(np.stack(got[:-1]), obs)
    np.testing.assert_array_equal(np.stack(got[1:]), nxt)
