"""The cloud replay buffer: sealed Parquet segments on disk, recent rows in memory.

Composed of small parts as TorchRL's buffers are: storage (``storage``,
``memory``), writer (``writer``), sampler (``sampler``) and transform
(``transform``), behind the ``SampleSource`` protocol (``source``) that the
trainer samples. With cameras: frames laid out once per step (``images``),
a frame ring sized in bytes (``memory.FrameRing``), older rows sampled from
the segments' row groups (``history``), and a thread sampling ahead of the
trainer (``prefetch``).
"""

from .memory import RingStorage
from .prefetch import Prefetcher
from .replay import ReplayBuffer
from .sampler import UniformSampler
from .source import IMAGES, NEXT_IMAGES, Batch, Dims, SampleSource
from .storage import Manifest, SegmentInfo, SegmentStore
from .transform import NormaliseAction
from .writer import RingWriter, pack

__all__ = ["IMAGES", "NEXT_IMAGES", "Batch", "Dims", "Manifest", "NormaliseAction", "Prefetcher", "ReplayBuffer", "RingStorage", "RingWriter",
           "SampleSource", "SegmentInfo", "SegmentStore", "UniformSampler", "pack"]
