"""The weights format: safetensors bytes, a version, and a sha256 over the bytes.

safetensors carries no code (unlike pickle), and the policy architecture rides
in its metadata so a robot can rebuild the network it is about to load.

Decoding is zero-copy: the header is parsed here and every tensor is a view
of the blob's own buffer (``torch.frombuffer`` at its offsets), so a robot
loading 400 MB neither copies it nor holds the GIL for the length of a copy
(hashing and torch's ops release it). :func:`load_weights_file` maps a file
copy-on-write, so the tensors are the page cache's pages until written.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from safetensors.torch import save as st_save

from .errors import WeightsError

FORMAT = "fleetrl.weights.v1"
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header

BytesLike = Union[bytes, bytearray, memoryview, mmap.mmap]  # anything with the buffer protocol, bytes-shaped

_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr) for name, attr in (
        ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"),
        ("I64", "int64"), ("I32", "int32"), ("I16", "int16"), ("I8", "int8"), ("U8", "uint8"), ("BOOL", "bool"),
        ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("F8_E4M3", "float8_e4m3fn"),
        ("F8_E5M2", "float8_e5m2"),
    ) if hasattr(torch, attr)
}


@dataclass(frozen=True)
class WeightsBlob:
    version: int
    sha256: str
    data: bytes


@dataclass(frozen=True)
class Weights:
    version: int
    arch: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def sha256(data: BytesLike) -> str:
    return hashlib.sha256(data).hexdigest()  # releases the GIL on large buffers


def encode_weights(tensors: dict[str, torch.Tensor], version: int, arch: dict[str, Any]) -> WeightsBlob:
    meta = {"format": FORMAT, "version": str(int(version)), "arch": json.dumps(arch, sort_keys=True)}
    data = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
    return WeightsBlob(version=int(version), sha256=sha256(data), data=data)


def decode_weights(data: BytesLike, expected_sha256: str | None, max_size: int) -> Weights:
    """Verify and parse a weights blob; anything off raises :class:`WeightsError`.

    ``expected_sha256=None`` skips the digest, for a caller that has verified these
    very bytes already (:class:`shared.protocol.stream.PolicyReceiver` hashes the parts
    as they arrive). The tensors are views of ``data`` when it is writable (a
    bytearray, a writable memoryview or mmap): the caller hands the buffer over and
    must not change it afterwards. Read-only bytes are copied once, as one block."""
    view = _bytes_view(data)
    if view.nbytes > max_size:
        raise WeightsError(f"weights are {view.nbytes} bytes, limit {max_size}", code="too_large")
    if expected_sha256 is not None and sha256(view) != expected_sha256:
        raise WeightsError("weights sha256 does not match the announced digest", code="bad_digest")
    header, body = _header(view)
    meta = _metadata(header)
    if meta.get("format") != FORMAT:
        raise WeightsError(f"unknown weights format {meta.get('format')!r}")
    try:
        version = int(meta["version"])
        arch = json.loads(meta["arch"])
    except (KeyError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise WeightsError(f"bad weights metadata: {e}") from None
    if not isinstance(arch, dict):
        raise WeightsError("weights arch must be a map")
    return Weights(version=version, arch=arch, tensors=_tensors(view, header, body))


def load_weights_file(path: str | os.PathLike[str], expected_sha256: str | None, max_size: int) -> Weights:
    """:func:`decode_weights` of a file, mapped copy-on-write: the tensors are the file's
    pages (no read, no copy; the file may be unlinked once this returns). Reading the
    pages happens inside hashlib and torch, which release the GIL."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_size:
                raise WeightsError(f"weights file {Path(path).name} is {size} bytes, limit {max_size}", code="too_large")
            if size < 8:
                raise WeightsError(f"weights file {Path(path).name} is shorter than a safetensors header")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except OSError as e:
        raise WeightsError(f"cannot read weights file {path}: {e.strerror or e}") from None
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
        mm.madvise(mmap.MADV_WILLNEED)  # start the readahead now
    return decode_weights(mm, expected_sha256, max_size)


