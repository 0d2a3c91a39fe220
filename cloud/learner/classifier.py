"""The success classifier of ``reward = "classifier"`` (HIL-SERL): training, and its file.

A classifier is trained once from labelled frames (``cloud-learner classifier
train``), saved as safetensors with its arch and a format version in the
metadata, and loaded by the learner, which rewards frames it sees as a
success and ships it to robots with each policy. Loading rebuilds the network
from the arch and refuses a file whose tensors do not match it, so a stale or
foreign file fails at start with a message instead of training on noise.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from shared.errors import ConfigError
from shared.policy import View
from shared.success_classifier import (
    DEFAULT_CHANNELS,
    DEFAULT_HIDDEN,
    DEFAULT_LATENT,
    SuccessClassifier,
    build,
    check_arch,
    shapes,
)

from .augment import random_shift

FORMAT = "fleetrl.classifier"
FORMAT_VERSION = 1


def save_classifier(model: SuccessClassifier, path: Path, extra: Mapping[str, object] | None = None) -> None:
    """Write ``model`` to ``path`` (safetensors; arch, format and version in the metadata); ConfigError if it cannot."""
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "arch": json.dumps(model.arch(), sort_keys=True)}
    if extra:
        meta["training"] = json.dumps(dict(extra), sort_keys=True, default=str)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
    except (OSError, SafetensorError) as e:  # a directory, a read-only place: said, not a traceback
        raise ConfigError(f"cannot write the classifier file {path}: {e}") from None


def load_classifier(path: Path, cameras: Mapping[str, tuple[int, ...]] | None = None) -> SuccessClassifier:
    """The classifier saved at ``path``, in eval mode; ConfigError says what is wrong with the file.

    ``cameras`` (field -> (H, W, C)), where given, are the frames it will see: each camera the
    classifier reads must be among them with the same shape.
    """
    where = f"classifier file {path}"
    if not Path(path).is_file():
        raise ConfigError(f"{where} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{where} is not a readable safetensors file: {e}") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{where} is not a fleetrl success classifier (format {meta.get('format')!r}, "
                          f"expected {FORMAT!r})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise ConfigError(f"{where} has format version {meta.get('format_version')!r}; this build reads "
                          f"{FORMAT_VERSION}")
    try:
        arch = json.loads(meta.get("arch", ""))
        views = check_arch(arch)
        want = shapes(arch)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{where} carries an unusable arch: {e}") from None
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise ConfigError(f"{where}: its tensors do not match its arch (first differences: {diff})")
    if any(v.dtype != torch.float32 for v in tensors.values()) or not all(torch.isfinite(v).all() for v in tensors.values()):
        raise ConfigError(f"{where}: tensors must be finite float32")
    if cameras is not None:
        check_cameras(views, cameras, where)
    model = build(arch)
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def check_cameras(views: Sequence[View], cameras: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Each view the classifier reads is a camera in ``cameras`` of the same HxWxC, else ConfigError."""
    for name, hwc in views:
        if name not in cameras:
            raise ConfigError(f"{where} reads camera {name!r}, which the data does not have "
                              f"(cameras: {sorted(cameras)[:8]})")
        if tuple(cameras[name]) != tuple(hwc):
            raise ConfigError(f"{where} reads camera {name!r} as {'x'.join(map(str, hwc))}, the data's is "
                              f"{'x'.join(map(str, cameras[name]))}")


# ------------------------------------------------------------------ training


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-4
    heldout: float = 0.2  # share held out for the report (of the groups, or of each class's frames)
    pad: int = 4  # random shift, pixels (0: off)
    seed: int = 0
    channels: tuple[int, ...] = DEFAULT_CHANNELS
    latent: int = DEFAULT_LATENT
    hidden: tuple[int, ...] = DEFAULT_HIDDEN


@dataclass(frozen=True)
class Scores:
    frames: int
    positives: int
    accuracy: float
    balanced_accuracy: float  # mean of the two classes' recalls: chance is 0.5 however unbalanced the data
    precision: float
    recall: float


@dataclass(frozen=True)
class TrainReport:
    train: Scores
    heldout: Scores
    epochs: int
    cameras: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


Progress = Callable[[int, int, float], None]  # (epoch done, epochs, mean training loss)


