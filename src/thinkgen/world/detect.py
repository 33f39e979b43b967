"""Reading an image of the nano world back into objects and words: the eyes of the world's judge.

:class:`WorldDetector` uses no learned weights for shapes. The background is white and objects never
touch or rotate, so the image splits into ink components (a component that blur has bridged is cut
apart again by erosion or by colour). Each gets the palette colour that its strongest interior ink votes
for, and a shape by analysis by synthesis: for every shape, the component's area and centroid fix a box,
the renderer draws that shape there, and the best soft IoU with the observed coverage wins (compared
crisp and blurred, as generators draw soft edges). Dark ink that is elongated, small, or fits no shape
is lettering: it is set aside (so a word never counts as a black object), grouped into words, cropped
and read by :mod:`thinkgen.world.ocr` (optional; only needed when words are read).

Any detector that returns a :class:`Detection` (a COCO detector for photographs, say) plugs into the
scorer through the :class:`Detector` protocol.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Union

import numpy as np
from PIL import Image

from ._components import dilate, erode, label
from .ocr import OCRConfig, WordReader
from .render import render, word_width
from .scene import BACKGROUND_RGB, COLOURS, SHAPES, Scene, SceneObject, WorldConfig

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
ImageLike = Union[Image.Image, np.ndarray]

_PALETTE_NAMES: tuple[str, ...] = tuple(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], np.float32)  # (10, 3)
_WHITE = np.array(BACKGROUND_RGB, np.float32)
_BLACK = _PALETTE_NAMES.index("black")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Ink darker and greyer than this is black. Gray (luma 140) is lighter; brown, purple, blue and green are
# as dark but coloured (chroma >= 100), while tinted black stays near-neutral.
_DARK_LUMA = 118.0
_DARK_CHROMA = 60.0
# Shape hypotheses are also compared blurred: a generator's soft edges must not make a star a circle.
_BLUR_SIGMAS = (0.0, 0.6, 1.0)


@dataclass(frozen=True)
class DetectedObject:
    """One object found in an image.

    Attributes:
        shape: one of :data:`~thinkgen.world.scene.SHAPES`.
        colour: one of the palette's colour names.
        box: ``(x0, y0, x1, y1)`` of its ink, canvas fractions (x right, y down).
        score: confidence in [0, 1] (shape match × colour match).
    """

    shape: str
    colour: str
    box: Box
    score: float

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


@dataclass(frozen=True)
class DetectedWord:
    """One word read from an image: lowercase ``text``, its ink ``box`` (canvas fractions), OCR ``score``."""

    text: str
    box: Box
    score: float


@dataclass(frozen=True)
class Detection:
    """Everything a detector saw in one image."""

    objects: tuple[DetectedObject, ...] = ()
    words: tuple[DetectedWord, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [asdict(o) for o in self.objects], "words": [asdict(w) for w in self.words]}

    @classmethod
    def from_scene(cls, scene: Scene, canvas_px: int = 256) -> Detection:
        """The detection a perfect detector would return for ``scene`` rendered at ``canvas_px``."""
        objects = tuple(DetectedObject(o.shape, o.colour, o.box(), 1.0) for o in scene.objects)
        words = []
        for word in scene.words:
            half_width = word_width(word.text, word.height, canvas_px) / 2
            box = (word.x - half_width, word.y - word.height / 2, word.x + half_width, word.y + word.height / 2)
            words.append(DetectedWord(word.text.lower(), box, 1.0))
        return cls(objects, tuple(words))


class Detector(Protocol):
    """Anything that turns an image into a :class:`Detection`."""

    def detect(self, image: ImageLike) -> Detection:
        ...


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds of :class:`WorldDetector`. Lengths are canvas fractions so one config fits any size.

    Args:
        ink_distance: RGB distance from the white background from which a pixel counts as ink. 50 is a
            third of the way to the palette colour closest to white (pink), well above pixel noise.
        min_object_size: components whose box side stays below this are noise (or, if dark, letters
            and their dots), not objects; the smallest object of the ``full`` preset is 0.08.
            :meth:`for_world` raises it to just under the world's smallest object, above its letters.
        max_aspect: objects are never rotated and fill a square box, so a component whose box is more
            elongated than this (width / height or its inverse) is no object (dark ones are text).
        min_score: objects scoring below this are dropped (a blob that resembles no shape).
        glyph_iou: a square-ish dark component whose best shape fits worse than this is a letter.
            Shapes fit at 0.88 or better even degraded (:mod:`~thinkgen.world.degrade`); letters of the
            world's font at most about 0.83 (a blurred ``o``), and at most 0.68 where they are as large
            as objects (the ``full`` preset).
        max_colour_distance: RGB distance between a component's median interior colour and its palette
            colour at which colour confidence falls to 0.
        word_gap: glyphs closer than this fraction of their height belong to one word.
        read_words: whether to read words at all (needs the OCR extra).
        ocr: settings of the word reader.
    """

    ink_distance: float = 50.0
    min_object_size: float = 0.06
    max_aspect: float = 1.3
    min_score: float = 0.5
    glyph_iou: float = 0.86
    max_colour_distance: float = 120.0
    word_gap: float = 0.3
    read_words: bool = True
    ocr: OCRConfig = field(default_factory=OCRConfig)

    def __post_init__(self) -> None:
        if not 0 < self.ink_distance < 255:
            raise ValueError(f"ink_distance={self.ink_distance} must be in (0, 255)")
        for name in ("min_score", "glyph_iou"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.max_aspect < 1:
            raise ValueError(f"max_aspect={self.max_aspect} must be >= 1")

    @classmethod
    def for_world(cls, world: WorldConfig, **overrides: Any) -> DetectorConfig:
        """Thresholds for images of ``world``: anything under 3/4 of its smallest object is no object.

        Args:
            world: the world the images come from.
            **overrides: any other :class:`DetectorConfig` field.
        """
        return cls(**{"min_object_size": 0.75 * world.object_size[0], **overrides})

    def max_objects(self) -> int:
        """The most objects this detector can find in one image: boxes of ``min_object_size`` side by side."""
        return math.floor(1.0 / self.min_object_size) ** 2


@functools.lru_cache(maxsize=1)
def _shape_moments() -> dict[str, tuple[float, float, float]]:
    """Per shape: (area / box area, centroid x offset / side, centroid y offset / side), measured on a
    large render so they hold for exactly what the renderer draws (the star sits low in its box)."""
    side = 512
    out = {}
    for shape in SHAPES:
        scene = Scene(objects=(SceneObject(shape, "black", 0.5, 0.5, 0.8),))
        coverage = _coverage(np.asarray(render(scene, side), np.float32), _BLACK)
        area, cx, cy = _moments(coverage)
        size_px = 0.8 * side
        out[shape] = (area / size_px**2, (cx - side / 2) / size_px, (cy - side / 2) / size_px)
    return out


def _moments(coverage: np.ndarray) -> tuple[float, float, float]:
    """(area, centroid x, centroid y) of a coverage map; pixel (r, c) spans [c, c+1) × [r, r+1)."""
    area = float(coverage.sum())
    rows, cols = np.indices(coverage.shape)
    return area, float((coverage * (cols + 0.5)).sum()) / area, float((coverage * (rows + 0.5)).sum()) / area


def _coverage(rgb: np.ndarray, colour: int) -> np.ndarray:
    """How much of each pixel the palette ``colour`` covers, assuming it is blended with white: (H, W)."""
    direction = _WHITE - _PALETTE[colour]
    alpha = ((_WHITE - rgb) @ direction) / float(direction @ direction)
    return np.clip(alpha, 0.0, 1.0)


@functools.lru_cache(maxsize=256)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) symmetric matrix that blurs a length-n signal with a Gaussian of ``sigma`` pixels (zero
    outside); rows are scaled by one common factor so the matrix stays symmetric."""
    offsets = np.arange(n)[:, None] - np.arange(n)[None, :]
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2) * (np.abs(offsets) <= np.ceil(3 * sigma))
    return (kernel / kernel.sum(axis=1, keepdims=True).max()).astype(np.float32)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array (``sigma`` in pixels; 0 returns it unchanged)."""
    if sigma == 0:
        return image
    # The matrices are symmetric, so no transpose (a transposed operand takes a slow BLAS path).
    return _blur_matrix(image.shape[0], sigma) @ image @ _blur_matrix(image.shape[1], sigma)


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(float(np.maximum(a, b).sum()), 1e-9))


