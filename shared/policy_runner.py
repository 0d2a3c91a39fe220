"""Verified loading of published weights, and acting with the result.

Both a robot (edge_agent.policy_holder) and a sim rollout worker
(cloud.cluster.rollout) turn a :class:`~shared.weights.Weights` blob into a
network they act with. The checks live here once: everything that sizes
memory (layer widths, depth, parameter count) is checked against the blob's
own tensors before a network is built, the network must read fields the
robot has (state fields, and camera fields of the same HxWxC) and emit its
action size, and any failure is a WeightsError, so a bad blob never takes a
link or a worker down. What to do with a loaded policy
(atomic swap between ticks, version limits) is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from .errors import WeightsError
from .observations import ImageShape, flatten, flatten_batch
from .policy import ArchTooLarge, FlowActor, PolicyActor, actor_images, actor_shapes, build_actor, param_count
from .success_classifier import PREFIX as CLASSIFIER_PREFIX
from .success_classifier import SuccessClassifier
from .success_classifier import build as build_classifier
from .success_classifier import check_arch as check_classifier_arch
from .success_classifier import shapes as classifier_shapes
from .weights import Weights, all_finite


def _frame(a: np.ndarray) -> np.ndarray:
    # torch.from_numpy warns on read-only arrays (a renderer's buffer may be one); a frame is small to copy
    return a if a.flags.writeable else a.copy()


@dataclass(frozen=True)
class LoadedPolicy:
    """A built, loaded, eval-mode actor and what it reads; immutable, so sharing it across threads is safe."""

    version: int
    actor: PolicyActor  # a Gaussian actor (one action per inference) or a flow head (action chunks)
    obs_fields: tuple[str, ...]  # state fields, flattened in this order
    image_fields: tuple[str, ...] = ()  # camera fields, passed as uint8 [1, H, W, C] tensors
    device: torch.device = torch.device("cpu")  # where the network lives; observations go there, actions come back
    classifier: SuccessClassifier | None = None  # the learner's success classifier (reward = "classifier")
    threshold: float = 0.5  # probability above which the classifier calls a frame a success

    def success(self, obs: Mapping[str, np.ndarray]) -> bool | None:
        """Whether the classifier sees success in one observation; None without a classifier."""
        clf = self.classifier
        if clf is None:
            return None
        images = {f: torch.from_numpy(_frame(np.asarray(obs[f], np.uint8)))[None].to(self.device)
                  for f in clf.cameras}
        with torch.inference_mode():
            return bool(clf.probability(images)[0] > self.threshold)

    @property
    def horizon(self) -> int:
        """Actions per inference: the flow policy's chunk length, 1 for a Gaussian actor."""
        return self.actor.horizon if isinstance(self.actor, FlowActor) else 1

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool) -> np.ndarray:
        """The action in [-1, 1] for one observation (a flow policy's: its chunk's first)."""
        x = torch.from_numpy(flatten(obs, self.obs_fields) if self.obs_fields else np.zeros(0, np.float32))[None]
        images = {f: torch.from_numpy(_frame(np.asarray(obs[f], np.uint8)))[None] for f in self.image_fields}
        out: np.ndarray = self._act(x, images, deterministic, chunk=False)[0]
        return out

    def act_batch(self, obs: Sequence[Mapping[str, np.ndarray]], deterministic: bool = False) -> np.ndarray:
        """Actions in [-1, 1], one row per observation (a flow policy's: each chunk's first)."""
        x, images = self._inputs(obs)
        return self._act(x, images, deterministic, chunk=False)

    def act_chunk_batch(self, obs: Sequence[Mapping[str, np.ndarray]], deterministic: bool = False) -> np.ndarray:
        """Action chunks ``[B, horizon, act_dim]`` in [-1, 1], one per observation; a Gaussian actor's
        action is a chunk of one, so a chunk-executing loop drives every policy kind the same way."""
        x, images = self._inputs(obs)
        return self._act(x, images, deterministic, chunk=True)

    def _inputs(self, obs: Sequence[Mapping[str, np.ndarray]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = torch.from_numpy(flatten_batch(obs, self.obs_fields) if self.obs_fields
                             else np.zeros((len(obs), 0), np.float32))
        images = {f: torch.from_numpy(np.stack([np.asarray(o[f], np.uint8) for o in obs])) for f in self.image_fields}
        return x, images

    def _act(self, x: torch.Tensor, images: dict[str, torch.Tensor], deterministic: bool,
             chunk: bool) -> np.ndarray:
        dev = self.device
        with torch.inference_mode():
            if dev.type != "cpu":
                x, images = x.to(dev), {k: v.to(dev) for k, v in images.items()}
            if isinstance(self.actor, FlowActor):
                out = self.actor.sample(x, deterministic=deterministic, images=images or None)
                out = out if chunk else out[:, 0]
            else:
                out = self.actor.act(x, deterministic=deterministic, images=images or None)
                out = out[:, None] if chunk else out
            result: np.ndarray = out.cpu().numpy()
        return result


def load_policy(weights: Weights, state_fields: Mapping[str, int], action_dim: int, max_params: int,
                limit_name: str = "link.max_policy_params",
                image_fields: Mapping[str, ImageShape] | None = None,
                device: torch.device = torch.device("cpu")) -> LoadedPolicy:
    """Check, build and load ``weights`` onto ``device``; raises WeightsError if it does not fit.

    ``state_fields`` maps each state field the robot has to its flat size,
    ``image_fields`` each camera field to its HxWxC (:func:`image_shapes`);
    ``limit_name`` is the setting that ``max_params`` comes from, for the message.
    A blob may also carry the learner's success classifier (arch entry ``classifier``,
    tensors prefixed ``classifier.``), checked the same way and loaded beside the actor.
    """
    arch = weights.arch
    clf_arch = arch.get("classifier")
    clf_shapes: dict[str, tuple[int, ...]] = {}
    clf_views: list[tuple[str, tuple[int, int, int]]] = []
    try:
        fields = tuple(str(f) for f in arch["obs_fields"])
        shapes = actor_shapes(arch["actor"])
        views = actor_images(arch["actor"])
        if clf_arch is not None:
            clf_views = check_classifier_arch(clf_arch)
            clf_shapes = {CLASSIFIER_PREFIX + k: v for k, v in classifier_shapes(clf_arch).items()}
            threshold = clf_arch.get("threshold")
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
                raise ValueError(f"classifier threshold must be a number in (0, 1), got {str(threshold)[:40]}")
    except ArchTooLarge as e:
        raise WeightsError(f"policy is larger than this robot loads ({limit_name}): {e}", code="too_large") from None
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"weights carry an unusable architecture: {e}") from None
    n = param_count(shapes) + param_count(clf_shapes)
    if n > max_params:
        raise WeightsError(f"policy has {n} parameters, more than this robot's limit {max_params} "
                           f"({limit_name})", code="too_large")
    got = {k: tuple(v.shape) for k, v in weights.tensors.items()}
    if clf_arch is None and any(k.startswith(CLASSIFIER_PREFIX) for k in got):
        raise WeightsError("weights carry classifier tensors but no classifier architecture")
    shapes = {**shapes, **clf_shapes}  # the blob holds both (classifier tensors prefixed)
    if got != shapes:
        diff = sorted(set(got.items()) ^ set(shapes.items()))[:3]
        raise WeightsError(f"weights do not match the architecture they carry (first differences: {diff})")
    unknown = [f for f in fields if f not in state_fields]
    if unknown:
        raise WeightsError(f"policy reads fields this robot does not have: {unknown[:8]}")
    cameras = dict(image_fields or {})
    for who, reads in (("policy", views), ("success classifier", clf_views)):
        for name, hwc in reads:
            if name not in cameras:
                raise WeightsError(f"{who} reads camera {name!r}, which this robot does not have "
                                   f"(cameras: {sorted(cameras)[:8]})")
            if tuple(cameras[name]) != hwc:
                raise WeightsError(f"{who} reads camera {name!r} as {'x'.join(map(str, hwc))}, "
                                   f"this robot's is {'x'.join(map(str, cameras[name]))}")
    obs_dim = sum(state_fields[f] for f in fields)
    a_obs, a_act = arch["actor"]["obs_dim"], arch["actor"]["act_dim"]  # checked by actor_shapes
    if (a_obs, a_act) != (obs_dim, action_dim):
        raise WeightsError(f"policy shape {a_obs}->{a_act} does not fit this robot ({obs_dim}->{action_dim})")
    odd = sorted({str(t.dtype) for t in weights.tensors.values()} - {"torch.float32"})
    if odd:
        raise WeightsError(f"weights hold {', '.join(odd)} tensors; policies are float32")
    if not all_finite(weights.tensors):  # one min/max pass per tensor, without the GIL
        raise WeightsError("weights contain NaN or inf")
    try:
        # Built on the meta device and given the blob's own tensors: no random init to overwrite and no
        # second copy of every parameter (a 100M-parameter policy's init alone takes about a second).
        actor_tensors = {k: v for k, v in weights.tensors.items() if k not in clf_shapes}
        with torch.device("meta"):
            actor = build_actor(arch["actor"], max_params)
        actor.load_state_dict(actor_tensors, strict=True, assign=True)
        actor.to(device)
        classifier = None
        if clf_arch is not None:
            with torch.device("meta"):
                classifier = build_classifier(clf_arch)
            n_prefix = len(CLASSIFIER_PREFIX)
            classifier.load_state_dict({k[n_prefix:]: weights.tensors[k] for k in clf_shapes}, strict=True, assign=True)
            classifier.to(device).eval()
    except Exception as e:  # noqa: BLE001 - out of memory, dtype trouble: refuse, keep the old policy
        first_line = (str(e).splitlines() or [""])[0][:200]
        raise WeightsError(f"cannot load the policy: {type(e).__name__}: {first_line}") from None
    actor.eval()
    return LoadedPolicy(weights.version, actor, fields, tuple(name for name, _ in views), device, classifier,
                        float(clf_arch["threshold"]) if clf_arch is not None else 0.5)
