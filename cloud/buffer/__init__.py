"""The cloud replay buffer: sealed Parquet segments on disk, recent rows in memory.

Composed of small parts as TorchRL's buffers are: storage (``storage``,
``memory``), writer (``writer``), sampler (``sampler``) and transform
(``transform``), behind the ``SampleSource`` protocol (``source``) that the
trainer samples.
"""

from .memory import RingStorage
from .replay import ReplayBuffer
from .sampler import UniformSampler
from .source import Batch, Dims, SampleSource
from .storage import Manifest, SegmentInfo, SegmentStore
from .transform import NormaliseAction
from .writer import RingWriter, pack

__all__ = ["Batch", "Dims", "Manifest", "NormaliseAction", "ReplayBuffer", "RingStorage", "RingWriter",
           "SampleSource", "SegmentInfo", "SegmentStore", "UniformSampler", "pack"]
