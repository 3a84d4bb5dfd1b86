"""Image conversion: any PIL mode to 8-bit RGB, and decoding of ``datasets.Image`` cells."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image as PILImage

__all__ = ["to_rgb"]


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale a high-bit-depth or float single-channel array to uint8 without clipping."""
    array = array.astype(np.float64)
    if mode.startswith("I;16"):
        # Full 16-bit range: 65535 / 257 = 255 exactly.
        return np.round(array / 257.0).clip(0, 255).astype(np.uint8)
    if mode == "F":
        low, high = float(array.min()), float(array.max())
        if low >= 0.0 and high <= 1.0:  # float images conventionally live in [0, 1]
            return np.round(array * 255.0).astype(np.uint8)
        if low >= 0.0 and high <= 255.0:
            return np.round(array).astype(np.uint8)
        span = high - low
        if span == 0:
            return np.zeros_like(array, dtype=np.uint8)
        return np.round((array - low) / span * 255).astype(np.uint8)
    # Mode "I" (32-bit int): Pillow opens some 16-bit files as "I". Values beyond 8 bits mean 16-bit data.
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 255.0:
        return array.astype(np.uint8)
    if low >= 0.0 and high <= 65535.0:
        return np.round(array / 257.0).astype(np.uint8)
    span = high - low
    return np.round((array - low) / span * 255).astype(np.uint8)


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Convert a PIL image of any mode to 8-bit RGB.

    * ``1``, ``L``: replicated to three channels.
    * ``LA``, ``RGBA``, ``PA`` and ``P`` with transparency: composited on a white background (dropping alpha
      would turn transparent pixels into whatever colour they happen to store, often black).
    * ``CMYK``, ``YCbCr``, ``HSV``, ``RGBX``...: Pillow's conversion.
    * ``I;16*`` (16-bit): divided by 257, so 0..65535 maps onto 0..255 (Pillow's own conversion clips at 255).
    * ``I`` (32-bit int): 0..255 kept, 0..65535 treated as 16-bit, anything else min-max scaled.
    * ``F`` (float): [0, 1] scaled by 255, [0, 255] kept, anything else min-max scaled.

    Raises:
        ValueError: for a mode Pillow cannot convert to RGB, naming the mode.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        gray = _to_uint8(np.asarray(image), mode)
        return PILImage.fromarray(gray, mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ValueError(f"Cannot convert an image of mode {mode!r} to RGB: {err}") from err


def _decode(value: Any) -> PILImage.Image:
    """Decode one ``datasets.Image`` cell (a PIL image, or a ``{"bytes", "path"}`` dict when ``decode=False``)."""
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        image = PILImage.open(io.BytesIO(data)) if data is not None else PILImage.open(path)
    elif isinstance(value, (str, os.PathLike)):
        image = PILImage.open(value)
    else:
        raise TypeError(f"Unsupported image value of type {type(value).__name__}.")
    image.load()  # force the full decode now: lazy PIL images fail later, inside a worker
    return image


def _describe(value: Any, index: int) -> str:
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"row {index}"
