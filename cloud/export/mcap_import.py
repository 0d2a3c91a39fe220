"""Demonstrations from MCAP files (as ``cloud-learner export`` writes them) into a demo dataset.

A demo dataset is a fleetrl buffer directory (manifest and sealed Parquet
segments) whose rows are all tagged ``demo``: what ``learner.demo_paths``
loads. MCAP carries no action bounds and not always every field's codec, so
the spec comes from a run the demos are meant for (``like``); every file must
fit it, or nothing is written. Each file is one episode
(``<robot_id>/<episode_id>.mcap``); steps are keyed by their log time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.chunk import StepRecord, build_batch
from shared.errors import ConfigError, SchemaError
from shared.ids import is_safe_id
from shared.image_codec import decode_image
from shared.schema import EpisodeSpec, FieldSpec

OBS_TOPIC = "/fleetrl/obs/"


@dataclass
class ImportReport:
    out: Path
    episodes: int = 0
    steps: int = 0
    files: list[Path] = field(default_factory=list)


def _messages(path: Path) -> dict[str, list[tuple[int, Any]]]:
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    out: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    try:
        with open(path, "rb") as fh:
            for _schema, channel, message, decoded in make_reader(
                    fh, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
                out[channel.topic].append((int(message.log_time), decoded))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - the mcap reader raises its own types for a damaged file
        raise ConfigError(f"{path}: not a readable MCAP file: {type(e).__name__}: {e}") from None
    return out


def _value(msg: Any, fs: FieldSpec, where: str) -> np.ndarray:
    if not fs.is_image:
        v = np.asarray(msg.data, np.float32)
        if v.size != fs.size:
            raise ConfigError(f"{where}: {v.size} values, the run's field has {fs.size}")
        return v.reshape(fs.shape)
    data = bytes(msg.data)
    if hasattr(msg, "format"):  # CompressedImage: png/jpeg bytes as recorded
        try:
            return decode_image(data, fs)
        except SchemaError as e:
            raise ConfigError(f"{where}: {e.message}") from None
    if len(data) != fs.size:
        raise ConfigError(f"{where}: a {msg.height}x{msg.width} image, the run's field is {'x'.join(map(str, fs.shape))}")
    return np.frombuffer(data, np.uint8).reshape(fs.shape)


def read_episode(path: Path, spec: EpisodeSpec) -> list[StepRecord]:
    """One MCAP episode as steps tagged ``demo`` (ConfigError naming the file and what does not fit)."""
    msgs = _messages(path)
    actions = msgs.get("/fleetrl/action", [])
    if not actions:
        raise ConfigError(f"{path}: no /fleetrl/action messages: not an episode exported by fleetrl")
    times = [t for t, _ in actions]
    obs_at: dict[int, dict[str, np.ndarray]] = defaultdict(dict)
    for name, fs in spec.observation.items():
        got = msgs.get(OBS_TOPIC + name)
        if not got:
            raise ConfigError(f"{path}: no {OBS_TOPIC + name} messages; the run's fields are {list(spec.observation)}")
        for t, m in got:
            obs_at[t][name] = _value(m, fs, f"{path}: {OBS_TOPIC + name}")
    stamps = sorted(obs_at)
    if len(stamps) != len(times) + 1 or stamps[:-1] != times:
        raise ConfigError(f"{path}: {len(stamps)} observation stamps for {len(times)} actions; expected one per step "
                          "and a final one")
    missing = [t for t in stamps if len(obs_at[t]) != len(spec.observation)]
    if missing:
        raise ConfigError(f"{path}: the observation at t_ns={missing[0]} lacks fields "
                          f"{sorted(set(spec.observation) - set(obs_at[missing[0]]))}")
    rewards = dict(msgs.get("/fleetrl/reward", []))
    proposed = dict(msgs.get("/fleetrl/policy_action", []))
    info = {t: json.loads(m.data) for t, m in msgs.get("/fleetrl/step", [])}
    steps = []
    for i, (t, a) in enumerate(actions):
        action = np.asarray(a.data, np.float32)
        if action.size != spec.action_dim:
            raise ConfigError(f"{path}: actions have {action.size} values, the run's have {spec.action_dim}")
        meta = info.get(t, {})
        pa_msg = proposed.get(t)
        steps.append(StepRecord(
            obs=obs_at[stamps[i]], action=action, reward=float(rewards[t].data) if t in rewards else 0.0,
            next_obs=obs_at[stamps[i + 1]], terminated=bool(meta.get("terminated", False)),
            truncated=bool(meta.get("truncated", i == len(actions) - 1 and not meta.get("terminated", False))),
            success=bool(meta.get("success", False)), intervention=bool(meta.get("intervention", False)),
            policy_action=None if pa_msg is None else np.asarray(pa_msg.data, np.float32),
            human_reward=float(meta.get("human_reward", 0.0)), demo=True, step=i, t_ns=t))
    return steps


def _checked(path: Path, spec: EpisodeSpec) -> list[StepRecord]:
    """``read_episode``, with a message that is not what fleetrl writes (a topic of another type, a step
    that is not JSON) said as a ConfigError naming the file, not a traceback."""
    try:
        return read_episode(path, spec)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise ConfigError(f"{path}: its messages are not what `cloud-learner export` writes "
                          f"({type(e).__name__}: {e})") from None


def import_mcap(files: list[Path], spec: EpisodeSpec, out: Path, robot_id: str = "import",
                chunk_steps: int = 1000) -> ImportReport:
    """Write every file's episode into a new demo dataset at ``out``; all or nothing."""
    from cloud.buffer.replay import ReplayBuffer

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: exists and is not empty; a demo dataset is written to a new directory")
    paths = sorted({p for f in files for p in (sorted(Path(f).rglob("*.mcap")) if Path(f).is_dir() else [Path(f)])})
    if not paths:
        raise ConfigError(f"no .mcap files in {', '.join(map(str, files))}")
    spec = spec.current()  # stored in this build's layout, whatever the run was written with
    episodes = [(p, _checked(p, spec)) for p in paths]  # every file checked before anything is written
    report = ImportReport(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=out.parent))
    try:
        buf = ReplayBuffer(tmp / "buffer", memory_capacity=1)
        buf.check_spec(spec)
        seq, used = 0, set()
        for k, (path, steps) in enumerate(episodes):
            episode_id = path.stem if is_safe_id(path.stem) else f"episode-{k}"
            if episode_id in used:  # <robot>/<episode>.mcap of two robots: one robot id here, so keep them apart
                episode_id = f"episode-{k}" if len(episode_id) > 100 else f"{episode_id}-{k}"
            used.add(episode_id)
            for lo in range(0, len(steps), chunk_steps):
                seq += 1
                buf.write([(robot_id, seq, build_batch(spec, robot_id, episode_id, steps[lo:lo + chunk_steps]))])
            report.episodes += 1
            report.steps += len(steps)
            report.files.append(path)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