def _as_rgb(image: ImageLike) -> np.ndarray:
    """(H, W, 3) float32 RGB from a PIL image or an (H, W, 3) uint8 array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), np.float32)
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3:
        return image.astype(np.float32)
    raise TypeError(f"image must be a PIL image or an (H, W, 3) array, got {type(image).__name__}")


@dataclass
class _Glyph:
    box: tuple[int, int, int, int]  # (row0, col0, row1, col1), exclusive ends
    label: int


class WorldDetector:
    """The nano world's rule-based detector (see the module docstring).

    Args:
        config: :class:`DetectorConfig` (defaults if ``None``).
        reader: the word reader; built from ``config.ocr`` on first use if ``None``.

    Example:
        >>> detector = WorldDetector()
        >>> detection = detector.detect(render(scene, 64))
        >>> [(o.shape, o.colour) for o in detection.objects], [w.text for w in detection.words]
        ([('star', 'red')], ['moon'])
    """

    def __init__(self, config: DetectorConfig | None = None, reader: WordReader | None = None) -> None:
        self.config = config or DetectorConfig()
        self.reader = reader

    def detect(self, image: ImageLike) -> Detection:
        """Find the objects (and, if ``config.read_words``, the words) in ``image``."""
        cfg = self.config
        rgb = _as_rgb(image)  # (H, W, 3)
        h, w = rgb.shape[:2]
        min_side = cfg.min_object_size * max(h, w)
        components = label(((rgb - _WHITE) ** 2).sum(axis=2) >= cfg.ink_distance**2)

        objects: list[DetectedObject] = []
        glyphs: list[_Glyph] = []
        for i in range(components.num):
            box = r0, c0, r1, c1 = tuple(components.boxes[i].tolist())
            large = max(r1 - r0, c1 - c0) >= min_side
            if not large:
                if _vote_colour(rgb[r0:r1, c0:c1], components.labels[r0:r1, c0:c1] == i + 1)[0] == _BLACK:
                    glyphs.append(_Glyph(box, i + 1))  # a small letter or the dot of an i
                continue
            # One pixel of margin: the faint anti-aliased rim of a shape is below the ink threshold.
            region = rr0, rc0, rr1, rc1 = max(r0 - 1, 0), max(c0 - 1, 0), min(r1 + 1, h), min(c1 + 1, w)
            region_rgb = rgb[rr0:rr1, rc0:rc1]
            region_labels = components.labels[rr0:rr1, rc0:rc1]
            ours = region_labels == i + 1
            usable = ours | (region_labels == 0)  # a neighbour's ink is never ours
            parts = _split(region_rgb, ours, min_side)
            if len(parts) == 1:
                colour, _ = _vote_colour(region_rgb, ours)
                if colour == _BLACK and _aspect(ours) > cfg.max_aspect:
                    glyphs.append(_Glyph(box, i + 1))
                    continue
            found = []
            for part in parts:
                part_colour, distance = _vote_colour(region_rgb, part)
                shape, fitted_box, iou = _fit_shape(rgb, region, dilate(part) & usable, part_colour, part)
                found.append((part, part_colour, distance, shape, fitted_box, iou))
            # Dark ink that fits no shape well is lettering (if any part of a component is, all of it is).
            if any(c == _BLACK and iou < cfg.glyph_iou for _, c, _, _, _, iou in found):
                glyphs.append(_Glyph(box, i + 1))
                continue
            for part, part_colour, distance, shape, fitted_box, iou in found:
                squarish = _aspect(part) <= cfg.max_aspect
                score = iou * max(0.0, 1.0 - distance / cfg.max_colour_distance) if squarish else 0.0
                if score < cfg.min_score:
                    logger.debug(
                        "dropped a %s blob at %s: best shape %s, fit %.2f, colour distance %.0f",
                        _PALETTE_NAMES[part_colour], fitted_box, shape, iou, distance,
                    )
                    continue
                objects.append(DetectedObject(shape, _PALETTE_NAMES[part_colour], fitted_box, score))

        words: tuple[DetectedWord, ...] = ()
        if cfg.read_words and glyphs:  # glyphs are found either way, so letters never become objects
            words = self._read_words(rgb, components.labels, glyphs)
        return Detection(tuple(objects), words)

    def _read_words(self, rgb: np.ndarray, labels: np.ndarray, glyphs: list[_Glyph]) -> tuple[DetectedWord, ...]:
        """Group glyphs into words, crop each word on white and read it."""
        if self.reader is None:
            self.reader = WordReader(self.config.ocr)
        h, w = labels.shape
        crops, boxes = [], []
        for group in _group_glyphs(glyphs, self.config.word_gap):
            r0 = min(g.box[0] for g in group)
            c0 = min(g.box[1] for g in group)
            r1 = max(g.box[2] for g in group)
            c1 = max(g.box[3] for g in group)
            # Margins in proportion to the text, as the recogniser saw text in training.
            pad = max(2, round(0.3 * (r1 - r0)))
            pr0, pc0, pr1, pc1 = max(r0 - pad, 0), max(c0 - pad, 0), min(r1 + pad, h), min(c1 + pad, w)
            crop = rgb[pr0:pr1, pc0:pc1].copy()
            crop_labels = labels[pr0:pr1, pc0:pc1]
            # Other ink inside the margins (a shape, another word) would be read as letters: paint it white.
            crop[(crop_labels != 0) & ~np.isin(crop_labels, [g.label for g in group])] = _WHITE
            # The margin is white in the image itself; pad beyond the canvas edge with white too.
            canvas = np.full((r1 - r0 + 2 * pad, c1 - c0 + 2 * pad, 3), _WHITE, np.float32)
            canvas[pr0 - (r0 - pad) : pr1 - (r0 - pad), pc0 - (c0 - pad) : pc1 - (c0 - pad)] = crop
            crops.append(canvas)
            boxes.append((c0 / w, r0 / h, c1 / w, r1 / h))
        reads = self.reader.read(crops)
        return tuple(DetectedWord(text, box, score) for (text, score), box in zip(reads, boxes) if text)


def _vote_colour(rgb: np.ndarray, mask: np.ndarray) -> tuple[int, float]:
    """Palette colour of the ink in ``mask`` and the RGB distance of its median pixel from that colour.

    Only the strongest ink of the interior votes: edges are blends with white that can sit nearer
    another colour (half-covered black is gray). Dark, colourless ink is black even when it is nearer
    brown or gray: that is what a thin black letter looks like once blurred and tinted.
    """
    core = erode(mask)
    pixels = rgb[core if core.any() else mask]  # (N, 3)
    strength = np.sqrt(((pixels - _WHITE) ** 2).sum(axis=1))
    pixels = pixels[strength >= 0.75 * strength.max()]
    median = np.median(pixels, axis=0)
    if float(median @ _LUMA) < _DARK_LUMA and float(np.ptp(median)) < _DARK_CHROMA:
        return _BLACK, 0.0  # how dark black ink looks depends on its stroke width, not on its colour
    nearest = np.argmin(((pixels[:, None, :] - _PALETTE) ** 2).sum(axis=2), axis=1)  # (N,)
    colour = int(np.bincount(nearest, minlength=len(_PALETTE)).argmax())
    distance = float(np.linalg.norm(np.median(pixels[nearest == colour], axis=0) - _PALETTE[colour]))
    return colour, distance


def _split(rgb: np.ndarray, ours: np.ndarray, min_side: float) -> list[np.ndarray]:
    """The objects inside one ink component ``ours`` of the patch ``rgb``.

    Usually one, but blur can bridge the narrow gap between neighbours. A thin bridge of faint ink is
    cut by two erosions (which also erase letters) while every object keeps a core; a wide one, between
    objects of different colours, by splitting the interior by nearest palette colour. Each part grows
    back into the ink it came from.
    """
    min_area = (min_side / 2) ** 2
    cores = label(erode(erode(ours)))
    sides = np.maximum(cores.boxes[:, 2] - cores.boxes[:, 0], cores.boxes[:, 3] - cores.boxes[:, 1])
    large = [cores.labels == k + 1 for k in range(cores.num) if sides[k] + 4 >= min_side]
    if len(large) <= 1:
        interior = erode(ours)
        nearest = np.argmin(((rgb[:, :, None, :] - _PALETTE) ** 2).sum(axis=3), axis=2)  # (h, w)
        pieces = [label(interior & (nearest == colour)) for colour in np.unique(nearest[interior])]
        # Blends along edges and seams form small pieces of other colours; an object is a big piece.
        min_area = max(min_area, 0.25 * max(int(p.areas.max()) for p in pieces)) if pieces else min_area
        large, boxes = [], []
        for p in pieces:
            keep = [k for k in range(p.num) if p.areas[k] >= min_area]
            large += [p.labels == k + 1 for k in keep]
            boxes += [p.boxes[k] for k in keep]
        # Neighbouring objects have disjoint boxes; interleaved pieces are one object's tinted interior.
        if any(_overlap(a, b) for j, a in enumerate(boxes) for b in boxes[j + 1 :]):
            return [ours]
    if len(large) <= 1:
        return [ours]
    return [dilate(dilate(core)) & ours for core in large]


def _aspect(mask: np.ndarray) -> float:
    """Long side over short side of the box around a non-empty mask."""
    rows, cols = np.nonzero(mask)
    height, width = int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1
    return max(height, width) / min(height, width)


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two (row0, col0, row1, col1) boxes with exclusive ends share a pixel."""
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def _fit_shape(
    rgb: np.ndarray, region: tuple[int, int, int, int], own: np.ndarray, colour: int, part: np.ndarray
) -> tuple[str, Box, float]:
    """Best shape for the ink ``part`` of palette ``colour``, its box and its fit (soft IoU).

    Analysis by synthesis: anti-aliasing and blur keep a shape's area and centroid, so for each shape
    hypothesis those two fix the size and position of its box; the hypothesis is rendered exactly as the
    scene renderer would and compared with the observed coverage.

    Args:
        rgb: the whole image, (H, W, 3).
        region: (row0, col0, row1, col1) of the patch that ``own`` and ``part`` cover.
        own: pixels whose coverage counts for this object (its ink and rim, not a neighbour's).
        colour: palette index of the object.
        part: the object's ink, whose interior sets the coverage level.
    """
    h, w = rgb.shape[:2]
    r0, c0, r1, c1 = region
    coverage = _coverage(rgb[r0:r1, c0:c1], colour)
    core = erode(part)
    # Scale so the interior reads 1: a slightly lighter or darker colour must not change the area.
    level = float(np.median(coverage[core if core.any() else part]))
    if level > 0.5:
        coverage = np.clip(coverage / level, 0.0, 1.0)
    coverage = coverage * own
    if coverage.sum() < 1.0:  # ink of a colour far off the palette: nothing of this colour to fit
        return "", (c0 / w, r0 / h, c1 / w, r1 / h), 0.0
    area, cx, cy = _moments(coverage)
    cx, cy = cx + c0, cy + r0  # canvas pixels

    # The patch must hold the largest hypothesis: a star of the same area is ~1.8x a square's side.
    rows, cols = np.nonzero(part)
    side = 2 * int(max(np.ptp(rows), np.ptp(cols)) + 1) + 6
    oy, ox = int(np.floor(cy)) - side // 2, int(np.floor(cx)) - side // 2
    observed = np.zeros((side, side), np.float32)
    pr0, pc0, pr1, pc1 = max(r0, oy), max(c0, ox), min(r1, oy + side), min(c1, ox + side)
    observed[pr0 - oy : pr1 - oy, pc0 - ox : pc1 - ox] = coverage[pr0 - r0 : pr1 - r0, pc0 - c0 : pc1 - c0]

    best: tuple[str, Box, float] = ("", (0.0, 0.0, 0.0, 0.0), -1.0)
    for shape, (fill, dx, dy) in _shape_moments().items():
        size = float(np.sqrt(area / fill))
        x, y = cx - dx * size, cy - dy * size
        hypothesis = Scene(objects=(SceneObject(shape, "black", (x - ox) / side, (y - oy) / side, size / side),))
        rendered = _coverage(np.asarray(render(hypothesis, side), np.float32), _BLACK)
        iou = max(_soft_iou(observed, _blur(rendered, sigma)) for sigma in _BLUR_SIGMAS)
        if iou > best[2]:
            best = (shape, ((x - size / 2) / w, (y - size / 2) / h, (x + size / 2) / w, (y + size / 2) / h), iou)
    return best


def _group_glyphs(glyphs: list[_Glyph], gap: float) -> list[list[_Glyph]]:
    """Glyphs side by side in a row (or stacked within a letter, like the dot of an ``i``) form a word."""
    parent = list(range(len(glyphs)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a in range(len(glyphs)):
        for b in range(a + 1, len(glyphs)):
            (ar0, ac0, ar1, ac1), (br0, bc0, br1, bc1) = glyphs[a].box, glyphs[b].box
            limit = gap * max(ar1 - ar0, br1 - br0)
            col_gap = max(ac0, bc0) - min(ac1, bc1)  # negative when the column ranges overlap
            row_gap = max(ar0, br0) - min(ar1, br1)
            if (col_gap <= limit and row_gap < 0) or (col_gap < 0 and row_gap <= limit):
                parent[find(b)] = find(a)
    groups: dict[int, list[_Glyph]] = {}
    for i, g in enumerate(glyphs):
        groups.setdefault(find(i), []).append(g)
    return sorted(groups.values(), key=lambda group: (min(g.box[1] for g in group), min(g.box[0] for g in group)))
