"""numpy Generators as JSON strings, so checkpoints (safetensors + JSON) carry them exactly."""

from __future__ import annotations

import json

import numpy as np


def dump(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def load(state: str) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(state)
    return rng
