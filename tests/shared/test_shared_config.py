"""Behaviour tests for the TOML config loader (AgentConfig, LearnerConfig)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.config import AgentConfig, LearnerConfig, load
from shared.errors import ConfigError

AGENT_TOML = """
robot_id = "arm-01.lab_A"
state_dir = "state-here"

[link]
url = "wss://learner.example.org:8765/ws"
reconnect_min_s = 0.5
reconnect_max_s = 30.0

[robot]
driver = "mujoco_fetch"
name = "left"
options = { task = "reach", anything = [1, 2, 3] }

[control]
rate_hz = 10.0
chunk_steps = 100
max_episodes = 3
deterministic = true
seed = 42

[spool]
dir = "spool-dir"
fsync = "never"
segment_bytes = 1048576
"""

LEARNER_TOML = """
data_dir = "runs/exp1"

[server]
host = "0.0.0.0"
allow_insecure = true
port = 9000

[limits]
max_frame_bytes = 2097152
max_chunk_rows = 500

[learner]
batch_size = 64
hidden = [32, 32, 32]
gamma = 0.99
observation_fields = ["joints"]
"""


def write(tmp_path: Path, text: str, name: str = "cfg.toml") -> Path:
    p = tmp_path / "conf" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def config_error(model, path) -> str:
    with pytest.raises(ConfigError) as ei:
        load(model, path)
    assert ei.value.code == "bad_config"
    return ei.value.message


# ------------------------------------------------------------------ valid files


def test_agent_config_loads_and_resolves_paths_against_the_file(tmp_path, monkeypatch):
    p = write(tmp_path, AGENT_TOML)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load(AgentConfig, p)
    assert cfg.robot_id == "arm-01.lab_A"
    assert cfg.link.url == "wss://learner.example.org:8765/ws"
    assert cfg.link.reconnect_min_s == 0.5 and cfg.link.reconnect_max_s == 30.0
    assert cfg.link.status_interval_s == 2.0  # default kept
    assert cfg.robot.options == {"task": "reach", "anything": [1, 2, 3]}
    assert (cfg.control.rate_hz, cfg.control.chunk_steps, cfg.control.max_episodes) == (10.0, 100, 3)
    assert cfg.control.deterministic is True and cfg.control.seed == 42
    assert cfg.spool.fsync == "never" and cfg.spool.segment_bytes == 1 << 20
    base = p.parent.resolve()
    assert cfg.spool.dir == base / "spool-dir"
    assert cfg.state_dir == base / "state-here"
    assert cfg.spool.dir.is_absolute() and cfg.state_dir.is_absolute()


def test_relative_config_path_still_gives_absolute_resolved_paths(tmp_path, monkeypatch):
    p = write(tmp_path, AGENT_TOML)
    monkeypatch.chdir(tmp_path)
    cfg = load(AgentConfig, Path("conf") / p.name)
    assert cfg.spool.dir == (tmp_path / "conf" / "spool-dir").resolve()
    assert cfg.spool.dir.is_absolute()
    cfg2 = load(AgentConfig, str(Path("conf") / p.name))
    assert cfg2.spool.dir == cfg.spool.dir


def test_absolute_paths_are_kept(tmp_path):
    target = tmp_path / "abs-spool"
    p = write(tmp_path, f'robot_id = "r1"\n[spool]\ndir = "{target}"\n')
    assert load(AgentConfig, p).spool.dir == target


def test_defaults_are_resolved_too(tmp_path):
    p = write(tmp_path, 'robot_id = "r1"\n')
    cfg = load(AgentConfig, p)
    assert cfg.spool.dir == p.parent.resolve() / "spool"
    assert cfg.state_dir == p.parent.resolve() / "state"
    assert cfg.link.url.startswith("ws://")


def test_learner_config_loads(tmp_path):
    p = write(tmp_path, LEARNER_TOML, "learner.toml")
    cfg = load(LearnerConfig, p)
    assert cfg.data_dir == p.parent.resolve() / "runs" / "exp1"
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", 9000)
    assert cfg.limits.max_frame_bytes == 2 << 20 and cfg.limits.max_chunk_rows == 500
    assert cfg.limits.max_inflight_chunks == 16
    assert cfg.learner.batch_size == 64 and cfg.learner.hidden == [32, 32, 32]
    assert cfg.learner.gamma == 0.99 and cfg.learner.observation_fields == ["joints"]
    assert cfg.learner.algorithm == "sac"


def test_empty_learner_file_gives_defaults(tmp_path):
    cfg = load(LearnerConfig, write(tmp_path, ""))
    assert cfg.server.port == 8765 and cfg.learner.batch_size == 256
    assert cfg.data_dir.is_absolute() and cfg.data_dir.name == "run"


# --------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "model, text, key",
    [
        (AgentConfig, 'robot_id = "r"\nrobot_idd = "x"\n', "robot_idd"),
        (AgentConfig, 'robot_id = "r"\n[link]\nurll = "ws://x"\n', "link.urll"),
        (AgentConfig, 'robot_id = "r"\n[control]\nrate = 5\n', "control.rate"),
        (AgentConfig, 'robot_id = "r"\n[spool]\nfsnyc = "always"\n', "spool.fsnyc"),
        (AgentConfig, 'robot_id = "r"\n[linkk]\nurl = "ws://x"\n', "linkk"),
        (LearnerConfig, "[learner]\nbatchsize = 5\n", "learner.batchsize"),
        (LearnerConfig, "[server]\nhost = 'x'\nprot = 1\n", "server.prot"),
    ],
)
def test_unknown_key_is_named_with_dotted_path(tmp_path, model, text, key):
    p = write(tmp_path, text)
    msg = config_error(model, p)
    assert f"{key}: unknown key" in msg
    assert str(p) in msg


@pytest.mark.parametrize(
    "model, text, key",
    [
        (AgentConfig, 'robot_id = "r"\n[control]\nchunk_steps = 0\n', "control.chunk_steps"),
        (AgentConfig, 'robot_id = "r"\n[control]\nchunk_steps = "many"\n', "control.chunk_steps"),
        (AgentConfig, 'robot_id = "r"\n[control]\nchunk_steps = 10001\n', "control.chunk_steps"),
        (AgentConfig, 'robot_id = "r"\n[link]\nreconnect_min_s = -1\n', "link.reconnect_min_s"),
        (AgentConfig, 'robot_id = "r"\n[spool]\nfsync = "sometimes"\n', "spool.fsync"),
        (AgentConfig, 'robot_id = "r"\nlink = 5\n', "link"),
        (AgentConfig, "robot_id = 5\n", "robot_id"),
        (LearnerConfig, "[server]\nport = 70000\n", "server.port"),
        (LearnerConfig, "[learner]\ngamma = 1.5\n", "learner.gamma"),
        (LearnerConfig, "[learner]\nalgorithm = 'ppo'\n", "learner.algorithm"),
        (LearnerConfig, "[learner]\nhidden = [32, 'x']\n", "learner.hidden.1"),
        (LearnerConfig, "[limits]\nmax_frame_bytes = 10\n", "limits.max_frame_bytes"),
    ],
)
def test_bad_value_names_the_key(tmp_path, model, text, key):
    p = write(tmp_path, text)
    msg = config_error(model, p)
    assert f"{key}: " in msg
    assert "unknown key" not in msg


def test_several_errors_are_counted(tmp_path):
    msg = config_error(AgentConfig, write(tmp_path, 'robot_id = "r"\n[control]\nchunk_steps = 0\nrate_hz = -1\nbogus = 1\n'))
    assert "(and 2 more)" in msg


def test_missing_required_robot_id(tmp_path):
    msg = config_error(AgentConfig, write(tmp_path, '[link]\nurl = "ws://x"\n'))
    assert "robot_id" in msg


def test_missing_file_names_the_path(tmp_path):
    p = tmp_path / "nope" / "agent.toml"
    msg = config_error(AgentConfig, p)
    assert str(p) in msg


@pytest.mark.parametrize("text", ['robot_id = "unterminated\n', "robot_id = \n", "[link\n", 'a = 1\na = 2\n', "= 3\n"])
def test_invalid_toml_names_the_path(tmp_path, text):
    p = write(tmp_path, text)
    msg = config_error(AgentConfig, p)
    assert str(p) in msg and "TOML" in msg


def test_non_utf8_file_is_a_config_error(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes('robot_id = "r\u00f6bot"\n'.encode("latin-1"))
    assert str(p) in config_error(AgentConfig, p)


def test_directory_path_is_a_config_error(tmp_path):
    assert str(tmp_path) in config_error(AgentConfig, tmp_path)


@pytest.mark.parametrize("robot_id", ["", "a b", "a/b", "robot\n", "r\u00f6bot", "x" * 129, "a:b", "a*"])
def test_robot_id_pattern_is_enforced(tmp_path, robot_id):
    p = write(tmp_path, f"robot_id = {json.dumps(robot_id)}\n")  # JSON string escapes are valid TOML
    assert "robot_id" in config_error(AgentConfig, p)


@pytest.mark.parametrize("robot_id", ["a", "A-Z_0.9", "x" * 128])
def test_valid_robot_ids(tmp_path, robot_id):
    assert load(AgentConfig, write(tmp_path, f'robot_id = "{robot_id}"\n')).robot_id == robot_id


@pytest.mark.parametrize("url", ["http://host/ws", "https://host/ws", "host:8765", "", "WS://host", " ws://host", "tcp://x"])
def test_link_url_must_be_websocket(tmp_path, url):
    msg = config_error(AgentConfig, write(tmp_path, f'robot_id = "r"\n[link]\nurl = "{url}"\n'))
    assert "link.url" in msg


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8765/ws", "wss://learner.example.org/ws"])
def test_link_url_accepts_ws_and_wss(tmp_path, url):
    assert load(AgentConfig, write(tmp_path, f'robot_id = "r"\n[link]\nurl = "{url}"\n')).link.url == url


def test_path_lists_resolve_against_the_file_too(tmp_path, monkeypatch):
    p = write(tmp_path, f'[learner]\ndemo_paths = ["demos/a", "{tmp_path / "abs"}"]\n')
    monkeypatch.chdir(tmp_path)
    cfg = load(LearnerConfig, p)
    assert cfg.learner.demo_paths == [p.parent.resolve() / "demos" / "a", tmp_path / "abs"]
