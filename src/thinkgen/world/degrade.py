"""Degradations that make a clean render look like a generator's output, deterministic by seed.

A generated image is never the renderer's exact pixels: edges are soft, flat areas carry noise, colours
drift a little, shapes sit off the pixel grid, and the image may have been saved as JPEG. The judge is
measured on renders passed through :func:`degrade` so that its accuracy means something for generated
images, not only for its own renderer's output.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class DegradeConfig:
    """Strength ranges; each image draws one strength per degradation uniformly from its range.

    Args:
        blur_sigma: Gaussian blur standard deviation, pixels.
        jitter_px: largest sub-pixel shift of the whole image along each axis (bilinear resampling).
        resample_scale: largest factor by which the image is shrunk and enlarged back (a generator's
            upsampler or a resize on the way); 1.0 disables it.
        colour_offset: largest per-channel offset added to every pixel, RGB units.
        colour_gain: largest relative per-channel gain change.
        noise_std: standard deviation of per-pixel Gaussian noise, RGB units.
        jpeg_quality: JPEG quality range; ``None`` skips compression.
        jpeg_chroma_subsampling: store colour at half resolution (4:2:0) as most JPEG files do. Off by
            default: a generator's own output has full-resolution colour, and at 64 px 4:2:0 blurs a
            small yellow star (whose difference from white is almost all colour) into a disc.
    """

    blur_sigma: tuple[float, float] = (0.2, 0.8)
    jitter_px: float = 0.5
    resample_scale: float = 1.3
    colour_offset: float = 12.0
    colour_gain: float = 0.05
    noise_std: tuple[float, float] = (1.0, 6.0)
    jpeg_quality: tuple[int, int] | None = (60, 95)
    jpeg_chroma_subsampling: bool = False

    def __post_init__(self) -> None:
        lo, hi = self.blur_sigma
        if not 0 <= lo <= hi:
            raise ValueError(f"blur_sigma={self.blur_sigma} must satisfy 0 <= min <= max")
        lo, hi = self.noise_std
        if not 0 <= lo <= hi:
            raise ValueError(f"noise_std={self.noise_std} must satisfy 0 <= min <= max")
        if self.resample_scale < 1:
            raise ValueError(f"resample_scale={self.resample_scale} must be >= 1")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality={self.jpeg_quality} must satisfy 1 <= min <= max <= 100")


def degrade(image: Image.Image, seed: int, config: DegradeConfig | None = None) -> Image.Image:
    """``image`` as a generator might have drawn it: shifted, resampled, blurred, colour-shifted, noisy,
    JPEG-compressed. The same ``seed`` gives the same pixels.

    Args:
        image: an RGB image (any size).
        seed: fixes every random choice.
        config: strength ranges (:class:`DegradeConfig` defaults if ``None``).

    Returns:
        An RGB image of the same size.

    Example:
        >>> noisy = degrade(render(scene, 64), seed=3)
    """
    cfg = config or DegradeConfig()
    rng = np.random.default_rng(seed)
    out = image.convert("RGB")
    w, h = out.size

    # 1. Sub-pixel shift: the shapes no longer sit where the renderer's grid put them.
    dx, dy = rng.uniform(-cfg.jitter_px, cfg.jitter_px, size=2)
    out = out.transform(
        out.size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy), Image.Resampling.BILINEAR, fillcolor=(255, 255, 255)
    )

    # 2. Down- and up-sampling, as through an upsampler or a resize.
    scale = rng.uniform(1.0, cfg.resample_scale)
    if scale > 1.0:
        small = (max(1, round(w / scale)), max(1, round(h / scale)))
        out = out.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BICUBIC)

    # 3. Soft edges.
    sigma = rng.uniform(*cfg.blur_sigma)
    if sigma > 0:
        out = out.filter(ImageFilter.GaussianBlur(sigma))

    # 4. Colour drift and pixel noise.
    pixels = np.asarray(out, np.float32)  # (H, W, 3)
    gain = 1.0 + rng.uniform(-cfg.colour_gain, cfg.colour_gain, size=3)
    offset = rng.uniform(-cfg.colour_offset, cfg.colour_offset, size=3)
    pixels = pixels * gain + offset + rng.normal(0.0, rng.uniform(*cfg.noise_std), size=pixels.shape)
    out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")

    # 5. Block artefacts and ringing of lossy compression.
    if cfg.jpeg_quality is not None:
        buffer = io.BytesIO()
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        out.save(buffer, format="JPEG", quality=quality, subsampling=2 if cfg.jpeg_chroma_subsampling else 0)
        buffer.seek(0)
        out = Image.open(buffer).convert("RGB")
    return out
