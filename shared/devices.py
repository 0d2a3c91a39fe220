"""A device setting (``learner.device``, ``control.policy_device``) turned into a torch device.

"auto" takes a GPU when torch sees one and the CPU otherwise; an explicit
"cuda"/"cuda:N" that this machine cannot honour is a configuration error, not
a silent fall back to the CPU (a run sized for a GPU would crawl unnoticed).
"""

from __future__ import annotations

import logging

import torch

from .errors import ConfigError

log = logging.getLogger("fleetrl.device")


def resolve_device(setting: str, key: str = "learner.device") -> torch.device:
    """The device ``setting`` (the value of config ``key``) names, logging the choice and the reason for it."""
    setting = str(setting).strip()
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if setting == "auto":
        if available:
            dev = torch.device("cuda", torch.cuda.current_device())
            log.info("event=device key=%s device=%s name=%r reason=auto_cuda_available cuda_devices=%d",
                     key, dev, torch.cuda.get_device_name(dev), count)
        else:
            dev = torch.device("cpu")
            log.info("event=device key=%s device=cpu reason=auto_no_cuda (torch %s sees no GPU)", key, torch.__version__)
        return dev
    if setting == "cpu":
        log.info("event=device key=%s device=cpu reason=configured", key)
        return torch.device("cpu")
    if setting == "cuda" or (setting.startswith("cuda:") and setting[5:].isdigit()):
        if not available:
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise ConfigError(
                f'{key} = "{setting}" but torch ({torch.__version__}, {build}) sees no CUDA GPU; '
                'use "auto" or "cpu", or run it where a GPU is visible'
            )
        index = int(setting[5:]) if setting != "cuda" else torch.cuda.current_device()
        if index >= count:
            raise ConfigError(
                f'{key} = "{setting}" but torch sees {count} CUDA device(s) (cuda:0..cuda:{count - 1})'
            )
        dev = torch.device("cuda", index)
        log.info("event=device key=%s device=%s name=%r reason=configured cuda_devices=%d",
                 key, dev, torch.cuda.get_device_name(dev), count)
        return dev
    raise ConfigError(f'{key} = "{setting}": use "auto", "cpu", "cuda" or "cuda:N"')
