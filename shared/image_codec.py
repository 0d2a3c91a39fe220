"""Per-camera image codecs: raw bytes (compressed later by the chunk's zstd), PNG, JPEG."""

from __future__ import annotations

import io

import numpy as np

from .errors import SchemaError
from .schema import FieldSpec


def encode_image(img: np.ndarray, spec: FieldSpec) -> bytes:
    if img.shape != spec.shape or img.dtype != np.uint8:
        raise SchemaError(f"image has shape {img.shape} {img.dtype}, expected {spec.shape} uint8")
    codec = spec.codec or "raw"
    if codec == "raw":
        return np.ascontiguousarray(img).tobytes()
    from PIL import Image

    buf = io.BytesIO()
    pil = Image.fromarray(img if img.shape[2] != 1 else img[:, :, 0])
    if codec == "png":
        pil.save(buf, format="PNG", compress_level=1)
    else:
        pil.save(buf, format="JPEG", quality=spec.quality or 90)
    return buf.getvalue()


def decode_image(data: bytes, spec: FieldSpec) -> np.ndarray:
    codec = spec.codec or "raw"
    if codec == "raw":
        if len(data) != spec.size:
            raise SchemaError(f"raw image has {len(data)} bytes, expected {spec.size}")
        return np.frombuffer(data, dtype=np.uint8).reshape(spec.shape)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as pil:
            if pil.size[0] * pil.size[1] > spec.shape[0] * spec.shape[1]:
                raise SchemaError(f"{codec} image is {pil.size}, larger than {spec.shape}")
            arr = np.asarray(pil)
    except SchemaError:
        raise
    except Exception as e:  # PIL raises many types on corrupt input
        raise SchemaError(f"corrupt {codec} image: {e}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape != spec.shape:
        raise SchemaError(f"{codec} image decodes to {arr.shape}, expected {spec.shape}")
    return arr