def scores(prob: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> Scores:
    pred, y = prob > threshold, labels.astype(bool)
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())
    pos, neg = tp + fn, tn + fp
    rec = tp / pos if pos else 0.0
    spec = tn / neg if neg else 0.0
    return Scores(frames=len(y), positives=pos, accuracy=(tp + tn) / max(len(y), 1),
                  balanced_accuracy=(rec + spec) / 2, precision=tp / (tp + fp) if tp + fp else 0.0, recall=rec)


def split(labels: np.ndarray, heldout: float, rng: np.random.Generator,
          groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) row indices.

    With ``groups`` (e.g. episode ids), whole groups are held out: frames of one episode are
    near-duplicates, so holding out single frames would overstate accuracy. Without them, or
    where no group split leaves both classes on both sides, ``heldout`` of each class's frames.
    """
    if groups is not None:
        uniq = rng.permutation(np.unique(groups))
        k = max(1, int(round(len(uniq) * heldout)))
        held = np.isin(groups, uniq[:k])
        if len(uniq) > 1 and all(np.any(held & (labels == c)) and np.any(~held & (labels == c)) for c in (0, 1)):
            return np.flatnonzero(~held), np.flatnonzero(held)
    train, out = [], []
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        k = min(max(1, int(round(len(idx) * heldout))), len(idx) - 1)
        out.append(idx[:k])
        train.append(idx[k:])
    return np.concatenate(train), np.concatenate(out)


def check_data(frames: Mapping[str, np.ndarray], labels: np.ndarray) -> None:
    """ValueError unless the frames and labels can train a classifier (both classes, two of each)."""
    if not frames:
        raise ValueError("no camera fields given")
    n = len(labels)
    if n == 0:
        raise ValueError("no labelled frames")
    for name, f in frames.items():
        if f.dtype != np.uint8 or f.ndim != 4 or len(f) != n:
            raise ValueError(f"frames of {name!r} must be uint8 [{n}, H, W, C], got {f.dtype} {list(f.shape)}")
    pos = int((labels > 0).sum())
    if pos < 2 or n - pos < 2:
        raise ValueError(f"the labels need both classes, at least 2 frames of each: {pos} success and "
                         f"{n - pos} failure frames")


def _predict(model: SuccessClassifier, frames: Mapping[str, np.ndarray], rows: np.ndarray,
             batch: int = 256) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            r = rows[i : i + batch]
            out.append(model.probability({k: torch.from_numpy(v[r]) for k, v in frames.items()}).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def train_classifier(frames: Mapping[str, np.ndarray], labels: np.ndarray, settings: TrainSettings = TrainSettings(),
                     progress: Progress | None = None,
                     groups: np.ndarray | None = None) -> tuple[SuccessClassifier, TrainReport]:
    """Train on ``frames`` (camera field -> uint8 ``[N, H, W, C]``) and 0/1 ``labels``; report held-out scores
    (on whole ``groups``, e.g. episodes, where given).

    Batches draw both classes equally often (success frames are usually rare), and every
    frame is randomly shifted by up to ``pad`` pixels, as the policy's encoder is trained.
    """
    labels = (np.asarray(labels) > 0).astype(np.int64)
    check_data(frames, labels)
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"groups must have one entry per frame ({len(labels)}), got {len(groups)}")
    train_rows, held_rows = split(labels, settings.heldout, rng, groups)
    views = [(name, tuple(int(s) for s in f.shape[1:])) for name, f in frames.items()]
    model = SuccessClassifier(views, settings.channels, settings.latent, settings.hidden)  # type: ignore[arg-type]
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    by_class = [train_rows[labels[train_rows] == c] for c in (0, 1)]
    steps = max(1, math.ceil(len(train_rows) / settings.batch_size))
    half = max(1, settings.batch_size // 2)
    for epoch in range(settings.epochs):
        model.train()
        total = 0.0
        for _ in range(steps):
            rows = np.concatenate([rng.choice(by_class[0], half), rng.choice(by_class[1], half)])
            y = torch.from_numpy(labels[rows]).to(torch.float32)
            images = {k: random_shift(torch.from_numpy(v[rows]), settings.pad, gen) for k, v in frames.items()}
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        if progress is not None:
            progress(epoch + 1, settings.epochs, total / steps)
    report = TrainReport(train=scores(_predict(model, frames, train_rows), labels[train_rows]),
                         heldout=scores(_predict(model, frames, held_rows), labels[held_rows]),
                         epochs=settings.epochs, cameras=tuple(frames))
    return model.eval(), report
