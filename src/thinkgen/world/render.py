"""Deterministic, anti-aliased rendering of a :class:`~thinkgen.world.scene.Scene` with PIL.

Shapes are drawn at ``SUPERSAMPLE``× the target size and box-filtered down, which anti-aliases edges
without any randomness: the same scene always gives the same pixels.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .scene import BACKGROUND_RGB, COLOURS, TEXT_RGB, Scene, SceneObject, Word

SUPERSAMPLE = 4
# DejaVu Sans Bold (shipped with its licence in fonts/): at a 13 px text height its thick strokes and wide
# letters OCR reliably, where Pillow's thin default font loses letters ('jj' read as 'j').
FONT_PATH = Path(__file__).with_name("fonts") / "DejaVuSans-Bold.ttf"


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    # Outer radius 0.5 around the box centre; the first point straight up.
    out = []
    for i in range(2 * points):
        r = 0.5 if i % 2 == 0 else 0.5 * inner
        a = -math.pi / 2 + i * math.pi / points
        out.append((0.5 + r * math.cos(a), 0.55 + r * math.sin(a)))
    return out


# Outlines in the unit box (x right, y down). Each shape spans its whole box so that `size` means the
# same thing for every shape.
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)],
    "triangle": [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)],
    "diamond": [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)],
    "cross": [
        (1 / 3, 0.0), (2 / 3, 0.0), (2 / 3, 1 / 3), (1.0, 1 / 3), (1.0, 2 / 3), (2 / 3, 2 / 3),
        (2 / 3, 1.0), (1 / 3, 1.0), (1 / 3, 2 / 3), (0.0, 2 / 3), (0.0, 1 / 3), (1 / 3, 1 / 3),
    ],
    "star": _star(),
}


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, side_px: int, rgb: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = (v * side_px for v in obj.box())
    if obj.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=rgb)
        return
    w, h = x1 - x0, y1 - y0
    draw.polygon([(x0 + u * w, y0 + v * h) for u, v in _POLYGONS[obj.shape]], fill=rgb)


@functools.lru_cache(maxsize=64)
def _font(size_px: int) -> ImageFont.FreeTypeFont:
    # A font file inside the package: identical pixels on every machine with the same Pillow.
    return ImageFont.truetype(FONT_PATH, size_px)


def _font_px(height: float, side_px: int) -> int:
    return max(4, round(height * side_px))


@functools.lru_cache(maxsize=16384)  # layout and reflection ask for the same few hundred words again and again
def word_width(text: str, height: float, canvas_px: int) -> float:
    """Width of a rendered word as a fraction of the canvas (what layout needs to avoid overlaps)."""
    side = canvas_px * SUPERSAMPLE
    x0, _, x1, _ = _font(_font_px(height, side)).getbbox(text, anchor="mm")
    return (x1 - x0) / side


def _draw_word(draw: ImageDraw.ImageDraw, word: Word, side_px: int) -> None:
    font = _font(_font_px(word.height, side_px))
    draw.text((word.x * side_px, word.y * side_px), word.text, fill=TEXT_RGB, font=font, anchor="mm")


def render(scene: Scene, canvas_px: int, object_rgb: tuple[int, int, int] | None = None) -> Image.Image:
    """Render ``scene`` to an RGB image of ``canvas_px`` × ``canvas_px`` pixels; ``object_rgb`` draws every
    object in that one colour instead of its own (a silhouette)."""
    side = canvas_px * SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, side, COLOURS[obj.colour] if object_rgb is None else object_rgb)
    for word in scene.words:
        _draw_word(draw, word, side)
    return image.reduce(SUPERSAMPLE)
