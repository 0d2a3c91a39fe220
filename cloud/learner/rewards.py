"""What reward the learner trains on (``learner.reward``).

``env``: the driver's ``reward`` column. ``human``: the ``human_reward`` column
(labels from people: keyboard, ROS 2, episode buttons), applied to each sampled
batch; the driver's reward is not read. ``classifier``: a success classifier on
camera frames (:mod:`cloud.learner.classifier`) scores each row once, as the
replay buffer indexes it (:class:`ClassifierRelabel`); the driver's reward is
not read, and the classifier ships with every policy.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from shared.config import LearnerAlgoConfig
from shared.errors import ConfigError, SchemaError
from shared.frames import table_frames
from shared.observations import image_shapes
from shared.schema import EpisodeSpec
from shared.success_classifier import PREFIX, SuccessClassifier

from .classifier import check_cameras, load_classifier


class RewardSource(Protocol):
    name: str

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch with ``reward`` (and, for a classifier, ``terminated`` on success) replaced."""
        ...

    def publish_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors and arch entries shipped to robots with each policy (empty unless a classifier)."""
        ...


class ColumnReward:
    """Reward read from a stored column."""

    def __init__(self, name: str, column: str):
        self.name, self.column = name, column

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.column == "reward":
            return batch
        out = dict(batch)
        out["reward"] = batch[self.column].to(torch.float32)
        return out

    def publish_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {}, {}


class ClassifierReward:
    """Rows were scored by the classifier as they were indexed (:class:`ClassifierRelabel`): batches pass
    through; what this adds is the classifier itself, shipped with every policy so robots end episodes on
    success (HIL-SERL)."""

    name = "classifier"

    def __init__(self, model: SuccessClassifier, threshold: float):
        self.model, self.threshold = model, float(threshold)

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return batch

    def publish_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {PREFIX + k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return tensors, {"classifier": {**self.model.arch(), "threshold": self.threshold}}


class ClassifierRelabel:
    """Scores each stored row once, as the replay buffer indexes it: reward 1 where the classifier's
    probability on the row's next frames exceeds the threshold, else 0, and success ends the episode
    (``terminated``). Memory's copy only: the segments on disk keep what robots sent. Once per row
    rather than once per sampled batch: a batch of 256 64x64 frames costs ~75 ms on one CPU thread,
    five times an SAC update, while a row is indexed once."""

    BATCH = 256

    def __init__(self, model: SuccessClassifier, threshold: float):
        self.model, self.threshold = model.eval(), float(threshold)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def check(self, spec: EpisodeSpec) -> None:
        """The run's robots record every camera the classifier reads, at its size (SchemaError naming them)."""
        try:
            check_cameras(self.model.encoder.views, image_shapes(spec), "learner.classifier")
        except ConfigError as e:
            raise SchemaError(str(e), code="spec_mismatch") from None

    def __call__(self, table: pa.Table, spec: EpisodeSpec) -> pa.Table:
        n = table.num_rows
        if n == 0:
            return table
        frames = {cam: table_frames(table, cam, spec.observation[cam])[1] for cam in self.model.cameras}
        hit = np.empty(n, bool)
        with torch.no_grad():
            for lo in range(0, n, self.BATCH):
                part = {cam: torch.from_numpy(f[lo:lo + self.BATCH]) for cam, f in frames.items()}
                hit[lo:lo + self.BATCH] = (self.model.probability(part) > self.threshold).numpy()
        names = table.schema.names
        table = table.set_column(names.index("reward"), "reward", pa.array(hit.astype(np.float32)))
        done = pc.or_(table.column("terminated"), pa.array(hit))
        return table.set_column(names.index("terminated"), "terminated", done)


def build_reward(cfg: LearnerAlgoConfig) -> RewardSource:
    """The reward source the config names (the classifier file is loaded and checked here)."""
    if cfg.reward == "env":
        return ColumnReward("env", "reward")
    if cfg.reward == "human":
        return ColumnReward("human", "human_reward")
    return ClassifierReward(classifier_model(cfg), cfg.classifier_threshold)


def table_relabel(cfg: LearnerAlgoConfig) -> ClassifierRelabel | None:
    """What the replay buffer applies to rows as it indexes them (None unless ``reward = "classifier"``)."""
    if cfg.reward != "classifier":
        return None
    if cfg.history_fraction > 0:
        raise ConfigError('learner.history_fraction > 0 with reward = "classifier": rows sampled from disk are not '
                          "scored by the classifier; set history_fraction = 0")
    return ClassifierRelabel(classifier_model(cfg), cfg.classifier_threshold)


def classifier_model(cfg: LearnerAlgoConfig) -> SuccessClassifier:
    """``learner.classifier`` loaded and checked (its cameras against a run's: ``ClassifierRelabel.check``)."""
    if cfg.classifier is None:
        raise ConfigError('learner.reward = "classifier" needs learner.classifier: the trained classifier file '
                          "(cloud-learner classifier train --out ...)")
    try:
        model = load_classifier(cfg.classifier)
    except ConfigError as e:
        raise ConfigError(f"learner.classifier: {e}") from None
    return model
