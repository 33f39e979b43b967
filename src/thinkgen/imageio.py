"""Reading user images safely and writing results with a JSON sidecar.

Every image a user hands in (CLI, server, data files) goes through :func:`load_image`, which bounds the
pixel count before decoding (decompression bombs) and names the file and the limit when it refuses.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_IMAGE_PIXELS = 4096 * 4096


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image file (or bytes, or a PIL image) as RGB, refusing anything over ``max_pixels``.

    Raises:
        ValueError: unreadable data, or an image larger than ``max_pixels``.
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(source, Image.Image):
        image, name = source, "image"
    else:
        name = "image bytes" if isinstance(source, bytes) else str(source)
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise FileNotFoundError(f"image file not found: {source}")
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Image.DecompressionBombError as err:
            # PIL refuses headers past twice its own limit before we see the size: the same refusal, in our terms.
            raise ValueError(f"{name} is too large ({err}); the limit is {max_pixels} pixels") from err
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read {name} as an image ({err}); allowed: PNG, JPEG, WebP, BMP") from err
    # Checked on the header, before any pixel is decoded.
    width, height = image.size
    if width * height > max_pixels:
        raise ValueError(f"{name} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    try:
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode {name}: {err}") from err


def pil_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of one size → (B, 3, H, W) float tensor in [-1, 1]."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] → PIL images (rounded, not truncated, so encode/decode round-trips)."""
    arrays = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arrays]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so no half-written file remains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_with_sidecar(image: Image.Image, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Save ``image`` as PNG at ``path`` and ``metadata`` as JSON beside it (same stem, ``.json``)."""
    path = Path(path).with_suffix(".png")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(metadata, indent=2, default=str) + "\n").encode())
    return path