def weights_version(data: BytesLike) -> int:
    """The version a weights blob carries in its own header (no tensors are read)."""
    meta = _metadata(_header(_bytes_view(data))[0])
    try:
        return int(meta["version"])
    except (KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"bad weights metadata: {e}") from None


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether no float tensor holds NaN or inf: one min/max pass per tensor (NaN and inf
    show in it), no temporary the size of the tensor; torch runs it without the GIL."""
    for t in tensors.values():
        if t.numel() and (t.is_floating_point() or t.is_complex()):
            lo, hi = torch.aminmax(t.detach().reshape(-1))
            if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
                return False
    return True


def _bytes_view(data: BytesLike) -> memoryview:
    try:
        view = memoryview(data)
    except TypeError:
        raise WeightsError(f"weights must be bytes-like, not {type(data).__name__}") from None
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _header(view: memoryview) -> tuple[dict[str, Any], int]:
    # Read the header ourselves so a malformed one is our error, not a panic; returns it and where the body starts.
    if view.nbytes < 8:
        raise WeightsError("weights shorter than a safetensors header")
    n = int.from_bytes(view[:8], "little")
    if n > view.nbytes - 8 or n > MAX_HEADER:
        raise WeightsError("safetensors header length exceeds the data")
    try:
        header = json.loads(bytes(view[8 : 8 + n]))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise WeightsError(f"safetensors header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise WeightsError("safetensors header is not a map")
    return header, 8 + n


def _metadata(header: dict[str, Any]) -> dict[str, str]:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        raise WeightsError("safetensors header has no fleetrl metadata")
    return meta


def _tensors(view: memoryview, header: dict[str, Any], body: int) -> dict[str, torch.Tensor]:
    """Views of the blob at each tensor's offsets, checked as safetensors does: known dtypes,
    sizes that match the shapes, and tensors that tile the body exactly (no gap, no overlap)."""
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise WeightsError(f"safetensors entry {name!r} is not a map")
        name_of = info.get("dtype")
        dtype = _DTYPES.get(name_of) if isinstance(name_of, str) else None
        if dtype is None:
            raise WeightsError(f"safetensors entry {name!r} has an unknown dtype {str(info.get('dtype'))[:20]!r}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise WeightsError(f"safetensors entry {name!r} has a bad shape")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int and o >= 0 for o in offsets)):
            raise WeightsError(f"safetensors entry {name!r} has bad data_offsets")
        entries.append((offsets[0], offsets[1], name, dtype, shape))
    entries.sort(key=lambda e: (e[0], e[1]))
    pos = 0
    for start, end, name, dtype, shape in entries:
        numel = 1
        for d in shape:
            numel *= d
        if start != pos or end - start != numel * dtype.itemsize:
            raise WeightsError(f"safetensors entry {name!r} has data_offsets that do not fit its shape and neighbours")
        pos = end
    if body + pos != view.nbytes:
        raise WeightsError(f"safetensors body is {view.nbytes - body} bytes, its tensors take {pos}")
    if not entries:
        return {}
    raw = _as_tensor(view)
    out = {}
    for start, end, name, dtype, shape in entries:
        part = raw[body + start : body + end]
        if (body + start) % dtype.itemsize:  # misaligned for its dtype (not written by safetensors): copy it
            part = part.clone()
        out[name] = part.view(dtype).view(shape)
    return out


def _as_tensor(view: memoryview) -> torch.Tensor:
    """A uint8 tensor over the blob: the buffer itself when writable, else one copy (numpy's, without the GIL)."""
    if not view.readonly:
        return torch.frombuffer(view, dtype=torch.uint8)
    raw = torch.empty(view.nbytes, dtype=torch.uint8)
    raw.numpy()[:] = np.frombuffer(view, dtype=np.uint8)
    return raw
