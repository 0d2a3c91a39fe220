"""``cloud-learner classifier train``: a success classifier from a run's labelled frames (HIL-SERL).

Each stored row gives one example: its next frame of each chosen camera (the
state the step led to, which the row's ``success`` describes and which
``reward = "classifier"`` judges) and its label, the row's ``success`` column
or, with ``--label human``, ``human_reward > 0`` (frames people marked).
Registered in cloud/cli.py with ``app.add_typer(classifier_app, name="classifier")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer

from shared.errors import ConfigError, FleetError
from shared.schema import NEXT_PREFIX, OBS_PREFIX, EpisodeSpec

from .buffer.images import table_frames
from .buffer.storage import MANIFEST, SEGMENTS, read_manifest, segment_path
from .export.episodes import buffer_root

classifier_app = typer.Typer(help="Success classifiers: reward = \"classifier\" (HIL-SERL).", no_args_is_help=True)
LABELS = ("success", "human")


@dataclass
class Frames:
    frames: dict[str, np.ndarray]  # camera -> uint8 [N, H, W, C], each row's next frame
    labels: np.ndarray  # [N] 0/1
    episodes: np.ndarray  # [N] "robot/episode": the held-out split keeps episodes whole
    segments: int


def _spec_of(root: Path) -> EpisodeSpec:
    manifest = read_manifest(root)
    if manifest is None or manifest.spec is None:
        raise ConfigError(f"--data: the buffer at {root} holds no data yet")
    return EpisodeSpec.from_dict(manifest.spec).current()


def segment_files(paths: list[Path]) -> Iterator[tuple[EpisodeSpec, Path]]:
    """(the run's spec, segment file) for each run data_dir (all its sealed segments) or segment file."""
    for p in paths:
        if p.is_file():
            root = p.parent.parent  # <buffer>/segments/<file>: the manifest holds the spec of its frames
            if p.parent.name != SEGMENTS or not (root / MANIFEST).is_file():
                raise ConfigError(f"--data {p}: a segment file must lie in its run's {SEGMENTS}/ directory, "
                                  f"beside the buffer's {MANIFEST} (which says what its frames are)")
            yield _spec_of(root), p
        elif p.is_dir():
            root = buffer_root(p)
            spec = _spec_of(root)
            manifest = read_manifest(root)
            assert manifest is not None
            for seg in manifest.segments:
                yield spec, segment_path(root, seg)
        else:
            raise ConfigError(f"--data {p}: no such run directory or segment file")


def read_frames(spec: EpisodeSpec, path: Path, cameras: list[str], label: str, keep: float = 1.0,
                rng: np.random.Generator | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The next frames of the rows whose next frame is known in one segment, their labels and episodes:
    every success row, and each other row with probability ``keep`` (success frames are the rare ones)."""
    unknown = [c for c in cameras if c not in spec.image_fields]
    if unknown:
        raise ConfigError(f"--camera {unknown[0]!r}: the run records no such camera (cameras: {spec.image_fields})")
    names = set(pq.read_schema(path).names)
    want = ["robot_id", "episode_id", "step", "success", "human_reward"] + [p + c for c in cameras for p in (OBS_PREFIX, NEXT_PREFIX)]
    table = pq.read_table(path, columns=[c for c in want if c in names])
    if label == "human":
        y = (table.column("human_reward").to_numpy() > 0 if "human_reward" in names
             else np.zeros(table.num_rows, bool))
    else:
        y = table.column("success").to_numpy(zero_copy_only=False).astype(bool)
    tf = table_frames(table, spec, cameras)
    take = tf.valid & (y | ((rng or np.random.default_rng(0)).random(len(y)) < keep) if keep < 1 else tf.valid)
    rows = np.flatnonzero(take)
    episodes = np.char.add(np.char.add(np.asarray(table.column("robot_id").to_pylist(), dtype=str), "/"),
                           np.asarray(table.column("episode_id").to_pylist(), dtype=str))
    out = {}
    for c in cameras:
        shape = spec.observation[c].shape
        obs, nxt = np.empty((len(rows), *shape), np.uint8), np.empty((len(rows), *shape), np.uint8)
        tf.gather(c, rows, obs, nxt)
        out[c] = nxt
    return out, y[rows].astype(np.int64), episodes[rows]


def labelled_frames(paths: list[Path], cameras: list[str], label: str,
                    progress: Callable[[], None] | None = None, max_frames: int | None = None,
                    seed: int = 0) -> Frames:
    """Every stored row's next frames of ``cameras`` and its label, over all ``paths`` (about
    ``max_frames`` of them at most, keeping every success frame)."""
    files = list(segment_files(paths))
    total = sum(pq.read_metadata(path).num_rows for _, path in files)
    keep = 1.0 if max_frames is None or total <= max_frames else max_frames / total
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
    labels: list[np.ndarray] = []
    episodes: list[np.ndarray] = []
    for spec, path in files:
        frames, y, ep = read_frames(spec, path, cameras, label, keep, rng)
        episodes.append(ep)
        for c in cameras:
            if parts[c] and parts[c][0].shape[1:] != frames[c].shape[1:]:
                raise ConfigError(f"--data: camera {c!r} is {frames[c].shape[1:]} in {path}, "
                                  f"{parts[c][0].shape[1:]} in earlier segments")
            parts[c].append(frames[c])
        labels.append(y)
        if progress is not None:
            progress()
    if not labels:
        return Frames({}, np.zeros(0, np.int64), np.zeros(0, str), 0)
    return Frames({c: np.concatenate(v) for c, v in parts.items()}, np.concatenate(labels), np.concatenate(episodes),
                  len(files))


@classifier_app.command("train")
def train(
    data: list[Path] = typer.Option(..., "--data", help="a run's data_dir or Parquet segment files (repeatable)"),
    camera: list[str] = typer.Option(..., "--camera", help="camera field the classifier reads (repeatable)"),
    out: Path = typer.Option(..., "--out", "-o", help="the classifier file to write (safetensors)"),
    label: str = typer.Option("success", "--label", help="success (rows' success column) or human "
                              "(human_reward > 0: frames people labelled)"),
    epochs: int = typer.Option(30, "--epochs", min=1, max=10_000, help="passes over the training frames"),
    heldout: float = typer.Option(0.2, "--heldout", min=0.05, max=0.5, help="share of the episodes held out"),
    max_frames: int = typer.Option(200_000, "--max-frames", min=10, help="read about this many frames at most "
                                   "(every success frame, a random share of the others)"),
    seed: int = typer.Option(0, help="seed for the split, the network and the augmentation"),
) -> None:
    """Train a success classifier on stored frames and write it for learner.classifier."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .learner.classifier import TrainSettings, save_classifier, train_classifier

    if label not in LABELS:
        typer.echo(f"cloud-learner classifier train: --label must be one of {', '.join(LABELS)}, not {label!r}", err=True)
        raise typer.Exit(2)
    if len(set(camera)) != len(camera):
        typer.echo("cloud-learner classifier train: a --camera is named twice", err=True)
        raise typer.Exit(2)
    if out.is_dir():  # said before the reading and training, not after
        typer.echo(f"cloud-learner classifier train: --out {out} is a directory; name the file to write", err=True)
        raise typer.Exit(2)
    console = Console(stderr=True)
    cols = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    try:
        with Progress(*cols, console=console, transient=False) as bar:
            files = len(list(segment_files(data)))
            reading = bar.add_task("reading frames", total=files, note="")
            got = labelled_frames(data, camera, label, lambda: bar.advance(reading), max_frames, seed)
            n, pos = len(got.labels), int(got.labels.sum())
            if n == 0:
                raise ConfigError(f"--data: no frames of {camera} in {got.segments} segment(s)")
            if pos < 2 or n - pos < 2:
                raise ConfigError(f"--label {label}: the frames need both classes, at least 2 of each; "
                                  f"found {pos} success and {n - pos} other frames of {n}")
            fitting = bar.add_task("training", total=epochs, note="")
            model, report = train_classifier(
                got.frames, got.labels, TrainSettings(epochs=epochs, heldout=heldout, seed=seed),
                progress=lambda e, _n, loss: bar.update(fitting, completed=e, note=f"loss {loss:.3f}"),
                groups=got.episodes)
    except FleetError as e:
        typer.echo(f"cloud-learner classifier train: {e}", err=True)
        raise typer.Exit(2) from None
    except (OSError, pa.ArrowException) as e:  # a damaged or unreadable segment
        typer.echo(f"cloud-learner classifier train: cannot read the data: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        save_classifier(model, out, {"label": label, "frames": n, "positives": pos, "report": report.to_dict()})
    except FleetError as e:
        typer.echo(f"cloud-learner classifier train: {e}", err=True)
        raise typer.Exit(2) from None
    h, t = report.heldout, report.train
    typer.echo(f"classifier on {', '.join(camera)}: {n} frames ({pos} success), {epochs} epochs\n"
               f"  held-out: accuracy {h.accuracy:.3f}, balanced {h.balanced_accuracy:.3f}, precision "
               f"{h.precision:.3f}, recall {h.recall:.3f} ({h.frames} frames)\n"
               f"  train:    accuracy {t.accuracy:.3f}, balanced {t.balanced_accuracy:.3f}\n"
               f"wrote {out}; use it with learner.reward = \"classifier\", learner.classifier = \"{out}\"")
