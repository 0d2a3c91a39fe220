"""What reward the learner trains on (``learner.reward``), applied to each sampled batch.

``env``: the driver's ``reward`` column. ``human``: the ``human_reward`` column
(labels from people: keyboard, ROS 2, episode buttons); the driver's reward is
not read. ``classifier``: a success classifier on camera frames
(:mod:`cloud.learner.classifier`); the driver's reward is not read.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from shared.config import LearnerAlgoConfig
from shared.errors import ConfigError
from shared.success_classifier import PREFIX, SuccessClassifier

from ..buffer import NEXT_IMAGES, Dims
from .classifier import check_cameras, load_classifier


class RewardSource(Protocol):
    name: str

    def camera_fields(self) -> tuple[str, ...]:
        """Camera fields the buffer must serve for this reward (beyond the policy's own)."""
        ...

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

    def camera_fields(self) -> tuple[str, ...]:
        return ()

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.column == "reward":
            return batch
        out = dict(batch)
        out["reward"] = batch[self.column].to(torch.float32)
        return out

    def publish_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {}, {}


class ClassifierReward:
    """Reward 1 where the classifier sees success on the next frames, else 0; success ends the episode
    (``terminated``), as in HIL-SERL. The driver's ``reward`` column is never read."""

    name = "classifier"

    def __init__(self, model: SuccessClassifier, threshold: float, device: torch.device | str = "cpu"):
        # on the learner's device: batches arrive on the CPU (the prefetcher's), a GPU learner judges there
        self.device = torch.device(device)
        self.model, self.threshold = model.to(self.device).eval(), float(threshold)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def camera_fields(self) -> tuple[str, ...]:
        return self.model.cameras

    def success(self, batch: dict[str, Tensor]) -> Tensor:
        """Bool ``[B]``: the classifier's probability on each row's next frames exceeds the threshold."""
        missing = [cam for cam in self.model.cameras if NEXT_IMAGES + cam not in batch]
        if missing:
            raise ValueError(f"the success classifier reads camera(s) {missing}, which this batch lacks "
                             f"(the buffer must serve them: rewards.reward_camera_fields)")
        images = {cam: batch[NEXT_IMAGES + cam].to(self.device, non_blocking=True) for cam in self.model.cameras}
        with torch.no_grad():
            hit = self.model.probability(images) > self.threshold
        return hit.to(batch[NEXT_IMAGES + self.model.cameras[0]].device)  # beside the batch it relabels

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        hit = self.success(batch)
        out = dict(batch)
        out["reward"] = hit.to(torch.float32)
        if "terminated" in batch:
            term = batch["terminated"]
            out["terminated"] = torch.maximum(term, hit.to(term.dtype))
        else:
            out["terminated"] = hit.to(torch.float32)
        return out

    def publish_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {PREFIX + k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return tensors, {"classifier": {**self.model.arch(), "threshold": self.threshold}}


def build_reward(cfg: LearnerAlgoConfig, dims: Dims | None = None, device: torch.device | str = "cpu") -> RewardSource:
    """The reward source the config names (the classifier file is loaded and checked here; it runs on ``device``)."""
    if cfg.reward == "env":
        return ColumnReward("env", "reward")
    if cfg.reward == "human":
        return ColumnReward("human", "human_reward")
    return ClassifierReward(classifier_model(cfg, dims), cfg.classifier_threshold, device)


def classifier_model(cfg: LearnerAlgoConfig, dims: Dims | None = None) -> SuccessClassifier:
    """``learner.classifier`` loaded and checked (against the buffer's cameras when ``dims`` is known)."""
    if cfg.classifier is None:
        raise ConfigError('learner.reward = "classifier" needs learner.classifier: the trained classifier file '
                          "(cloud-learner classifier train --out ...)")
    try:
        model = load_classifier(cfg.classifier)
        if dims is not None:
            check_cameras(model.encoder.views, dict(dims.images), f"classifier file {cfg.classifier}")
    except ConfigError as e:
        raise ConfigError(f"learner.classifier: {e}") from None
    return model


def reward_camera_fields(cfg: LearnerAlgoConfig) -> list[str]:
    """Camera fields the buffer must serve: the policy's ``image_fields`` and, with ``reward =
    "classifier"``, the classifier's (read from its file, which is checked here)."""
    fields = list(cfg.image_fields)
    if cfg.reward == "classifier":
        fields += [c for c in classifier_model(cfg).cameras if c not in fields]
    return fields
